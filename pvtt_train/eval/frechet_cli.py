"""CLI: ``fvd`` (Fréchet distance between two folders of videos) and ``video-encoder`` (train the shipped encoder).

A video folder may hold, in any mix (hidden entries are skipped, the rest read in name order):

- ``*.mp4`` files, one video each;
- example folders written by ``pvtt_train data`` (they hold ``example.json``): the ``--clip`` of each
  (default ``target``, the ground truth), from its lossless PNG frames when the export has them
  (``template``) and from its MP4 otherwise;
- folders of PNG frames (``0000.png``, ``0001.png``, ...), one video each.

Compare like with like: mp4v is lossy at these sizes, so score MP4s against MP4s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckpointError, InputError

if TYPE_CHECKING:
    import numpy as np

# OpenCV and numpy are imported where videos are read, so building the CLI parser stays light.

LAYOUTS = "*.mp4 files, folders written by `pvtt_train data` (with example.json), or folders of PNG frames"


def read_mp4(path: Path) -> np.ndarray:
    """All frames of a video file as uint8 RGB [F, H, W, 3]."""
    import cv2
    import numpy as np

    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame[..., ::-1])
    finally:
        cap.release()
    if not frames:
        raise InputError(f"{path} has no readable frames; re-export it as an H.264 or mp4v MP4")
    return np.stack(frames)


def read_png_frames(folder: Path) -> np.ndarray:
    import cv2
    import numpy as np

    frames = []
    for png in sorted(folder.glob("*.png")):
        img = cv2.imread(str(png), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"{png} is not a readable PNG")
        frames.append(img[..., ::-1])
    if not frames:
        raise InputError(f"{folder} has no PNG frames; export the frames as 0000.png, 0001.png, ...")
    odd = next((i for i, f in enumerate(frames) if f.shape != frames[0].shape), None)
    if odd is not None:
        pngs = sorted(folder.glob("*.png"))
        raise InputError(f"frames in {folder} differ in size ({pngs[0].name}: {frames[0].shape[:2]}, "
                         f"{pngs[odd].name}: {frames[odd].shape[:2]}); export every frame at one size")
    return np.stack(frames)


def _example_clip(folder: Path, clip: str) -> np.ndarray:
    try:
        files = json.loads((folder / "example.json").read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{folder / 'example.json'} is unreadable ({exc}); export the example again") from exc
    if f"{clip}_frames" in files and (folder / files[f"{clip}_frames"]).is_dir():
        return read_png_frames(folder / files[f"{clip}_frames"])
    if clip in files and (folder / files[clip]).is_file():
        return read_mp4(folder / files[clip])
    raise InputError(f"{folder} has no {clip!r} clip (it lists {sorted(files)}); choose another --clip")


def load_video_folder(folder: str | Path, clip: str = "target") -> np.ndarray:
    """Every video in ``folder`` as uint8 [N, F, H, W, 3]; all must have the same frame count and size."""
    import numpy as np

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; pass a folder of {LAYOUTS}")
    videos, names = [], []
    for entry in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if entry.is_file() and entry.suffix.lower() == ".mp4":
            videos.append(read_mp4(entry))
        elif entry.is_dir() and (entry / "example.json").is_file():
            videos.append(_example_clip(entry, clip))
        elif entry.is_dir() and any(entry.glob("*.png")):
            videos.append(read_png_frames(entry))
        else:
            continue
        names.append(entry.name)
    if not videos:
        raise InputError(f"{folder} holds no videos; expected {LAYOUTS}")
    odd = [i for i, v in enumerate(videos) if v.shape != videos[0].shape]
    if odd:
        raise InputError(f"videos in {folder} differ in frames/size ({names[0]}: {videos[0].shape}, "
                         f"{names[odd[0]]}: {videos[odd[0]].shape}); score one size at a time")
    return np.stack(videos)


def _flagged(flag: str, load, *args):
    """``load(*args)``, with a user error's message prefixed by the option that named the input."""
    try:
        return load(*args)
    except (InputError, CheckpointError) as exc:
        raise type(exc)(f"{flag}: {exc}") from exc


def cmd_fvd(args) -> None:
    import torch

    from .frechet import FrechetScorer
    from .video_encoder import load_video_encoder

    torch.set_num_threads(args.threads)
    for flag, folder in (("--videos-dir", args.videos_dir), ("--reference-dir", args.reference_dir)):
        if not Path(folder).is_dir():  # the cheap check first, before any file is read
            raise InputError(f"{flag}: {folder} is not a folder; pass a folder of {LAYOUTS}")
    scorer = FrechetScorer(_flagged("--encoder", load_video_encoder, args.encoder))
    videos = _flagged("--videos-dir", load_video_folder, args.videos_dir, args.clip)
    reference = _flagged("--reference-dir", load_video_folder, args.reference_dir, args.clip)
    result = {"fvd": scorer.distance(videos, reference), "videos": len(videos), "reference": len(reference),
              "feature_dim": scorer.encoder.feature_dim, "encoder": args.encoder or "shipped"}
    print(json.dumps(result, indent=2))


def cmd_video_encoder(args) -> None:
    import torch

    from .video_encoder_train import EncoderTrainConfig, train_video_encoder

    torch.set_num_threads(args.threads)
    given = {k: getattr(args, k) for k in ("minutes", "max_steps", "seed") if getattr(args, k) is not None}
    cfg = EncoderTrainConfig(**given)
    report = train_video_encoder(cfg, Path(args.out))
    print(json.dumps(report["sanity_fd"], indent=2))
    print(f"video encoder written to {args.out} (report: {Path(args.out).with_suffix('.json')})")


def register(subparsers) -> None:
    """Add the ``fvd`` and ``video-encoder`` subcommands to ``python -m pvtt_train``."""
    from ..cli_args import SEED, number, out_file, whole
    from ..paths import SHIPPED_MODELS

    p = subparsers.add_parser("fvd", help="Fréchet video distance between two folders of videos")
    p.add_argument("--videos-dir", required=True, help=f"generated videos: {LAYOUTS}")
    p.add_argument("--reference-dir", required=True, help="ground-truth videos, same layouts")
    p.add_argument("--encoder", default=None,
                   help="video encoder .safetensors (default: the shipped one) or pytorch-i3d weights for a real FVD")
    p.add_argument("--clip", default="target", help="which clip of `pvtt_train data` example folders to score")
    p.set_defaults(func=cmd_fvd)

    p = subparsers.add_parser("video-encoder", help="train the video encoder the Fréchet-distance gates use")
    # The shipped file's name (``video_encoder.SHIPPED_VIDEO_ENCODER``), without importing torch here.
    p.add_argument("--out", default=str(SHIPPED_MODELS / "pvtt_video_encoder.safetensors"), type=out_file(),
                   help="the encoder .safetensors to write (default: the shipped encoder's path)")
    p.add_argument("--minutes", type=number(0, low_open=True, meaning=" (the training budget)"), default=None,
                   help="wall-clock budget for rendering and training (default 5; the report takes ~20 s more)")
    p.add_argument("--max-steps", type=whole(1), default=None, help="optimizer steps (default 2000)")
    p.add_argument("--seed", type=SEED, default=None, help="training seed (default 0)")
    p.set_defaults(func=cmd_video_encoder)
