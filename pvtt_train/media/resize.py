"""Resizing clips between a designer's size and a model's working size.

One function, so everything that must match the pipeline's resampling (the detail layer's low-pass,
the compare node's tiles) uses the same filters: area when shrinking, bilinear when growing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_video(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[F,H,W,C] -> [F,height,width,C]; area filter when shrinking, bilinear when growing."""
    if video.shape[1:3] == (height, width):
        return video
    x = video.permute(0, 3, 1, 2)
    mode = "area" if height <= video.shape[1] and width <= video.shape[2] else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(x, size=(height, width), mode=mode, **kwargs).permute(0, 2, 3, 1)
