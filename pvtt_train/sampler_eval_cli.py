"""``python -m pvtt_train sampler-eval``: the teacher's undistilled samplers beside its students.

The scoring and the bars live in ``eval.sampler_eval``; this module parses and checks the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

#: Students scored when no --student is given: the shipped ones of the default teacher.
DEFAULT_STUDENTS = tuple(f"pvtt_student_{n}step.safetensors" for n in (16, 8, 4))


def cmd_sampler_eval(args) -> None:
    import torch

    from .cli_args import check_encoders, check_guide_model, check_model_file
    from .distill.config import PATHS
    from .errors import InputError
    from .eval.sampler_eval import markdown, run_sampler_eval, write_report
    from .models.checkpoint import load_checkpoint
    from .paths import SHIPPED_MODELS, SHIPPED_TEACHER
    from .sampling.autoguidance import GUIDE_WEIGHT

    teacher_path = Path(args.teacher or SHIPPED_TEACHER)
    student_paths = [Path(s) for s in args.student] if args.student else \
        ([SHIPPED_MODELS / name for name in DEFAULT_STUDENTS] if args.teacher is None else [])
    teacher_meta = check_model_file(teacher_path, "--teacher", "teacher")
    if not teacher_meta.get("provenance", {}).get("data"):
        raise InputError(f"--teacher {teacher_path.name} records no synthetic training data (provenance.data), so "
                         f"there are no gate clips to draw for it; pass a teacher written by `python -m pvtt_train "
                         f"teacher` (a teacher trained on your own clips is scored by the gates of `distill --data`)")
    for path in student_paths:
        check_model_file(path, "--student", "student")
    guide_path = Path(args.guide_model) if args.guide_model is not None else None
    check_guide_model(teacher_path, teacher_meta, guide_path, args.guide_weight)
    check_encoders(None, args.video_encoder)
    steps = PATHS[args.steps] if isinstance(args.steps, str) else args.steps
    torch.set_num_threads(args.threads)
    guide = load_checkpoint(guide_path) if guide_path is not None else None
    report = run_sampler_eval(load_checkpoint(teacher_path), [load_checkpoint(p) for p in student_paths],
                              clips=args.clips, step_counts=steps, ancestral=args.ancestral,
                              video_encoder=args.video_encoder, seed=args.seed, oracle_draws=args.oracle_draws,
                              repeats=args.repeats, guide=guide,
                              guide_weight=args.guide_weight or GUIDE_WEIGHT, shift=args.shift,
                              log=lambda line: print("  " + line, flush=True))
    written = write_report(Path(args.out), report)
    print()
    print(markdown(report))
    print("wrote " + ", ".join(str(p) for p in written))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sampler-eval`` to the ``python -m pvtt_train`` sub-commands."""
    from .cli_args import AUTOGUIDANCE_WEIGHT, FLOW_SHIFT, SEED, out_folder, step_path, whole

    def oracle_draws(text: str) -> int:
        value = whole(0)(text)
        if value == 1:
            raise argparse.ArgumentTypeError("1 draw is no mean: use 0 (no oracles) or at least 2")
        return value

    p = subparsers.add_parser(
        "sampler-eval", help="the teacher's undistilled samplers beside its students on the gate clips",
        description="Scores, on the progressive run's gate clips (same clips, noise and video encoder as the "
                    "gates): the teacher's own sampler; the teacher undistilled at fewer steps, with its Euler + "
                    "CFG sampler and with the students' few-step sampler; and each student. Reports Fréchet "
                    "distance, product and background PSNR, time per clip, speed-up and quality retention, and "
                    "checks whether distillation earns its place: the teacher's own sampler is its best, and "
                    "each student at the fewest steps beats the undistilled teacher at its step count (0.7x its "
                    "Fréchet distance) and stays within 1.15x of the teacher's, with retention >= 0.95 and "
                    "speed-up >= 20x. Writes report.json and report.md to --out.")
    p.add_argument("--teacher", default=None,
                   help="the teacher checkpoint (a PVTT teacher trained on synthetic clips; default: the shipped "
                        "pvtt_teacher.safetensors)")
    p.add_argument("--student", action="append", default=None,
                   help="a student distilled from it; repeat for several (default: with the shipped teacher, its "
                        "shipped 16-, 8- and 4-step students; with --teacher, none)")
    p.add_argument("--steps", type=step_path, default="default",
                   help="step counts at which to sample the teacher undistilled, e.g. 16,8,4 or a named path "
                        "(default: the default path, 16,8,4); each student's own count is added")
    p.add_argument("--ancestral", action="store_true",
                   help="also sample the teacher undistilled with Euler ancestral (ComfyUI's euler_ancestral for "
                        "rectified flow, eta 1) at its own step count and at each of --steps: does a stochastic "
                        "sampler make more steps pay?")
    p.add_argument("--guide-model", default=None,
                   help="also sample every undistilled row under autoguidance (Karras et al. 2024) by this weaker "
                        "copy of the teacher: its own command with a lower --max-steps. The autoguided rows come "
                        "first and the teacher's own sampler so guided is the reference (2 calls a step, like CFG)")
    p.add_argument("--guide-weight", default=None, type=AUTOGUIDANCE_WEIGHT,
                   help="autoguidance's weight w: each call is v_guide + w (v_teacher - v_guide); above 1 "
                        "(default: 2, within the paper's 1.5-3; the README's figures)")
    p.add_argument("--shift", default=None, type=FLOW_SHIFT,
                   help="sample every undistilled row of the teacher at this flow shift instead of its own schedule's "
                        "(s' = shift s / (1 + (shift - 1) s): above 1, more of the steps at high noise, as Wan 2.1 "
                        "samples at 3 or 5); students keep their own. Default: the teacher's")
    p.add_argument("--clips", type=whole(2, " (a Fréchet distance needs a covariance)"), default=64,
                   help="gate clips to score (the gates use 64)")
    p.add_argument("--video-encoder", default=None,
                   help="encoder of the Fréchet distance: the shipped one, or an I3D .safetensors file")
    p.add_argument("--oracle-draws", type=oracle_draws, default=8,
                   help="when the teacher's data has something its conditioning leaves open (teacher --specular, "
                        "--sheen or --grain), also score a perfect sampler (the truth with that redrawn, averaged "
                        "over this many draws) and a perfect regressor (their mean); 0 = skip (default: 8)")
    p.add_argument("--seed", type=SEED, default=0, help="sampling seed (the gates use the run's --seed, 0 by default)")
    p.add_argument("--repeats", type=whole(1, " (each repeat is a whole scoring of every row)", maximum=100), default=1,
                   help="score every sample under this many draws of sampling noise (the first from --seed) and check "
                        "the bars on the mean Fréchet distance; the report shows each row's range and the best "
                        "undistilled sample under each draw. Sampling noise alone moves a distance on 64 clips by "
                        "up to about 0.2, so a first bar within that is worth a second seed (default: 1)")
    p.add_argument("--out", default="out/sampler_eval", type=out_folder,
                   help="folder for report.json and report.md (created if missing)")
    p.set_defaults(func=cmd_sampler_eval)
