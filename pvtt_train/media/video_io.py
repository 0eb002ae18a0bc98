"""Reading and writing clips as uint8 RGB arrays (OpenCV and Pillow); frames of a sequence are
decoded by ``image_decode.read_image``, like product photos.

Imported only when a node runs, so ComfyUI's start-up never pays for OpenCV. Frames stream out of
the decoder one at a time and are kept only when selected, so skipping and sub-sampling long
videos costs no memory; image sequences decode only the selected files. Before decoding, the size
of the loaded clip is estimated from the container's metadata (or the file count) and refused
when it would not fit in memory; while decoding, the kept frames are counted against the same
budget, so a container that reports no frame count (or a false one) is stopped just as early, and
a 4K hour never takes ComfyUI down with it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from PIL import Image

from ..errors import InputError, shown_as_pvtt
from ..validation import MEMORY_FRACTION, available_memory, clip_bytes
from ..validation import check_memory as check_memory_for
from .image_decode import read_image

log = logging.getLogger("[PVTT]")

#: MP4 codecs in order of preference: H.264 plays in browsers but needs an OpenCV build with an
#: H.264 encoder (pip's opencv-python-headless has none); MPEG-4 Part 2 is always there.
MP4_FOURCCS = ("avc1", "mp4v")
_working_fourcc: str | None = None

#: Skipped frames report progress only every this many decodes: often enough for Cancel to answer
#: within a fraction of a second, rarely enough not to flood ComfyUI's progress messages.
PROGRESS_EVERY = 16

T = TypeVar("T")
#: ``on_frame(kept_so_far, frames_to_keep)``; frames_to_keep is 0 when the container does not say.
FrameCallback = Callable[[int, int], None]


@shown_as_pvtt
class VideoReadError(InputError):
    """A video that cannot be decoded, or a frame selection that keeps no frame."""


def select(items: Sequence[T], frame_load_cap: int, skip_first_frames: int, select_every_nth: int) -> Sequence[T]:
    """The items a frame selection keeps: drop the first ``skip_first_frames``, keep every
    ``select_every_nth``, stop at ``frame_load_cap`` (0 = no cap).

    The one definition of the selection: sequences apply it to their file list, videos to
    ``range(frame_count)`` to know the loaded size before decoding.
    """
    kept = items[skip_first_frames::select_every_nth]
    return kept[:frame_load_cap] if frame_load_cap else kept


def frames_that_fit(height: int, width: int, available: int) -> int:
    """How many frames of this size the loaded clip may hold: the float32 IMAGE may take at most
    MEMORY_FRACTION of the available memory."""
    return int(MEMORY_FRACTION * available // clip_bytes(1, height, width))


def check_memory(name: str, frame_count: int, height: int, width: int, available: int | None = None,
                 counted: str = "") -> None:
    """Refuse a selection whose IMAGE would not fit in the safe share of free memory.

    Decoding it would swap or let the OOM killer end ComfyUI (and its queue); failing instead names
    the largest frame_load_cap that fits. The loaded clip may take at most MEMORY_FRACTION of the
    available memory: its uint8 frames, the float32 IMAGE and the MASK all exist at once while
    loading, and the models need room too. ``counted`` says why the frames were counted while
    decoding instead of taken from the container (the streaming guard).
    """
    available = available_memory() if available is None else available  # this module's name, for tests
    if available is None:
        return
    fits = frames_that_fit(height, width, available)
    fix = (f"set frame_load_cap to {fits} or less, raise select_every_nth, or downscale the video" if fits
           else "downscale the video (not even one frame fits)")
    check_memory_for(f"PVTT: loading {frame_count} frames of {name} at {width}x{height}{counted}",
                     clip_bytes(frame_count, height, width), f"to load it, {fix}", available)


def container_frame_count(reported: float, file_bytes: int) -> int:
    """The frame count a container reports, or 0 (unknown) when it cannot be true.

    Raw streams (an MJPEG ``.avi`` of concatenated JPEGs) report a sentinel such as -9.2e18, and a
    damaged header can report anything; every frame takes at least one byte of the file.
    """
    if not math.isfinite(reported) or reported < 1 or reported > file_bytes:
        return 0
    return int(reported)


def _no_frame_error(name: str, total: int, skip_first_frames: int) -> VideoReadError:
    return VideoReadError(
        f"PVTT: no frame was loaded from {name} ({total} frames, skip_first_frames={skip_first_frames}). "
        f"Lower skip_first_frames, or check that it holds a video.")


def cover_resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale to cover height x width (aspect kept), then centre-crop to exactly that size."""
    h, w = frame.shape[:2]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(frame, (new_w, new_h), interpolation=interp)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return resized[top:top + height, left:left + width]


