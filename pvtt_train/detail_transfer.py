"""Fine detail from the product photo on top of a model that works at a small size.

A model that renders at its working size (16x16 for the embedded one) cannot draw a label, a texture
or a thin cap at a designer's 256x256 or 1080p: upsampled, its output is a soft blob of about the
right colour. What it can supply is what the photo cannot: light, shading, shadow, blending. The
photo, warped onto the mask at full resolution (``aligned_warp``), has the detail but none of that.

So the two are split by frequency, as in a Laplacian pyramid: the output keeps the model's content
below the working size's Nyquist frequency and takes the photo's content above it,

    out = up(model) + coverage * (warp - lowpass(warp)),

where ``lowpass`` is the same shrink-and-grow the pipeline applies to the model's output (area
filter down, bilinear up), so the two bands meet without a gap or an overlap. The low-pass is
normalised by the warp's coverage (the photo's alpha on the mask), so the backdrop cut away around
the product never darkens the detail layer's edge. Where the photo does not cover the mask, the
model's output stays as it is.
"""

from __future__ import annotations

import torch

from .media.resize import resize_video


def _down_up(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[F,H,W,C] through the working size and back: the pipeline's own resampling."""
    return resize_video(resize_video(video, height, width), video.shape[1], video.shape[2])


def photo_detail(warp: torch.Tensor, coverage: torch.Tensor, working_size: tuple[int, int]) -> torch.Tensor:
    """The part of the warped photo [F,H,W,3] that a model of ``working_size`` (h, w) cannot render:
    the warp minus its coverage-normalised low-pass, weighted by ``coverage`` [F,H,W] in 0..1."""
    h, w = working_size
    if warp.shape[1] <= h and warp.shape[2] <= w:
        return torch.zeros_like(warp)  # nothing finer than the working size
    cov = coverage.clamp(0, 1)[..., None]
    x = warp * cov
    low = _down_up(x, h, w) / _down_up(cov, h, w).clamp_min(1e-3)
    return x - low * cov


def add_photo_detail(generated: torch.Tensor, warp: torch.Tensor, coverage: torch.Tensor,
                     working_size: tuple[int, int]) -> torch.Tensor:
    """``generated`` [F,H,W,3] (the model's output grown to full size) with the warped photo's fine
    detail added where the photo covers the mask; clamped to 0..1."""
    if generated.shape != warp.shape or coverage.shape != warp.shape[:3]:
        raise ValueError(f"generated {tuple(generated.shape)}, warp {tuple(warp.shape)} and coverage "
                         f"{tuple(coverage.shape)} must share frames and size")
    return (generated + photo_detail(warp, coverage, working_size)).clamp(0, 1)
