"""Tiny clip folders for prepare-data, and a tiny UMT5 text encoder + tokenizer built offline."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from _wan_fixtures import TEXT_DIM

WORDS = ["a", "red", "blue", "shoe", "bottle", "on", "table", "turning", "bad", "blurry"]


def write_mp4(path: Path, frames: np.ndarray, fps: float = 8.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames.shape[2], frames.shape[1]))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def moving_box(frames: int, size: int = 32, seed: int = 0, colour=(220, 40, 40)) -> tuple[np.ndarray, np.ndarray]:
    """A textured background with a coloured box moving right: (video [F,H,W,3], mask [F,H,W]) uint8."""
    rng = np.random.default_rng(seed)
    background = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (size, size),
                            interpolation=cv2.INTER_LINEAR)
    video = np.repeat(background[None], frames, 0).copy()
    mask = np.zeros((frames, size, size), np.uint8)
    for f in range(frames):
        x = 4 + f % 12
        video[f, 10:22, x:x + 10] = colour
        mask[f, 10:22, x:x + 10] = 255
    return video, mask


CLIPS = ("a_paired", "b_paired_truth", "c_selfsup_long", "d_selfsup", "e_broken")


def make_clips(root: Path, names: tuple[str, ...] = CLIPS) -> Path:
    """Up to four usable clips (two paired, one with ground truth; two self-supervised, one with
    two windows) and one clip without a mask (``e_broken``); ``names`` picks which."""
    root.mkdir(parents=True, exist_ok=True)
    for name, seed, frames, kind in (("a_paired", 0, 9, "paired"), ("b_paired_truth", 1, 9, "truth"),
                                     ("c_selfsup_long", 2, 18, "self"), ("d_selfsup", 3, 9, "self")):
        if name not in names:
            continue
        folder = root / name
        folder.mkdir()
        video, mask = moving_box(frames, seed=seed)
        write_mp4(folder / ("video.mp4" if kind == "self" else "template.mp4"), video)
        write_mp4(folder / "mask.mp4", np.repeat(mask[..., None], 3, -1))
        if kind != "self":
            product = np.full((20, 12, 3), 255, np.uint8)
            product[3:17, 2:10] = (40, 40, 220)
            Image.fromarray(product).save(folder / "product.png")
        if kind == "truth":
            truth, _ = moving_box(frames, seed=seed, colour=(40, 40, 220))
            write_mp4(folder / "target.mp4", truth)
        (folder / "prompt.txt").write_text({"a_paired": "a blue shoe on a table", "b_paired_truth": "a blue bottle",
                                            "c_selfsup_long": "a red shoe turning"}.get(name, ""))
    if "e_broken" in names:
        folder = root / "e_broken"
        folder.mkdir()
        write_mp4(folder / "template.mp4", moving_box(9, seed=4)[0])
    return root


def add_text_encoder(folder: Path, seed: int = 0) -> Path:
    """A tiny random UMT5 encoder (d_model = the fixture transformer's text_dim) and a word-level
    tokenizer in ``text_encoder/`` and ``tokenizer/``, as a Wan-VACE folder has them."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>") \
        .save_pretrained(folder / "tokenizer")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        UMT5EncoderModel(UMT5Config(vocab_size=len(vocab), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=1,
                                    num_heads=2)).save_pretrained(folder / "text_encoder")
    return folder