def read_video(path: Path, frame_load_cap: int = 0, skip_first_frames: int = 0, select_every_nth: int = 1,
               on_frame: FrameCallback | None = None,
               cover: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
    """Decode the selected frames of a video: ([F,H,W,3] uint8 RGB, frames per second).

    Memory is guarded twice: before decoding from the container's frame count and size (when it
    gives plausible ones), and while decoding by counting the kept frames, so a container that
    reports no count, a wrong one or a wrong size still stops with the same message instead of
    running out of memory. ``on_frame`` runs after each kept frame and every ``PROGRESS_EVERY``
    decoded frames (progress and Cancel, also while skipping). ``cover=(height, width)``
    cover-resizes and centre-crops each kept frame as it is decoded (``cover_resize``), so a long
    4K clip never sits in memory at full size; the memory guard then counts frames of that size.
    """
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoReadError(f"PVTT: OpenCV cannot open {path.name} as a video. Convert it to MP4 (H.264) "
                             f"and load that instead.")
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        total = container_frame_count(cap.get(cv2.CAP_PROP_FRAME_COUNT), path.stat().st_size)
        expected = len(select(range(total), frame_load_cap, skip_first_frames, select_every_nth))
        available = available_memory()
        height, width = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        if expected and height > 0 and width > 0:
            check_memory(path.name, expected, *(cover or (height, width)), available)
        counted = (" (more than its container reports)" if total
                   else " (its container does not say how many frames it holds; counted while decoding)")
        frames, fits, index, first_shape = [], None, 0, None
        while frame_load_cap == 0 or len(frames) < frame_load_cap:
            ok, bgr = cap.read()
            if not ok:
                break
            kept = index >= skip_first_frames and (index - skip_first_frames) % select_every_nth == 0
            if kept:
                if first_shape is None:
                    first_shape = bgr.shape
                    if available is not None:
                        fits = frames_that_fit(*(cover or bgr.shape[:2]), available)
                elif bgr.shape != first_shape:
                    raise VideoReadError(
                        f"PVTT: {path.name} changes size at frame {index}, from {first_shape[1]}x"
                        f"{first_shape[0]} to {bgr.shape[1]}x{bgr.shape[0]}. Re-encode it at one size "
                        f"(e.g. ffmpeg -i in.mp4 -vf scale={first_shape[1]}:{first_shape[0]} out.mp4).")
                if fits is not None and len(frames) >= fits:
                    check_memory(path.name, len(frames) + 1, *(cover or bgr.shape[:2]), available, counted)
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                frames.append(cover_resize(rgb, *cover) if cover else rgb)
            index += 1
            if on_frame is not None and (kept or index % PROGRESS_EVERY == 0):
                on_frame(len(frames), expected)
    finally:
        cap.release()
    if not frames:
        raise _no_frame_error(path.name, index, skip_first_frames)
    return np.stack(frames), (fps / select_every_nth if math.isfinite(fps) and fps > 0 else 0.0)


def read_sequence(files: Sequence[Path], frame_load_cap: int = 0, skip_first_frames: int = 0,
                  select_every_nth: int = 1, fps: float = 8.0, on_frame: FrameCallback | None = None,
                  cover: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
    """Decode the selected files of an image sequence (already in frame order) like a video:
    ([F,H,W,3] uint8 RGB, ``fps / select_every_nth``).

    Only the selected files are opened, each by ``read_image`` (real bit depth, PNG checksums,
    transparency onto white). The first frame is decoded before the memory check: it gives the
    size, and names an unreadable file. Frames of another size are refused, never stretched: which
    frame the designer meant to be the reference size is theirs to say. ``cover`` as in ``read_video``.
    """
    name = f"{files[0].parent.name}/"
    chosen = select(files, frame_load_cap, skip_first_frames, select_every_nth)
    if not chosen:
        raise _no_frame_error(name, len(files), skip_first_frames)
    first = read_image(chosen[0], label=f"frame {chosen[0].name} of {name}")
    check_memory(name, len(chosen), *(cover or first.shape[:2]))
    frames = []
    for file in chosen:
        frame = read_image(file, memory_check=False, label=f"frame {file.name} of {name}") if frames else first
        if frame.shape != first.shape:
            raise VideoReadError(
                f"PVTT: frame {file.name} of {name} is {frame.shape[1]}x{frame.shape[0]} but the first frame is "
                f"{first.shape[1]}x{first.shape[0]} ({chosen[0].name}); every frame of a sequence must have the "
                f"same size, and PVTT never stretches one to fit. Export all frames again at one size (or resize them all to "
                f"{first.shape[1]}x{first.shape[0]}) and load the folder again.")
        frames.append(cover_resize(frame, *cover) if cover else frame)
        if on_frame is not None:
            on_frame(len(frames), len(chosen))
    return np.stack(frames), fps / select_every_nth


def _fourcc(path: Path, size: tuple[int, int], fps: float) -> cv2.VideoWriter:
    """An open MP4 writer with the first codec this OpenCV build can encode (probed once)."""
    global _working_fourcc
    for code in ([_working_fourcc] if _working_fourcc else MP4_FOURCCS):
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*code), fps, size)
        if writer.isOpened():
            if _working_fourcc is None:
                log.info("writing MP4 with the %s codec", code)
            _working_fourcc = code
            return writer
        writer.release()
    raise RuntimeError(f"PVTT: this OpenCV build cannot write MP4 (tried {', '.join(MP4_FOURCCS)}). Install "
                       f"opencv-python-headless from pip, which includes the MPEG-4 encoder.")


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """Write [F,H,W,3] uint8 RGB frames as an MP4 file.

    MP4 codecs store colour at half resolution (4:2:0) and need an even width and height; OpenCV
    would silently crop an odd size, losing the last row or column. Instead that row or column is
    repeated once, so every pixel of the clip is in the file.
    """
    height, width = frames.shape[1:3]
    pad_rows, pad_cols = height % 2, width % 2
    if pad_rows or pad_cols:
        log.warning("MP4 needs an even width and height: %dx%d is saved as %dx%d with the last column/row "
                    "repeated (the preview keeps the exact size)", width, height, width + pad_cols, height + pad_rows)
        frames = np.pad(frames, ((0, 0), (0, pad_rows), (0, pad_cols), (0, 0)), mode="edge")
    writer = _fourcc(path, (width + pad_cols, height + pad_rows), fps)
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    """Write an animated, looping GIF preview (256 colours; for tools that do not show WebP).

    GIF delays are whole centiseconds and browsers slow delays under 20 ms down to 100 ms, so the
    preview plays at 50 fps at most.
    """
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(20, round(1000 / fps)), loop=0)


def write_webp(path: Path, frames: np.ndarray, fps: float, exif: Image.Exif | None = None) -> None:
    """Write an animated, looping WebP: the preview every browser can show in the node."""
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0,
                   quality=90, method=4, exif=exif if exif is not None else Image.Exif())
