"""The training paste rendered the way the pipeline renders it for a designer's full-size clip.

At inference the product photo is warped onto the full-size mask (``aligned_warp``) and that warp is
shrunk to the model's working size (``detail_transfer.working_size_paste``). A paste fitted directly at
16x16 (``conditioning.aligned_paste``) is a different thing: a 6-pixel product's pattern aliases there,
so in training it sits about 20 dB from the truth and the model learns to re-draw the product instead of
trusting the paste, which then goes wrong on any product unlike the training patterns. So the synthetic
generator can render the paste from its supersampled frames, exactly as the pipeline would from a
clip that size: the photo and mask at ``supersample`` times the working size, warped, then shrunk.
"""

from __future__ import annotations

import numpy as np

PASTES = ("aligned_paste", "supersampled_warp")


def supersampled_warp_paste(reference: np.ndarray, cover: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The working-size paste [F, h, w, 3] (zero outside ``mask`` [F, h, w]) from a product photo and the
    product's coverage [F, H, W] rendered at a multiple of the working size."""
    import torch  # here, not at the top: the CLI reads PASTES without importing torch

    from ..aligned_warp import aligned_warp
    from ..detail_transfer import working_size_paste
    from ..media.resize import resize_video

    inside = (cover >= 0.5).astype(np.float32)
    warp = torch.from_numpy(aligned_warp(reference, inside))
    h, w = mask.shape[1:]
    small = working_size_paste(warp, torch.from_numpy(inside), lambda clip: resize_video(clip, h, w))
    return (small.numpy() * mask[..., None]).astype(np.float32)
