"""Many products against one template: one clip per product photo, one after another.

A batch of N product photos (an IMAGE [N,H,W,3]) renders N clips of the template, each with the same
seed so they differ only by the product. The clips travel as one IMAGE concatenated on the frame axis
([N*F,H,W,3]) with ``frames_per_clip`` = F beside it, so ComfyUI's IMAGE sockets carry them unchanged
and PVTT Background Preserve and Save Video can split them again (``split_clips``).

Every photo is checked before the first clip starts, so a bad photo 3 does not cost clips 1 and 2;
``check_cancel`` runs before every clip, so Cancel stops between clips as well as within them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import InputError
from .validation import check_memory, clip_bytes, image_batch, product_photo


def product_photos(product_image) -> list[torch.Tensor]:
    """Each photo of an IMAGE batch (or a bare [H,W,3] image) as [H,W,3], checked like a single photo."""
    if isinstance(product_image, torch.Tensor) and product_image.ndim == 3 and product_image.shape[-1] == 3:
        product_image = product_image[None]
    batch = image_batch(product_image, "product image")
    n = batch.shape[0]
    return [product_photo(batch[k: k + 1], "product image" if n == 1 else f"product image {k + 1} of {n}")
            for k in range(n)]


def check_batch_memory(clips: int, frames: int, height: int, width: int) -> None:
    """Refuse a batch whose concatenated clips (two full-size copies) would not fit in memory."""
    if clips > 1:
        check_memory(f"generating {clips} clips of {frames} frames at {width}x{height}",
                     2 * clip_bytes(clips * frames, height, width),
                     "connect fewer product photos at once, load fewer frames or downscale the template")


def render_products(render: Callable[[torch.Tensor, int], torch.Tensor], photos: list[torch.Tensor],
                    check_cancel: Callable[[], None] | None = None) -> tuple[torch.Tensor, int]:
    """``render(photo, index)`` for each photo in turn; returns (the clips concatenated on the frame
    axis [N*F,H,W,3], F). ``check_cancel`` is called before each clip and raises to stop."""
    clips = []
    for k, photo in enumerate(photos):
        if check_cancel is not None:
            check_cancel()
        clips.append(render(photo, k))
    if len({tuple(c.shape) for c in clips}) != 1:
        raise ValueError(f"clips of different shapes {[tuple(c.shape) for c in clips]}")
    return (clips[0] if len(clips) == 1 else torch.cat(clips)), clips[0].shape[0]


def split_clips(frames: torch.Tensor, frames_per_clip: int, name: str = "images") -> list[torch.Tensor]:
    """[N*F,...] back into N clips of ``frames_per_clip`` frames; 0 means one clip of all the frames."""
    total = frames.shape[0]
    if frames_per_clip <= 0 or frames_per_clip >= total:
        return [frames]
    if total % frames_per_clip:
        raise InputError(f"{name} has {total} frames, which is not a whole number of {frames_per_clip}-frame clips; "
                         f"connect frames_per_clip from the PVTT Template Transfer that made these frames, or "
                         f"disconnect it to save one clip")
    return list(frames.split(frames_per_clip))


def repeat_per_clip(video: torch.Tensor, frames: int) -> torch.Tensor:
    """An F-frame clip (or an F-frame / 1-frame mask) repeated to cover ``frames`` = N*F frames, for
    comparing a batch of N generated clips with the one template they were all made from."""
    have = video.shape[0]
    if have == frames or frames % have:
        return video
    return video.repeat(frames // have, *([1] * (video.ndim - 1)))
