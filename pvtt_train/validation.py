"""Checks on designer inputs (IMAGE clips, MASKs, product photos), shared by the pipeline and the nodes.

ComfyUI passes whatever the upstream node produced: 8-bit tensors from custom loaders, RGBA batches,
masks with NaN from a mask-math node, 4K clips that will not fit twice in memory. Each check turns
one of these into an ``InputError`` whose message names the input, what is wrong with it and how to
fix it, before any model runs, instead of a shape error from deep inside torch or a silently wrong clip.

Small overshoots from resampling filters (bicubic, Lanczos) are clamped, not refused.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from .errors import InputError

#: Values this far outside 0..1 are resampling overshoot and are clamped; beyond it the tensor is on
#: another scale (0..255, -1..1) and is refused.
RANGE_TOLERANCE = 0.1
#: A product photo whose pixels vary less than this (one 8-bit level) holds no product to paste.
FLAT_IMAGE_STD = 1.0 / 255
#: Work and output buffers may take at most this share of the available memory.
MEMORY_FRACTION = 0.5
GB = 1e9
MEMINFO = Path("/proc/meminfo")
FLOAT_BYTES = 4

log = logging.getLogger("[PVTT]")


def available_memory() -> int | None:
    """Bytes the system can hand out now without swapping, or None when unknown (guards are skipped).

    ``MemAvailable`` counts reclaimable cache, unlike ``MemFree``.
    """
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _check_numbers(t: torch.Tensor, name: str, producer_hint: str) -> torch.Tensor:
    """``t`` as float32, finite and clamped to 0..1, or an InputError naming what is off.

    One min/max pass, in the tensor's own dtype, decides (NaN and Inf show up in it; a float64 1e300
    stays a number instead of becoming Inf in float32); the non-finite count and frames are only
    worked out for the error message.
    """
    if t.dtype == torch.bool:
        return t.float()
    if not (t.is_floating_point() or t.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise InputError(f"{name} has dtype {t.dtype}, which is not an image or mask type; {producer_hint}")
    if t.numel() == 0:
        return t.float()
    low, high = (float(v) for v in torch.aminmax(t))  # before the cast: float64 1e300 would become Inf
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = ~torch.isfinite(t)
        frames = sorted({int(i) for i in bad.nonzero()[:, 0].tolist()})[:5] if t.ndim >= 3 else []
        where = f" (frames {', '.join(map(str, frames))}{'...' if len(frames) == 5 else ''})" if frames else ""
        raise InputError(f"{name} contains {int(bad.sum())} NaN or Inf values{where}; check the node that produced "
                         f"it (for example a math node dividing by zero) or load it again")
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        scale = ("it looks like 8-bit values (0..255): divide by 255" if 2 < high <= 255 + 1 and low >= -RANGE_TOLERANCE
                 else "it looks like -1..1 values: map them with (x + 1) / 2"
                 if -1 - RANGE_TOLERANCE <= low < -RANGE_TOLERANCE and high <= 1 + RANGE_TOLERANCE
                 else "rescale it to 0..1")
        raise InputError(f"{name} has values {low:.3g}..{high:.3g}, out of range: ComfyUI images and masks hold "
                         f"0..1; {scale}, or {producer_hint}")
    t = t.float()
    return t if 0 <= low and high <= 1 else t.clamp(0, 1)


def image_batch(t, name: str = "video") -> torch.Tensor:
    """An IMAGE batch [F, H, W, 3] in 0..1 as float32, or an InputError saying how to get one."""
    hint = "connect PVTT Load Video, Load Image or another node that outputs a ComfyUI IMAGE"
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name} must be an IMAGE tensor, got {type(t).__name__}; {hint}")
    if t.ndim == 3 and t.shape[-1] != 3 and t.shape[-1] != 4:
        raise InputError(f"{name} has shape {tuple(t.shape)}, which is a MASK [frames, height, width], not an IMAGE; "
                         f"connect the IMAGE output (frames), or turn the mask into an image with core "
                         f"'Convert Mask to Image'")
    if t.ndim != 4:
        raise InputError(f"{name} must be an IMAGE batch [frames, height, width, 3], got shape {tuple(t.shape)}; "
                         f"{hint}")
    if t.shape[-1] == 4:
        raise InputError(f"{name} has 4 channels (RGBA), shape {tuple(t.shape)}, but PVTT takes RGB IMAGEs [frames, height, width, 3]; drop "
                         f"the alpha channel (core 'Split Image with Alpha' gives the RGB image)")
    if t.shape[-1] != 3:
        raise InputError(f"{name} has {t.shape[-1]} channels, shape {tuple(t.shape)}; an IMAGE is "
                         f"[frames, height, width, 3] (channels last, RGB). {hint}")
    if t.shape[0] == 0:
        raise InputError(f"{name} has 0 frames, shape {tuple(t.shape)}; load a clip with at least one frame (check frame_load_cap and "
                         f"skip_first_frames in PVTT Load Video)")
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise InputError(f"{name} is {t.shape[2]}x{t.shape[1]} pixels; it needs at least one pixel in each "
                         f"direction")
    return _check_numbers(t, name, hint)


def mask_frames(t, name: str = "mask") -> torch.Tensor:
    """A MASK as float32 [frames, H, W] in 0..1; [H, W] (one mask) and [F, H, W, 1] are accepted."""
    hint = "connect PVTT Load Video's mask output, PVTT Mask From Box, or another node that outputs a ComfyUI MASK"
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name} must be a MASK tensor, got {type(t).__name__}; {hint}")
    if t.ndim == 4 and t.shape[-1] == 1:
        t = t[..., 0]
    if t.ndim == 4 and t.shape[-1] in (3, 4):
        raise InputError(f"{name} has shape {tuple(t.shape)}, which is an IMAGE, not a MASK [frames, height, width]; "
                         f"connect a MASK output, or convert the image with core 'Convert Image to Mask'")
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise InputError(f"{name} must be a MASK [frames, height, width] (or [height, width]), got shape "
                         f"{tuple(t.shape)}; {hint}")
    if 0 in t.shape:
        raise InputError(f"{name} is empty, shape {tuple(t.shape)}; it needs at least one frame of at least one "
                         f"pixel")
    return _check_numbers(t, name, hint)


def check_mask_fits(mask: torch.Tensor, frames: int, height: int, width: int, name: str = "mask",
                    video: str = "the video") -> None:
    """One mask frame per video frame (or one for all), at the video's size."""
    if mask.shape[0] not in (1, frames):
        raise InputError(f"{name} has {mask.shape[0]} frames but {video} has {frames}; masks are never trimmed or "
                         f"padded. Give one mask frame per video frame, or a single mask to use on every frame "
                         f"(check frame_load_cap / skip_first_frames / select_every_nth on both PVTT Load Video nodes)")
    if tuple(mask.shape[1:]) != (height, width):
        raise InputError(f"{name} is {mask.shape[2]}x{mask.shape[1]} but {video} is {width}x{height} (width x "
                         f"height); fit it with PVTT Match Mask to Video (mode \"resize\"), or make the mask at the "
                         f"video's size")


