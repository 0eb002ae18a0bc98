"""Reading and writing clips and product photos as uint8 RGB arrays (OpenCV and Pillow).

Imported only when a node runs, so ComfyUI's start-up never pays for OpenCV. Frames stream out of
the decoder one at a time and are kept only when selected, so skipping and sub-sampling long
videos costs no memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger("[PVTT]")

#: MP4 codecs in order of preference: H.264 plays in browsers but needs an OpenCV build with an
#: H.264 encoder (pip's opencv-python-headless has none); MPEG-4 Part 2 is always there.
MP4_FOURCCS = ("avc1", "mp4v")
_working_fourcc: str | None = None


class VideoReadError(ValueError):
    """A video that cannot be decoded, or a frame selection that keeps no frame."""


def read_video(path: Path, frame_load_cap: int = 0, skip_first_frames: int = 0, select_every_nth: int = 1,
               on_frame: Callable[[int], None] | None = None) -> tuple[np.ndarray, float]:
    """Decode the selected frames of a video: ([F,H,W,3] uint8 RGB, frames per second).

    ``on_frame(kept_so_far)`` runs after each kept frame (progress and Cancel).
    """
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoReadError(f"PVTT: OpenCV cannot open {path.name} as a video. Convert it to MP4 (H.264) "
                             f"and load that instead.")
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS)) or 0.0
        frames, index = [], 0
        while frame_load_cap == 0 or len(frames) < frame_load_cap:
            ok, bgr = cap.read()
            if not ok:
                break
            if index >= skip_first_frames and (index - skip_first_frames) % select_every_nth == 0:
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                if on_frame is not None:
                    on_frame(len(frames))
            index += 1
    finally:
        cap.release()
    if not frames:
        raise VideoReadError(
            f"PVTT: no frame was loaded from {path.name} ({index} frames decoded, skip_first_frames="
            f"{skip_first_frames}). Lower skip_first_frames, or check that the file is a video.")
    return np.stack(frames), (fps / select_every_nth if fps > 0 else 0.0)


def read_image(path: Path) -> np.ndarray:
    """A product photo as [H,W,3] uint8 RGB; transparency is flattened onto white.

    White is what the conditioning expects around a product (a plain light backdrop), so a
    cut-out PNG works as well as a studio shot.
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                flat.alpha_composite(rgba)
                img = flat
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, Image.DecompressionBombError) as exc:
        raise VideoReadError(f"PVTT: cannot read {path.name} as an image ({exc}). Save it as PNG or JPEG "
                             f"and load that instead.") from exc


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
    """Write [F,H,W,3] uint8 RGB frames as an MP4 file."""
    height, width = frames.shape[1:3]
    writer = _fourcc(path, (width, height), fps)
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def write_webp(path: Path, frames: np.ndarray, fps: float, exif: Image.Exif | None = None) -> None:
    """Write an animated, looping WebP: the preview every browser can show in the node."""
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0,
                   quality=90, method=4, exif=exif if exif is not None else Image.Exif())
