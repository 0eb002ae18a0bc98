"""Pixel-space compositing: the generated product over the untouched template background.

The mask is dilated (so the product's anti-aliased rim and small mask errors are covered) and then
feathered with a Gaussian (so there is no hard seam). Both use kornia and run on [F,H,W] masks.
"""

from __future__ import annotations

import kornia
import torch


def soft_mask(mask: torch.Tensor, dilate_px: int = 1, feather_px: float = 1.0) -> torch.Tensor:
    """Dilate then feather a [..., H, W] mask in 0..1; returns the same shape."""
    if dilate_px < 0 or feather_px < 0:
        raise ValueError(f"dilate_px and feather_px must be >= 0, got {dilate_px} and {feather_px}")
    shape = mask.shape
    m = mask.reshape(-1, 1, *shape[-2:]).float()
    if dilate_px > 0:
        kernel = torch.ones(2 * dilate_px + 1, 2 * dilate_px + 1, device=m.device)
        m = kornia.morphology.dilation(m, kernel)
    if feather_px > 0:
        k = 2 * int(round(2 * feather_px)) + 1
        m = kornia.filters.gaussian_blur2d(m, (k, k), (feather_px, feather_px), border_type="replicate")
        # Keep the original mask fully opaque: feathering only spreads outwards.
        m = torch.maximum(m, mask.reshape(-1, 1, *shape[-2:]).float())
    return m.reshape(shape).clamp(0, 1)


def blend(generated: torch.Tensor, template: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Clips [..., F, H, W, 3]: generated where alpha [..., F, H, W] is 1, template where it is 0."""
    alpha = alpha[..., None]
    return alpha * generated + (1 - alpha) * template


def composite(generated: torch.Tensor, template: torch.Tensor, mask: torch.Tensor,
              dilate_px: int = 1, feather_px: float = 1.0) -> torch.Tensor:
    """Blend clips [..., F, H, W, 3]: generated inside the soft mask, template outside."""
    return blend(generated, template, soft_mask(mask, dilate_px, feather_px))
