"""Square product crops for the identity encoder, differentiable with respect to the pixels.

An identity score should compare *products*, not scenes: each crop is the product's bounding
square (plus a small margin) with everything outside the product's matte set to a neutral grey,
so a frame of the clip and the product photo (whose light backdrop is matted out the same way)
look alike when they show the same product. The boxes come from the masks and carry no gradient;
the crop itself is a bilinear resample (kornia), so a loss on the crops reaches the frames.

Images are channels-last in 0..1 like the rest of pvtt_train: frames [B,F,H,W,3], masks [B,F,H,W],
the reference photo [B,H,W,3]. Crops are channels-first [N,3,S,S] for the encoder.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.transform import crop_and_resize

from ..conditioning import product_alpha

BACKDROP = 0.5  # neutral grey behind every product, in crops of frames and of photos alike
MARGIN = 0.1  # extra border around the bounding square, as a fraction of its side


def _square_boxes(matte: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centres [N,2] and half sides [N] of each matte's bounding square (with margin), and [N] 1/0 validity.

    Pixel i spans [i - 0.5, i + 0.5]. An empty matte gets the whole image and validity 0.
    """
    h, w = matte.shape[1:]
    inside = matte > 0.5
    rows, cols = inside.any(dim=2), inside.any(dim=1)
    valid = rows.any(dim=1)
    ar_h = torch.arange(h, device=matte.device, dtype=torch.float32)
    ar_w = torch.arange(w, device=matte.device, dtype=torch.float32)
    big = float(max(h, w))
    y0 = torch.where(valid, torch.where(rows, ar_h, big).amin(1), 0.0)
    y1 = torch.where(valid, torch.where(rows, ar_h, -1.0).amax(1), h - 1.0)
    x0 = torch.where(valid, torch.where(cols, ar_w, big).amin(1), 0.0)
    x1 = torch.where(valid, torch.where(cols, ar_w, -1.0).amax(1), w - 1.0)
    half = (torch.maximum(x1 - x0, y1 - y0) + 1) / 2 * (1 + 2 * MARGIN)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2], 1), half, valid.float()


def _corners(centre: torch.Tensor, half: torch.Tensor, out: int) -> torch.Tensor:
    """kornia boxes [N,4,2]: the centres of the outer pixels of an ``out``-pixel crop of each square."""
    inset = (half - half / out)[:, None]
    signs = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], device=centre.device)
    return centre[:, None, :] + inset[..., None] * signs


def _matted_crops(images: torch.Tensor, matte: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops [N,3,S,S] of ``images`` [N,H,W,3] around ``matte`` [N,H,W], grey outside the matte; validity [N].

    The matte and the premultiplied colour are resampled together, so the product's rim blends
    into the grey as it would in the photo, and whatever lies outside the image counts as backdrop.
    Squares wider than ``size`` pixels are cropped at their own resolution and then area-filtered
    down (bilinear sampling alone would alias). Crops are float32 whatever the frames' dtype.
    """
    with torch.no_grad():
        centre, half, valid = _square_boxes(matte.detach())
        work = max(size, math.ceil(2 * float(half.max())))
        boxes = _corners(centre, half, work)
    # float32 throughout: box corners in bf16 would be off by pixels on large frames.
    images, matte = images.float(), matte.float().clamp(0, 1)
    stacked = torch.cat([images * matte[..., None], matte[..., None]], dim=-1).permute(0, 3, 1, 2)
    crops = crop_and_resize(stacked, boxes, (work, work))
    if work > size:
        crops = F.interpolate(crops, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    rgb, alpha = crops[:, :3], crops[:, 3:]
    return rgb + BACKDROP * (1 - alpha), valid


def product_crops(frames: torch.Tensor, mask: torch.Tensor, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame product crops [B*F,3,S,S] and weights [B*F] (0 where the frame's mask is empty).

    Frames whose mask is empty are cropped whole so shapes stay fixed, but their weight is 0 and
    identity_loss ignores them.
    """
    if frames.ndim != 5 or frames.shape[-1] != 3 or mask.shape != frames.shape[:-1]:
        raise ValueError(f"expected frames [B,F,H,W,3] and mask [B,F,H,W], got {tuple(frames.shape)} "
                         f"and {tuple(mask.shape)}")
    b, f, h, w, _ = frames.shape
    return _matted_crops(frames.reshape(b * f, h, w, 3), mask.reshape(b * f, h, w), size)


def reference_crops(reference: torch.Tensor, size: int = 32) -> torch.Tensor:
    """Crops [B,3,S,S] of the product in each photo [B,H,W,3], matted from its plain backdrop.

    The matte is ``product_alpha`` (the same cut-out the conditioning uses); it is computed on the
    CPU without gradient, the crop itself stays differentiable.
    """
    if reference.ndim != 4 or reference.shape[-1] != 3:
        raise ValueError(f"expected reference [B,H,W,3], got {tuple(reference.shape)}")
    photos = reference.detach().float().cpu().numpy()
    matte = torch.from_numpy(np.stack([product_alpha(p) for p in photos])).to(reference.device)
    return _matted_crops(reference, matte, size)[0]
