"""Turn a designer's inputs (template clip, product mask, product photo) into model conditioning.

The product photo is *aligned* before the model sees it: the product is cut from its backdrop
and fitted into the mask's bounding box in every frame ("aligned paste"). A tiny model learns
local copying quickly but not a non-local transfer from a centred photo to a moving box
(see the project's teacher recipe), so the alignment is done here, deterministically, and the
model only has to re-light, re-shape and blend the product into the scene.

All functions take and return numpy arrays in [0, 1]: clips [F, H, W, 3], masks [F, H, W].
"""

from __future__ import annotations

import cv2
import numpy as np

BACKDROP_TOLERANCE = 0.08


def product_box(reference: np.ndarray, tolerance: float = BACKDROP_TOLERANCE) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1; exclusive end) of the product in a photo on a plain backdrop.

    The backdrop colour is the median of the border pixels; any pixel further than ``tolerance``
    from it in some channel belongs to the product. A photo with no such pixel is used whole.
    """
    if reference.ndim != 3 or reference.shape[2] != 3:
        raise ValueError(f"reference must be [H, W, 3], got shape {tuple(reference.shape)}")
    border = np.concatenate([reference[0], reference[-1], reference[:, 0], reference[:, -1]])
    backdrop = np.median(border, axis=0)
    fg = (np.abs(reference - backdrop) > tolerance).any(axis=2)
    if not fg.any():
        return 0, 0, reference.shape[1], reference.shape[0]
    ys, xs = np.nonzero(fg)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box of one frame's mask (exclusive end), or None when the frame is empty."""
    ys, xs = np.nonzero(mask > 0.5)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def aligned_paste(reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The product cut from ``reference`` and resized into each frame's mask box, zero elsewhere."""
    if mask.ndim != 3:
        raise ValueError(f"mask must be [F, H, W], got shape {tuple(mask.shape)}")
    x0, y0, x1, y1 = product_box(reference)
    crop = np.ascontiguousarray(reference[y0:y1, x0:x1].astype(np.float32))
    frames, height, width = mask.shape
    paste = np.zeros((frames, height, width, 3), np.float32)
    for f in range(frames):
        box = mask_box(mask[f])
        if box is None:
            continue
        bx0, by0, bx1, by1 = box
        bw, bh = bx1 - bx0, by1 - by0
        interp = cv2.INTER_AREA if bw < crop.shape[1] else cv2.INTER_LINEAR
        fitted = cv2.resize(crop, (bw, bh), interpolation=interp)
        paste[f, by0:by1, bx0:bx1] = fitted.reshape(bh, bw, 3)
    return paste * (mask[..., None] > 0.5)
