"""Still images (product photos, sequence frames, mask frames) decoded by their real range into uint8 RGB.

Pillow's ``convert("RGB")`` clips deep samples instead of scaling them: a 16-bit grey PNG turns
white, a 0..1 float TIFF black, and a feathered 16-bit mask doubles its white area. Here 16-bit
samples are scaled by 65535 and float samples read as 0..1 (refused when they hold another range),
then rounded to the nearest 8-bit level, the depth of every loaded frame. PNG chunk checksums are
verified before decoding, because Pillow stops inflating once it has every row, so most flipped
bytes in a compressible image decode into wrong pixels without an error. The size is read from the
header first, so a decompression bomb is refused before it is decoded.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError, shown_as_pvtt
from ..validation import GB, RANGE_TOLERANCE, check_memory, clip_bytes

log = logging.getLogger("[PVTT]")

#: Pillow modes of 16-bit samples (grey PNG and TIFF); colour 16-bit PNGs open as 8-bit RGB(A).
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
#: The long side to downscale an oversized photo to: PVTT resizes it to the model's working size
#: (a few hundred pixels) anyway.
SUGGESTED_LONG_SIDE = 2048
#: What Pillow raises on a damaged file: truncated (OSError, EOFError), bad checksum (SyntaxError), or
#: inconsistent headers (ValueError).
DECODE_ERRORS = (OSError, EOFError, SyntaxError, ValueError)
DOWNSCALE_HOW = (f"downscale the image to at most {SUGGESTED_LONG_SIDE} px on the long side (PVTT resizes it to the "
                 f"model's working size anyway), e.g. with ImageMagick: magick big.png -resize "
                 f"{SUGGESTED_LONG_SIDE}x{SUGGESTED_LONG_SIDE} smaller.png, or in any image editor")


@shown_as_pvtt
class ImageReadError(InputError):
    """An image file that cannot be decoded faithfully: unreadable, damaged, too large or of an unknown range."""


def read_image(path: Path, memory_check: bool = True, label: str | None = None) -> np.ndarray:
    """An image file as [H,W,3] uint8 RGB; transparency is flattened onto white.

    White is what the conditioning expects around a product (a plain light backdrop), so a
    cut-out PNG works as well as a studio shot. ``label`` names the file in errors (a sequence
    passes "frame 0003.png of shot/"); ``memory_check=False`` when a sequence checks its whole
    selection once instead.
    """
    label = label or path.name
    try:
        with Image.open(path) as img:  # reads the header only: the size is known before decoding
            if memory_check:
                check_image_memory(label, img.width, img.height)
            if img.format == "PNG":
                img.verify()  # every chunk's CRC, IDAT included; the image must be opened again to decode
    except Image.DecompressionBombError as exc:
        raise _too_large(path, label) from exc
    except InputError:  # the memory check's refusal, already worded for the designer
        raise
    except Image.UnidentifiedImageError as exc:
        raise ImageReadError(f"PVTT: cannot read {label} as an image ({exc}). Save it as PNG (8 or 16 bit) or "
                             f"JPEG and load that instead.") from exc
    except DECODE_ERRORS as exc:
        raise _damaged(label, exc) from exc
    try:
        with Image.open(path) as img:
            return _rgb_levels(img, label)
    except InputError:  # a float image out of range, already worded for the designer
        raise
    except DECODE_ERRORS as exc:
        raise _damaged(label, exc) from exc


def check_image_memory(name: str, width: int, height: int) -> None:
    """Refuse, before decoding, a photo whose IMAGE would not fit in the safe share of free memory
    (a 20000 x 20000 PNG can be a few kilobytes on disk and 4.8 GB as an IMAGE)."""
    check_memory(f"PVTT: loading {name} at {width}x{height}", clip_bytes(1, height, width), DOWNSCALE_HOW)


def to_uint8(samples: np.ndarray) -> np.ndarray:
    """The nearest 8-bit levels of 16-bit (0..65535) or float (0..1) samples.

    ``(v + 128) // 257`` is round(v * 255 / 65535) in integers; 257 is odd, so no value is a tie.
    """
    if samples.dtype.kind in "ui":
        return ((samples.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return np.rint(np.clip(samples, 0.0, 1.0) * 255.0).astype(np.uint8)


def _rgb_levels(img: Image.Image, label: str) -> np.ndarray:
    """The decoded pixels of an opened image as [H,W,3] uint8 RGB, scaled by their sample type."""
    source_format, frames = img.format, getattr(img, "n_frames", 1)
    if frames > 1:
        log.warning("%s holds %d frames (animated or multi-page); PVTT uses the first", label, frames)
    img = ImageOps.exif_transpose(img)
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "F" or img.mode == "I":
        grey = to_uint8(_deep_samples(img, source_format, label))
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        img = flat
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _deep_samples(img: Image.Image, source_format: str | None, label: str) -> np.ndarray:
    """The samples of a single-channel 16-bit, 32-bit integer or float image, checked to be in the
    range their type promises (16-bit: 0..65535; float: 0..1, within the resampling tolerance)."""
    samples = np.asarray(img)
    if img.mode == "I" and source_format != "PNG":  # a PNG holds at most 16 bits; older Pillow opens it as "I"
        raise ImageReadError(f"PVTT: {label} has 32-bit integer pixels, whose white level PVTT cannot know. Save "
                             f"it as an 8- or 16-bit PNG and load that instead.")
    if img.mode != "F":
        return samples
    low, high = float(np.min(samples)), float(np.max(samples))
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise ImageReadError(f"PVTT: {label} is a float image with {bad} NaN or Inf pixels. Fix them in the "
                             f"program that made it, or save it as a 16-bit PNG.")
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ImageReadError(f"PVTT: {label} is a float image with values {low:.3g}..{high:.3g}, but PVTT reads float "
                             f"images as 0..1 (0 = black, 1 = white). Rescale it to 0..1, or save it as a 16-bit "
                             f"PNG, and load that instead.")
    return samples


def _damaged(label: str, exc: Exception) -> ImageReadError:
    return ImageReadError(f"PVTT: {label} is damaged ({exc}): it was cut short or changed after it was saved. Export "
                          f"it again from the original (PNG or JPEG) and load that.")


def _too_large(path: Path, label: str) -> ImageReadError:
    """The refusal of an image Pillow will not open as a possible decompression bomb (over twice
    ``Image.MAX_IMAGE_PIXELS``), with its size read by the header reader of the format its name
    says, which skips that check."""
    limit = f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels"
    try:
        Image.init()
        factory = Image.OPEN[Image.registered_extensions()[path.suffix.lower()]][0]
        with open(path, "rb") as fp:
            width, height = factory(fp, path.name).size
        size = (f"is {width}x{height} pixels, too large to load (it would need about "
                f"{clip_bytes(1, height, width) / GB:.1f} GB as an IMAGE, and Pillow refuses images of more than "
                f"{limit} as possible decompression bombs)")
    except (KeyError, OSError, SyntaxError, ValueError):  # named for another format than it holds
        size = f"has more than {limit}, too large to load (Pillow refuses it as a possible decompression bomb)"
    return ImageReadError(f"PVTT: {label} {size}; {DOWNSCALE_HOW}.")
