"""A folder of the user's own clips, read as training examples at the model's working clip size.

Expected layout (``prepare-data --clips DIR``): one sub-folder per clip, named freely::

    DIR/
      shoe_ad/                  a paired clip
        template.mp4            the template video (.mp4 .webm .avi .mov .mkv .gif, or a folder of frames)
        mask.mp4                where the product is, white = product (a video or a folder of frames)
        product.png             the new product's photo (.png .jpg .jpeg .webp)
        target.mp4              optional: the ground truth (the template with the new product)
        prompt.txt              optional: the text prompt (UTF-8)
      bottle_turntable/         a plain product video: self-supervised
        video.mp4               the clip (``template.*`` works too)
        mask.mp4
        prompt.txt              optional

A clip without a product photo becomes a self-supervised triple: the clip is both the template and
the ground truth, and the product photo is cut (by the mask) from another frame of the same clip,
augmented (mirror, scale, colour jitter, from a seeded generator) and matted onto a plain white
backdrop, the way product photos look. A real edit never sees its own frame as the reference, so
the cut comes from the frame farthest from the window being trained on.

Every clip is cover-resized and centre-cropped to the model's working size (its ``video``
metadata), and cut into non-overlapping windows of the working frame count (at most
``max_windows``; a clip shorter than one window is an error, so nothing is padded). Frames are
resized while decoding, so a long 4K clip never sits in memory at full size. Masks are thresholded
at one half after resizing. Frame rates are not resampled.

Any problem with one clip is a ``ClipError`` that names the clip and what to fix, so the caller
can skip it or stop (``--on-error``).

Videos, frame folders and product photos are read by ``pvtt_train.media`` (the readers PVTT Load
Video and PVTT Load Image use): 16-bit and float images by their real range, damaged PNGs and
decompression bombs refused, alpha flattened onto white, and the memory guard applied while decoding.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
from ..media.image_decode import read_image
from ..media.video_io import read_sequence, read_video

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TEMPLATE_NAMES = ("template", "video")
PRODUCT_NAMES = ("product", "reference")
#: Default cap on windows taken from one clip, so one long clip cannot dominate the dataset.
MAX_WINDOWS = 8


class ClipError(InputError):
    """One clip of the folder cannot be used; the message names it and says what to fix."""

    def __init__(self, clip: str, problem: str):
        self.clip, self.problem = clip, problem
        super().__init__(f"clip {clip!r}: {problem}")


@dataclass(frozen=True)
class ClipSource:
    """The files of one clip folder (found, not yet read)."""

    name: str
    video: Path | None
    mask: Path | None
    product: Path | None
    target: Path | None
    prompt: Path | None

    @property
    def self_supervised(self) -> bool:
        return self.product is None


@dataclass
class Example:
    """One training window at working size: pixels in 0..1 as float32 numpy arrays."""

    name: str  # "<clip>" or "<clip>#<window>"
    clip: str
    template: np.ndarray  # [F,H,W,3]
    mask: np.ndarray  # [F,H,W], 1 = product
    reference: np.ndarray  # [Hr,Wr,3] product photo (any size)
    target: np.ndarray | None  # [F,H,W,3] ground truth, if known
    prompt: str
    self_supervised: bool


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _find(folder: Path, stems: tuple[str, ...], suffixes: tuple[str, ...], frames_ok: bool) -> Path | None:
    """The first ``<stem><suffix>`` file (or ``<stem>/`` frame folder) in ``folder``."""
    for stem in stems:
        for entry in sorted(folder.iterdir()):
            if entry.stem.lower() != stem:
                continue
            if entry.is_file() and entry.suffix.lower() in suffixes:
                return entry
            if frames_ok and entry.is_dir():
                return entry
    return None


def discover_clips(root: Path) -> list[ClipSource]:
    """The clip sub-folders of ``root``, sorted by name (missing files are reported when read)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--clips {root}: not a folder. Pass a folder with one sub-folder per clip (template or "
                         f"video, mask, optional product photo and prompt.txt).")
    sources = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: p.name):
        prompt = folder / "prompt.txt"
        sources.append(ClipSource(
            name=folder.name,
            video=_find(folder, TEMPLATE_NAMES, VIDEO_SUFFIXES, frames_ok=True),
            mask=_find(folder, ("mask",), VIDEO_SUFFIXES, frames_ok=True),
            product=_find(folder, PRODUCT_NAMES, IMAGE_SUFFIXES, frames_ok=False),
            target=_find(folder, ("target",), VIDEO_SUFFIXES, frames_ok=True),
            prompt=prompt if prompt.is_file() else None))
    if not sources:
        raise InputError(f"--clips {root}: no clip sub-folders in it. Put each clip in its own folder "
                         f"(e.g. {root}/my_clip/template.mp4, mask.mp4, product.png).")
    return sources


# --- reading ---------------------------------------------------------------------------------------------------

def read_frames(path: Path, height: int, width: int, limit: int) -> np.ndarray:
    """Up to ``limit`` frames of a video file, GIF or frame folder, each cover-resized to
    height x width as decoded: [F,H,W,3] uint8 RGB.

    Read by the designer-facing readers (``media.video_io``, as PVTT Load Video): real bit depth,
    PNG checksums, frames of one size, and the memory guard, counted at the working size.
    """
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                       key=_natural_key)
        if not files:
            raise InputError(f"{path.name}/ holds no {'/'.join(IMAGE_SUFFIXES)} frames")
        return read_sequence(files, frame_load_cap=limit, cover=(height, width))[0]
    return read_video(path, frame_load_cap=limit, cover=(height, width))[0]


