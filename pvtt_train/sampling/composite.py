"""Pixel-space compositing: the generated product over the untouched template background.

Two ways to soften the mask, both with kornia on [..., H, W] masks:

- ``inward_alpha`` (PVTT Background Preserve, ``sample``): the soft edge lies *inside* the mask, so
  outside it the result is the template bit for bit. The model's pixels are blurrier than the
  template's; spreading them outwards over the background (the old grow-and-feather) cost the
  composite ~13 dB outside the mask.
- ``soft_mask`` (PVTT Mask Grow/Shrink/Feather, and the training-time evaluation's ``composite``):
  dilate, then feather outwards, keeping the mask itself fully opaque.
"""

from __future__ import annotations

import kornia
import torch

#: Feathers below this (in pixels) are no feather at all; kornia rejects a vanishing Gaussian sigma.
MIN_FEATHER_PX = 1e-3


def grow_mask(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Grow (px > 0) or shrink (px < 0) a [..., H, W] mask by |px| pixels with a square window.

    The square is applied as a row pass then a column pass: the same result as the full window at
    O(px) instead of O(px^2) work per pixel (50x faster at 64 px). Pixels outside the frame are
    ignored, so a product cut off by the frame edge does not shrink away from it.
    """
    shape = mask.shape
    m = mask.reshape(-1, 1, *shape[-2:]).float()
    if px != 0:
        op = kornia.morphology.dilation if px > 0 else kornia.morphology.erosion
        size = 2 * abs(px) + 1
        for kernel in (torch.ones(1, size), torch.ones(size, 1)):
            m = op(m, kernel.to(m.device))
    return m.reshape(shape)


def soft_mask(mask: torch.Tensor, dilate_px: int = 1, feather_px: float = 1.0) -> torch.Tensor:
    """Dilate then feather a [..., H, W] mask in 0..1; returns the same shape."""
    if dilate_px < 0 or feather_px < 0:
        raise ValueError(f"dilate_px and feather_px must be >= 0, got {dilate_px} and {feather_px}")
    shape = mask.shape
    m = grow_mask(mask, dilate_px).reshape(-1, 1, *shape[-2:])
    if feather_px >= MIN_FEATHER_PX:
        k = 2 * round(2 * feather_px) + 1
        m = kornia.filters.gaussian_blur2d(m, (k, k), (feather_px, feather_px), border_type="replicate")
        # Keep the original mask fully opaque: feathering only spreads outwards.
        m = torch.maximum(m, mask.reshape(-1, 1, *shape[-2:]).float())
    return m.reshape(shape).clamp(0, 1)


def inward_alpha(mask: torch.Tensor, inset_px: int = 2, feather_px: float = 1.0) -> torch.Tensor:
    """Blend weights [..., H, W] that never leave the mask: ``mask * blur(erode(mask, inset_px))``.

    Exactly 0 wherever the mask is 0, so a blend keeps the template's pixels there unchanged. Inside,
    the weight rises to 1: the edge's midpoint sits about ``inset_px`` pixels in, and ``feather_px``
    (Gaussian sigma) sets how soft it is; with ``inset_px >= 2 * feather_px`` the ramp starts near 0
    at the mask edge instead of with a step. ``inset_px = feather_px = 0`` is the hard mask.
    """
    if inset_px < 0 or feather_px < 0:
        raise ValueError(f"inset_px and feather_px must be >= 0, got {inset_px} and {feather_px}")
    shape = mask.shape
    core = grow_mask(mask, -inset_px).reshape(-1, 1, *shape[-2:])
    if feather_px >= MIN_FEATHER_PX:
        k = 2 * round(2 * feather_px) + 1
        core = kornia.filters.gaussian_blur2d(core, (k, k), (feather_px, feather_px), border_type="replicate")
    return (mask.float() * core.reshape(shape)).clamp(0, 1)


def blend(generated: torch.Tensor, template: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Clips [..., F, H, W, 3]: generated where alpha [..., F, H, W] is 1, template where it is 0."""
    alpha = alpha[..., None]
    return alpha * generated + (1 - alpha) * template


def composite(generated: torch.Tensor, template: torch.Tensor, mask: torch.Tensor,
              dilate_px: int = 1, feather_px: float = 1.0) -> torch.Tensor:
    """Blend clips [..., F, H, W, 3]: generated inside the grown, outward-feathered mask, template outside."""
    return blend(generated, template, soft_mask(mask, dilate_px, feather_px))


def composite_inside(generated: torch.Tensor, template: torch.Tensor, mask: torch.Tensor,
                     inset_px: int = 2, feather_px: float = 1.0) -> torch.Tensor:
    """Blend clips [..., F, H, W, 3] with ``inward_alpha``: outside the mask, exactly the template."""
    return blend(generated, template, inward_alpha(mask, inset_px, feather_px))
