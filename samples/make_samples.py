"""Render the shipped sample inputs: a template clip, its product mask and a new product's photo.

They come from the synthetic generator the model was trained on, with a held-out seed (never seen
in training), rendered at 128x128 so a designer can see them; the pipeline resizes to the model's
16x16 and back, and compositing happens at 128x128. Lengths scale with the size (8x the training
16x16), so the clip looks like a training clip, only sharper. Deterministic: re-running rewrites
identical frames.

Run from the repo root:  python -m samples.make_samples
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from pvtt_train.data.batches import HELDOUT_SEED_BASE
from pvtt_train.data.synthetic import SyntheticConfig, SyntheticVideoGenerator
from pvtt_train.media.video_io import write_mp4

SIZE = 128
FPS = 8.0
SEED = HELDOUT_SEED_BASE  # the first held-out example
OUT = Path(__file__).resolve().parent


def sample_config(size: int = SIZE) -> SyntheticConfig:
    """The training config (model frame count) with every length scaled to ``size`` pixels."""
    base = SyntheticConfig()
    scale = size / base.height
    return replace(base, height=size, width=size, product_size=tuple(s * scale for s in base.product_size),
                   shake_px=base.shake_px * scale)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def main() -> None:
    example = SyntheticVideoGenerator(sample_config()).example(SEED)
    write_mp4(OUT / "pvtt_template.mp4", to_uint8(example.template), FPS)
    write_mp4(OUT / "pvtt_mask.mp4", to_uint8(np.repeat(example.mask[..., None], 3, axis=-1)), FPS)
    Image.fromarray(to_uint8(example.reference)).save(OUT / "pvtt_product.png", optimize=True)
    print(f"wrote samples for held-out seed {SEED} to {OUT}")


if __name__ == "__main__":
    main()
