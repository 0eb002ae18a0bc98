"""Write synthetic examples to disk in the form a ComfyUI user loads them.

One folder per seed (``<out_dir>/<seed:08d>/``) holding:

- ``template.mp4``, ``mask.mp4`` (white = product), ``target.mp4`` (ground truth), mp4v-coded;
- ``reference.png``, the product photo;
- ``template/0000.png ...`` and ``mask/0000.png ...``, lossless frame sequences;
- ``example.json`` (seed, generator config, frame count, size, fps, file list).

An example is built in a hidden temporary folder next to its final place, with ``example.json``
written last, and only then renamed into place; a crash leaves at most a ``.tmp`` folder, never a
half-written example that looks complete. A folder whose ``example.json`` already describes the
same seed, config and fps is kept as is, so an interrupted export can simply be run again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from ..errors import InputError
from .synthetic import Example, SyntheticConfig, SyntheticVideoGenerator

EXAMPLE_FORMAT = "pvtt-synthetic-example"
EXAMPLE_FORMAT_VERSION = 1


class ExportError(RuntimeError):
    """A file could not be written or did not read back as written; the message says what to check."""


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float image(s) in 0..1 to uint8 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _rgb_to_bgr(img: np.ndarray) -> np.ndarray:
    """One uint8 frame, [H, W, 3] RGB or [H, W] gray, as OpenCV's video writer wants it (BGR)."""
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.ascontiguousarray(img[..., ::-1])


def _write_png(path: Path, img: np.ndarray) -> None:
    """uint8 RGB [H, W, 3] or gray [H, W] image to PNG."""
    data = np.ascontiguousarray(img[..., ::-1]) if img.ndim == 3 else img
    if not cv2.imwrite(str(path), data):
        raise ExportError(f"OpenCV could not write {path}; check that the folder is writable and the disk has "
                          f"free space")


def write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    """uint8 frames [F, H, W, 3] (RGB) or [F, H, W] (gray) to an mp4v file, checked by reading it back."""
    count, height, width = frames.shape[:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise ExportError(f"OpenCV cannot open an mp4v writer for {path}; check that the folder is writable, and "
                          f"that this OpenCV has the mp4v encoder (pip install opencv-python has it)")
    try:
        for frame in frames:
            writer.write(_rgb_to_bgr(frame))
    finally:
        writer.release()
    cap = cv2.VideoCapture(str(path))
    read, shape = 0, None
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            read, shape = read + 1, frame.shape[:2]
    finally:
        cap.release()
    if read != count or shape != (height, width):
        raise ExportError(f"{path} reads back as {read} frames of {shape}, expected {count} of {(height, width)}; "
                          f"check free disk space, or install another OpenCV build (pip install opencv-python)")


def _write_sequence(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir()
    for i, frame in enumerate(frames):
        _write_png(folder / f"{i:04d}.png", frame)


def example_info(example: Example, config: SyntheticConfig, fps: float) -> dict:
    frames, height, width = example.mask.shape
    return {
        "format": EXAMPLE_FORMAT,
        "format_version": EXAMPLE_FORMAT_VERSION,
        "seed": int(example.seed),
        "config": config.to_dict(),
        "frames": int(frames),
        "height": int(height),
        "width": int(width),
        "fps": float(fps),
        "mask_convention": "white (255) = product region to replace",
        "files": {
            "template": "template.mp4", "mask": "mask.mp4", "target": "target.mp4",
            "reference": "reference.png", "template_frames": "template/", "mask_frames": "mask/",
        },
    }


def write_example(folder: Path, example: Example, config: SyntheticConfig, fps: float = 8) -> None:
    """Write one example's files into an existing, empty ``folder`` (``example.json`` last)."""
    folder = Path(folder)
    template, target = to_uint8(example.template), to_uint8(example.target)
    mask = np.where(example.mask > 0.5, 255, 0).astype(np.uint8)
    write_video(folder / "template.mp4", template, fps)
    write_video(folder / "mask.mp4", mask, fps)
    write_video(folder / "target.mp4", target, fps)
    _write_png(folder / "reference.png", to_uint8(example.reference))
    _write_sequence(folder / "template", template)
    _write_sequence(folder / "mask", mask)
    info = json.dumps(example_info(example, config, fps), indent=2, sort_keys=True)
    with open(folder / "example.json", "w") as fh:
        fh.write(info + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def is_complete(folder: Path, seed: int, config: SyntheticConfig, fps: float) -> bool:
    """True when ``folder`` already holds this exact example (its ``example.json`` matches)."""
    try:
        info = json.loads((Path(folder) / "example.json").read_text())
    except (OSError, ValueError):
        return False
    # Round-trip the config through JSON so tuples compare equal to the lists read back.
    want = json.loads(json.dumps(config.to_dict()))
    return (isinstance(info, dict) and info.get("seed") == seed and info.get("config") == want
            and info.get("fps") == float(fps) and info.get("format_version") == EXAMPLE_FORMAT_VERSION)


def export_examples(out_dir: str | Path, config: SyntheticConfig | None = None, seeds: Iterable[int] = range(8),
                    fps: float = 8, progress=None) -> list[Path]:
    """Render the examples of ``seeds`` and write one folder each under ``out_dir``; returns the folders.

    ``progress(i, total, folder)``, if given, is called after each example. Sizes must be even
    (the mp4v encoder silently crops odd ones).
    """
    config = config or SyntheticConfig()
    if config.height % 2 or config.width % 2:
        raise InputError(f"mp4v needs an even width and height, got {config.width}x{config.height}; use even "
                         f"sizes, e.g. 16x16")
    if fps <= 0:
        raise InputError(f"fps must be > 0, got {fps}; use e.g. 8")
    seeds = [int(s) for s in seeds]
    if any(s < 0 for s in seeds):
        raise InputError(f"seeds must be >= 0, got {min(seeds)}; start the range at 0 or above")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = SyntheticVideoGenerator(config)
    folders = []
    for i, seed in enumerate(seeds):
        final = out_dir / f"{seed:08d}"
        if not is_complete(final, seed, config, fps):
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=out_dir))
            try:
                write_example(tmp, generator.example(seed), config, fps)
                if final.exists():  # stale or incomplete: set aside, then swap in the new one
                    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=out_dir))
                    os.replace(final, old / final.name)
                    os.replace(tmp, final)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        folders.append(final)
        if progress is not None:
            progress(i + 1, len(seeds), final)
    return folders
