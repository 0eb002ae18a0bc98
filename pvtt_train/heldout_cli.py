"""``python -m pvtt_train heldout-eval``: models and baselines on independent held-out clips, through the nodes."""

from __future__ import annotations

import argparse
from pathlib import Path

#: The model scored when no --model is given.
DEFAULT_MODEL = "pvtt_residual_student_4step.safetensors"  # the example workflows' model


def cmd_heldout_eval(args) -> None:
    import torch

    from .cli_args import check_model_file
    from .eval.heldout_eval import run_heldout_eval
    from .eval.heldout_report import markdown, write_report
    from .paths import SHIPPED_MODELS
    from .training_extra import require

    require("heldout-eval (its product photos come from scikit-image)", "skimage")
    models = [Path(m) for m in (args.model or [SHIPPED_MODELS / DEFAULT_MODEL])]
    for model in models:
        check_model_file(model, "--model", "model", folder_ok=True)
    if args.teacher is not None:
        check_model_file(args.teacher, "--teacher", "teacher", folder_ok=True)
    torch.set_num_threads(args.threads)
    report, grid = run_heldout_eval(models, Path(args.teacher) if args.teacher else None, clips=args.clips,
                                    size=args.size, frames=args.frames, seed=args.seed, grid_clips=args.grid_clips)
    written = write_report(Path(args.out), report, grid)
    print()
    print(markdown(report))
    print("wrote " + ", ".join(str(p) for p in written))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``heldout-eval`` to the ``python -m pvtt_train`` sub-commands."""
    from .cli_args import SEED, out_folder, whole

    p = subparsers.add_parser(
        "heldout-eval", help="score models and baselines on held-out clips training never sees, through the nodes",
        description="Renders clips with an independent generator (other product shapes, photo textures, text "
                    "labels, rotations up to 90 degrees, scale changes, photo backgrounds), runs each model "
                    "through PVTT Load Model, Template Transfer and Background Preserve as a designer would, and "
                    "scores it against the ground truth beside an aligned paste, a flat mean-colour fill and the "
                    "unchanged template. Writes report.json, report.md and heldout_grid.png to --out.")
    p.add_argument("--model", action="append", default=None,
                   help=f"a PVTT checkpoint (or Wan-VACE folder) to score; repeat for several (default: the shipped "
                        f"{DEFAULT_MODEL})")
    p.add_argument("--teacher", default=None, help="a teacher checkpoint to score beside them (optional)")
    p.add_argument("--clips", type=whole(1), default=32, help="held-out clips (seeds --seed .. --seed + clips - 1)")
    p.add_argument("--size", type=whole(32), default=256, help="clip width and height in pixels")
    p.add_argument("--frames", type=whole(2), default=33, help="frames per clip")
    p.add_argument("--seed", type=SEED, default=0, help="first clip seed (also each clip's sampling seed)")
    p.add_argument("--grid-clips", type=whole(1), default=8, help="clips (rows) shown in heldout_grid.png")
    p.add_argument("--out", default="out/heldout", type=out_folder,
                   help="folder for report.json, report.md and heldout_grid.png (created if missing)")
    p.set_defaults(func=cmd_heldout_eval)
