"""``python -m pvtt_train sample``: one template transfer from files, as the ComfyUI workflow does it.

Template video -> PVTT Template Transfer (``pipeline.transfer``: the nodes' input checks, windows,
prompts, CFG) -> PVTT Background Preserve (``sampling.composite.background_preserve``, the node's defaults) -> MP4,
written atomically, with a progress bar over the sampling steps. The template and the mask are
MP4 files or folders of numbered frames; the mask is read as luminance (white = replace), as PVTT
Load Video's MASK output; a transparent product photo is flattened onto white, as PVTT Load Image.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

#: PVTT Background Preserve's defaults (its dilate_px and feather_px widgets).
GROW_PX, FEATHER_PX = 0, 0.0
FRAME_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
DEFAULT_FPS = 16.0


def _as_flag_error(flag: str, path: Path, exc: Exception):
    """The shared readers' refusal, reworded for the command line: ``--flag PATH: what to fix``."""
    from .errors import InputError

    message = str(exc).removeprefix("PVTT: ")
    return InputError(f"{flag} {path}: {message}")


def read_frames(path: Path, flag: str):
    """An MP4 or a folder of numbered frames as ([F,H,W,3] float 0..1, fps or None), read as PVTT
    Load Video reads them (``media.video_io``: real bit depth, PNG checksums, memory guard, frames
    of one size)."""
    import torch

    from .errors import InputError
    from .media.video_io import read_sequence, read_video

    files = None
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file()),
                       key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])
        if not files:
            raise InputError(f"{flag} {path}: the folder holds no frames ({', '.join(sorted(FRAME_SUFFIXES))})")
    try:
        frames, fps = (read_sequence(files)[0], None) if files else read_video(path)
    except InputError as exc:
        raise _as_flag_error(flag, path, exc) from exc
    return torch.from_numpy(frames).float() / 255, (fps or None)


def read_image(path: Path, flag: str):
    """[H,W,3] uint8 RGB, read as PVTT Load Image reads it (``media.image_decode``); transparency
    flattened onto white (what the conditioning expects around a product)."""
    from .errors import InputError
    from .media.image_decode import read_image as decode

    try:
        return decode(path)
    except InputError as exc:
        raise _as_flag_error(flag, path, exc) from exc


def write_video(path: Path, video, fps: float) -> None:
    """[F,H,W,3] in 0..1 to an MP4, atomically (a kill leaves no half-written file at ``path``)."""
    import cv2

    from .models.checkpoint import write_atomic

    frames = (video.clamp(0, 1) * 255).round().byte().numpy()
    height, width = frames.shape[1:3]

    def write(tmp: str) -> None:
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            raise RuntimeError("this OpenCV build cannot write MP4; install opencv-python-headless from pip")
        try:
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()

    write_atomic(path, write)


def cmd_sample(args) -> None:
    import torch
    from tqdm.auto import tqdm

    from .bench_cli import check_device
    from .cli_args import check_model_file
    from .errors import InputError
    from .models.loading import load_model
    from .pipeline import check_inputs, transfer
    from .sampling.composite import background_preserve

    for flag, value in (("--template", args.template), ("--mask", args.mask), ("--product", args.product)):
        if not Path(value).exists():
            raise InputError(f"{flag} {value}: not found")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"--out {out} exists; choose another name, or pass --overwrite to replace it")
    check_model_file(args.model, "--model", "model", folder_ok=True)
    check_device(args.device)
    torch.set_num_threads(args.threads)
    template, fps = read_frames(Path(args.template), "--template")
    mask_frames, _ = read_frames(Path(args.mask), "--mask")
    mask = (mask_frames @ torch.tensor([0.299, 0.587, 0.114])).clamp(0, 1)  # luminance, as PVTT Load Video
    product = torch.from_numpy(read_image(Path(args.product), "--product")).float() / 255
    check_inputs(template, mask, product)  # the nodes' checks, before the model is loaded
    loaded = load_model(args.model, args.device)
    if args.guidance is not None and loaded.sampler["kind"] != "euler_cfg":
        print(f"note: {Path(args.model).name} is a distilled student (guidance is built in); --guidance is ignored")
    bar = tqdm(desc="sample", unit="step")

    def on_step(i, total, _x0):
        bar.total = total
        bar.update(i - bar.n)

    try:
        generated = transfer(loaded, template, mask, product, steps=args.steps, seed=args.seed, callback=on_step,
                             prompt=args.prompt, negative_prompt=args.negative_prompt, guidance=args.guidance,
                             guidance_mode=args.guidance_mode, text_encoder=args.text_encoder)
    finally:
        bar.close()
    if mask.shape[0] == 1:
        mask = mask.expand(template.shape[0], -1, -1)
    result = background_preserve(template, generated, mask, GROW_PX, FEATHER_PX)
    write_video(out, result, args.fps or fps or DEFAULT_FPS)
    print(f"wrote {out} ({result.shape[0]} frames, {result.shape[2]}x{result.shape[1]})")


def mp4_file(text: str) -> str:
    """argparse ``type``: the video to write, named ``*.mp4``."""
    if Path(text).is_dir() or Path(text).suffix.lower() != ".mp4":
        raise argparse.ArgumentTypeError(f"{text} is not an .mp4 file name; pass e.g. out/transfer.mp4")
    return text


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sample`` to the ``python -m pvtt_train`` sub-commands."""
    from .cli_args import CFG, SEED, device_name, number, whole

    p = subparsers.add_parser("sample", help="put a product into a template video (inference, to an MP4)",
                              description="Put a new product into a template video, as the ComfyUI workflow "
                                          "does (Template Transfer, then Background Preserve), and write an MP4.")
    p.add_argument("--model", required=True,
                   help="a PVTT .safetensors (teacher or student) or a Wan-VACE diffusers folder")
    p.add_argument("--template", required=True, help="the template video: an MP4 or a folder of numbered frames")
    p.add_argument("--mask", required=True, help="the mask video or frame folder (white = the product to replace)")
    p.add_argument("--product", required=True, help="the new product's photo (PNG/JPEG; transparency becomes white)")
    p.add_argument("--prompt", default=None, help="text prompt (models with a UMT5 text encoder; others ignore it)")
    p.add_argument("--negative-prompt", default=None, help="what to steer away from (CFG's unconditional branch)")
    p.add_argument("--guidance", type=CFG, default=None,
                   help="CFG scale of a teacher (default: the checkpoint's; 1 = off)")
    p.add_argument("--guidance-mode", choices=("prompt", "reference"), default=None,
                   help="CFG against the negative prompt (as WanVACEPipeline) or against dropping the product "
                        "reference (default: the checkpoint's)")
    p.add_argument("--text-encoder", default=None,
                   help="Wan-VACE diffusers folder with tokenizer/ and text_encoder/, if the model's has moved")
    p.add_argument("--steps", type=whole(1), default=None, help="sampling steps (default: the checkpoint's)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the sampling noise (same seed, same video)")
    p.add_argument("--fps", type=number(low=0.0, low_open=True), default=None,
                   help="frame rate of the MP4 (default: the template's, or 16 for a frame folder)")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--threads", type=whole(1), default=2, help="torch CPU threads (default %(default)s)")
    p.add_argument("--out", required=True, type=mp4_file, help="the MP4 to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_sample)
