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

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI reads PASTES without importing numpy or torch
    import numpy as np

PASTES = ("aligned_paste", "supersampled_warp", "supersampled_warp_lit")
#: Pastes already at each frame's light (``light_match.clip_light_gain`` of the template), so the model need not
#: infer the light itself; the pipeline gives such a model its paste the same way (``lit_paste``).
LIT_PASTES = ("supersampled_warp_lit",)


def lit_paste(metadata: dict) -> bool:
    """Whether a checkpoint was trained on pastes lit frame by frame (from its ``provenance.data.paste``)."""
    return metadata.get("provenance", {}).get("data", {}).get("paste") in LIT_PASTES


def supersampled_warp_paste(reference: np.ndarray, cover: np.ndarray, mask: np.ndarray,
                            template: np.ndarray | None = None) -> np.ndarray:
    """The working-size paste [F, h, w, 3] (zero outside ``mask`` [F, h, w]) from a product photo and the
    product's coverage [F, H, W] rendered at a multiple of the working size; with the working-size
    ``template`` [F, h, w, 3], at each frame's light as the pipeline measures it."""
    import numpy as np
    import torch

    from ..aligned_warp import aligned_warp
    from ..detail_transfer import working_size_paste
    from ..light_match import clip_light_gain
    from ..media.resize import resize_video

    inside = (cover >= 0.5).astype(np.float32)
    warp = torch.from_numpy(aligned_warp(reference, inside))
    h, w = mask.shape[1:]
    small = working_size_paste(warp, torch.from_numpy(inside), lambda clip: resize_video(clip, h, w))
    if template is not None:
        gain = clip_light_gain(torch.from_numpy(template), torch.from_numpy(mask))
        small = (small * gain.view(-1, 1, 1, 1)).clamp(0, 1)
    return (small.numpy() * mask[..., None]).astype(np.float32)