# --- the self-supervised reference -----------------------------------------------------------------------------

def _rng(seed: int, *names: str) -> np.random.Generator:
    digest = hashlib.sha256("\0".join(names).encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def cut_product(frame: np.ndarray, mask: np.ndarray, rng: np.random.Generator, margin: float = 0.1) -> np.ndarray:
    """The masked product of one frame as a product photo: cropped to its box (plus a margin),
    matted onto white, then mirrored (half the time), scaled by 0.8-1.2 and colour-jittered
    (brightness, contrast, saturation within +-15 %). ``frame`` [H,W,3] and result in 0..1."""
    ys, xs = np.nonzero(mask > 0.5)
    pad_y, pad_x = int((ys.max() - ys.min() + 1) * margin), int((xs.max() - xs.min() + 1) * margin)
    y0, y1 = max(0, ys.min() - pad_y), min(frame.shape[0], ys.max() + 1 + pad_y)
    x0, x1 = max(0, xs.min() - pad_x), min(frame.shape[1], xs.max() + 1 + pad_x)
    product, alpha = frame[y0:y1, x0:x1].astype(np.float32), (mask[y0:y1, x0:x1] > 0.5).astype(np.float32)
    grey = product.mean(-1, keepdims=True)
    saturation, contrast, brightness = rng.uniform(0.85, 1.15, size=3)
    product = grey + (product - grey) * saturation
    product = (product - product.mean()) * contrast + product.mean()
    product = np.clip(product * brightness, 0, 1)
    photo = product * alpha[..., None] + (1 - alpha[..., None])
    if rng.random() < 0.5:
        photo = photo[:, ::-1]
    scale = rng.uniform(0.8, 1.2)
    size = (max(2, round(photo.shape[1] * scale)), max(2, round(photo.shape[0] * scale)))
    return np.clip(cv2.resize(np.ascontiguousarray(photo), size, interpolation=cv2.INTER_LINEAR), 0, 1)


def reference_frame(masks: np.ndarray, start: int, frames: int) -> int:
    """The frame to cut the product from for window [start, start+frames): among the frames whose
    mask covers at least half the largest mask area, the one farthest from the window's centre."""
    area = masks.reshape(masks.shape[0], -1).sum(1)
    candidates = np.nonzero(area >= 0.5 * area.max())[0]
    centre = start + (frames - 1) / 2
    return int(candidates[np.argmax(np.abs(candidates - centre))])


# --- one clip --------------------------------------------------------------------------------------------------

def read_clip(source: ClipSource, frames: int, height: int, width: int, max_windows: int = MAX_WINDOWS,
              seed: int = 0) -> list[Example]:
    """The windows of one clip at working size; a ``ClipError`` for anything unusable."""
    name = source.name
    if source.video is None:
        raise ClipError(name, f"no template video: add template.mp4 (or video.mp4, or a template/ frame folder; "
                              f"{' '.join(VIDEO_SUFFIXES)})")
    if source.mask is None:
        raise ClipError(name, "no mask: add mask.mp4 (or a mask/ frame folder), white where the product is")
    limit = frames * max_windows
    try:
        template = read_frames(source.video, height, width, limit)
        mask = read_frames(source.mask, height, width, limit)
        target = read_frames(source.target, height, width, limit) if source.target else None
        product = read_image(source.product) if source.product else None
        prompt = source.prompt.read_text(encoding="utf-8").strip() if source.prompt else ""
    except (InputError, UnicodeDecodeError) as exc:
        raise ClipError(name, str(exc).removeprefix("PVTT: ")) from exc
    if len(template) < frames:
        raise ClipError(name, f"{source.video.name} has {len(template)} frames; the model's clip is {frames} frames. "
                              f"Use a longer clip.")
    if len(mask) < len(template):
        raise ClipError(name, f"{source.mask.name} has {len(mask)} frames but {source.video.name} has "
                              f"{len(template)} (within the first {limit}); the mask needs one frame per video frame")
    if target is not None and len(target) < len(template):
        raise ClipError(name, f"{source.target.name} has {len(target)} frames but {source.video.name} has "
                              f"{len(template)}; the ground truth needs one frame per template frame")
    binary = (mask.max(-1) > 127).astype(np.float32)
    video = template.astype(np.float32) / 255
    if source.self_supervised:
        target = template
    count = len(template) // frames
    examples = []
    for w in range(count):
        window = slice(w * frames, (w + 1) * frames)
        window_mask = binary[window]
        if not window_mask.any():
            raise ClipError(name, f"the mask is empty in frames {window.start}-{window.stop - 1} at the working size "
                                  f"{width}x{height}; every window needs the product visible")
        if source.self_supervised:
            cut = reference_frame(binary[:len(template)], window.start, frames)
            reference = cut_product(video[cut], binary[cut], _rng(seed, name, str(w)))
        else:
            reference = product.astype(np.float32) / 255
        examples.append(Example(
            name=name if count == 1 else f"{name}#{w}", clip=name, template=video[window], mask=window_mask,
            reference=reference, target=None if target is None else target[window].astype(np.float32) / 255,
            prompt=prompt, self_supervised=source.self_supervised))
    return examples