def check_mask_not_empty(mask: torch.Tensor, name: str = "mask") -> None:
    """Refuse a mask with no product pixel: there would be nothing to replace."""
    if not bool((mask > 0.5).any()):
        raise InputError(f"{name} is empty (no pixel above 0.5), so there is no product region to replace; draw or "
                         f"load a mask where white marks the product (PVTT Mask From Box makes one quickly)")


def check_mask_coverage(mask: torch.Tensor, name: str = "mask") -> None:
    """Refuse a mask with no product pixel, or one that is the product everywhere (usually inverted)."""
    check_mask_not_empty(mask, name)
    if bool((mask > 0.5).all()):
        raise InputError(f"{name} is white on every pixel of every frame, so there is no background to keep and "
                         f"nothing for the product to follow. White must mark only the product: if the mask is "
                         f"inverted (white = background), add core 'Invert Mask'; check it with PVTT Mask Preview")


def clip_and_mask(video, mask, video_name: str, video_label: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip and the mask of its product, checked together: what Template Transfer and Background
    Preserve both need (``video_label`` names the clip in mismatch messages, e.g. "the template video")."""
    video, mask = image_batch(video, video_name), mask_frames(mask)
    check_mask_fits(mask, *video.shape[:3], video=video_label)
    check_mask_coverage(mask)
    return video, mask


def product_photo(t, name: str = "product_image") -> torch.Tensor:
    """The first image of an IMAGE batch as [H, W, 3] float32, refusing a photo with no product in it."""
    if isinstance(t, torch.Tensor) and t.ndim == 3 and t.shape[-1] == 3:
        t = t[None]  # a bare [H, W, 3] image, as scripts pass it
    batch = image_batch(t, name)
    if batch.shape[0] > 1:
        log.warning("%s holds %d images; using the first", name, batch.shape[0])
    image = batch[0]
    if float(image.std()) < FLAT_IMAGE_STD:
        raise InputError(f"{name} is a single flat colour, so there is no product in it to paste; load a photo of "
                         f"the new product on a plain light background (PVTT Load Image)")
    return image


def check_memory(what: str, needed_bytes: int, fix: str, available: int | None = None) -> None:
    """Refuse work whose buffers would not fit in the safe share of free memory, before allocating them.

    Allocating first would swap or let the OOM killer end ComfyUI, its queue and every unsaved graph.
    ``available`` is the free memory when the caller already read it (``available_memory()`` otherwise).
    """
    available = available_memory() if available is None else available
    if available is None or needed_bytes <= MEMORY_FRACTION * available:
        return
    raise InputError(f"{what} needs about {needed_bytes / GB:.1f} GB, but only {available / GB:.1f} GB of memory is "
                     f"available and PVTT uses at most {MEMORY_FRACTION:.0%} of it; {fix}")


def clip_bytes(frames: int, height: int, width: int, channels: int = 3) -> int:
    """Bytes of a float32 clip [frames, height, width, channels]."""
    return frames * height * width * channels * FLOAT_BYTES


def check_output_memory(video: torch.Tensor) -> None:
    """Refuse a clip whose full-size output buffers (two copies of ``video``) would not fit in memory."""
    frames, height, width = video.shape[:3]
    check_memory(f"generating {frames} frames at {width}x{height}", 2 * clip_bytes(frames, height, width),
                 "load fewer frames (frame_load_cap, or a higher select_every_nth in PVTT Load Video) or downscale "
                 "the template")
