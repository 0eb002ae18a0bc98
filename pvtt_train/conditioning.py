"""Turn a designer's inputs (template clip, product mask, product photo) into model conditioning.

The product photo is *aligned* before the model sees it: the product is cut from its backdrop
and placed on the mask in every frame, matching the mask's centroid and area ("aligned paste"). A tiny model learns
local copying quickly but not a non-local transfer from a centred photo to a moving box
(see the project's teacher recipe), so the alignment is done here, deterministically, and the
model only has to re-light, re-shape and blend the product into the scene.

All functions take and return numpy arrays in [0, 1]: clips [F, H, W, 3], masks [F, H, W].
"""

from __future__ import annotations

import cv2
import numpy as np

BACKDROP_TOLERANCE = 0.08


def product_alpha(reference: np.ndarray, tolerance: float = BACKDROP_TOLERANCE) -> np.ndarray:
    """0/1 matte of the product in a photo on a plain backdrop (backdrop = median border colour)."""
    if reference.ndim != 3 or reference.shape[2] != 3:
        raise ValueError(f"reference must be [H, W, 3], got shape {tuple(reference.shape)}")
    border = np.concatenate([reference[0], reference[-1], reference[:, 0], reference[:, -1]])
    backdrop = np.median(border, axis=0)
    alpha = (np.abs(reference - backdrop) > tolerance).any(axis=2)
    return (alpha if alpha.any() else np.ones_like(alpha)).astype(np.float32)


def aligned_paste(reference: np.ndarray, mask: np.ndarray, supersample: int = 4) -> np.ndarray:
    """The product cut from ``reference`` and placed on each frame's mask; zero outside the mask.

    Placement matches the mask's centroid and area (sub-pixel accurate, unlike a bounding box of
    whole pixels). The product is warped premultiplied by its matte at ``supersample`` times the
    resolution and box-filtered down, so no backdrop colour bleeds into the product's rim. Mask
    pixels the warped product does not reach get the product's mean colour.
    """
    if mask.ndim != 3:
        raise ValueError(f"mask must be [F, H, W], got shape {tuple(mask.shape)}")
    alpha = product_alpha(reference)
    ys, xs = np.nonzero(alpha)
    ref_area, ref_cx, ref_cy = alpha.sum(), xs.mean() + 0.5, ys.mean() + 0.5
    premultiplied = np.concatenate([reference.astype(np.float32) * alpha[..., None], alpha[..., None]], axis=2)
    mean_colour = premultiplied[..., :3].sum((0, 1)) / ref_area
    frames, height, width = mask.shape
    ss = supersample
    paste = np.zeros((frames, height, width, 3), np.float32)
    for f in range(frames):
        inside = mask[f] > 0.5
        if not inside.any():
            continue
        my, mx = np.nonzero(inside)
        scale = ss * np.sqrt(inside.sum() / ref_area)
        # Continuous coordinates (pixel i spans [i, i+1)); warpAffine samples pixel centres.
        tx = ss * (mx.mean() + 0.5) - scale * ref_cx + 0.5 * scale - 0.5
        ty = ss * (my.mean() + 0.5) - scale * ref_cy + 0.5 * scale - 0.5
        warp = np.array([[scale, 0, tx], [0, scale, ty]], np.float32)
        big = cv2.warpAffine(premultiplied, warp, (width * ss, height * ss), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT)
        small = big.reshape(height, ss, width, ss, 4).mean(axis=(1, 3))
        cover = small[..., 3:]
        paste[f] = np.where(cover > 0.05, small[..., :3] / np.maximum(cover, 1e-6), mean_colour)
    return np.clip(paste, 0, 1) * (mask[..., None] > 0.5)
