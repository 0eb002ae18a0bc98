"""``python -m pvtt_train <command>``: data, teacher, distill, evaluate, demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _threads(args) -> None:
    import torch

    torch.set_num_threads(args.threads)


def cmd_data(args) -> None:
    from .data.batches import HELDOUT_SEED_BASE
    from .data.export import export_examples
    from .data.synthetic import SyntheticConfig

    cfg = SyntheticConfig(frames=args.frames, height=args.height, width=args.width)
    base = HELDOUT_SEED_BASE if args.heldout else 0
    export_examples(Path(args.out), cfg, range(base + args.first_seed, base + args.first_seed + args.count))
    print(f"wrote {args.count} examples to {args.out}")


def cmd_teacher(args) -> None:
    from .train.teacher import TeacherConfig, train_teacher

    _threads(args)
    cfg = TeacherConfig(minutes=args.minutes, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                        mask_weight=args.mask_weight, cfg_dropout=args.cfg_dropout, seed=args.seed,
                        sample_cfg=args.sample_cfg, save_every=args.save_every)
    out = train_teacher(cfg, Path(args.out))
    print(f"teacher written to {out}")


def _stage_from_args(args):
    from .distill.trainer import StageConfig

    return StageConfig(generator_steps=args.generator_steps, minutes=args.minutes, teacher_cfg=args.teacher_cfg,
                       lr_student=args.lr_student, lr_critic=args.lr_critic, critic_ratio=args.critic_ratio,
                       weight_background=args.weight_background)


def cmd_distill(args) -> None:
    from .distill.trainer import DistillConfig, distill
    from .models.checkpoint import load_checkpoint

    _threads(args)
    teacher = load_checkpoint(args.teacher)
    cfg = DistillConfig(batch_size=args.batch_size, seed=args.seed, save_every=args.save_every,
                        stage=_stage_from_args(args))
    out = Path(args.out)
    state_dir = Path(args.state_dir) if args.state_dir else Path("runs") / out.stem / "state"
    distill(teacher, cfg, out, state_dir=state_dir, resume=args.resume)
    print(f"student written to {out}")


def cmd_evaluate(args) -> None:
    from .data.batches import training_data_config
    from .eval.evaluate import evaluate, format_table, save_grid
    from .models.checkpoint import load_checkpoint

    _threads(args)
    teacher, student = load_checkpoint(args.teacher), load_checkpoint(args.student)
    report, outputs, batch = evaluate(teacher, student, training_data_config(teacher), count=args.clips)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    save_grid(out / "grid.png", batch, outputs["teacher"].composited, outputs["student"].composited)
    print(format_table(report))


def cmd_teacher_eval(args) -> None:
    from .data.batches import training_data_config
    from .eval.teacher_bar import calibrate_cfg, teacher_bar
    from .models.checkpoint import load_checkpoint, save_checkpoint

    _threads(args)
    teacher = load_checkpoint(args.teacher)
    if args.calibrate_cfg:
        cfg = calibrate_cfg(teacher, training_data_config(teacher), tuple(c for c in args.cfg if c > 1))
        save_checkpoint(teacher.path, teacher.model, {**teacher.metadata,
                                                      "sampler": {**teacher.sampler, "cfg": cfg}})
        teacher = load_checkpoint(args.teacher)
        print(f"teacher sampler CFG set to {cfg:g} (best product PSNR on calibration clips)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = teacher_bar(teacher, training_data_config(teacher), cfgs=tuple(args.cfg), count=args.clips,
                          strip_path=out / "teacher_strip.png")
    (out / "teacher_bar.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def cmd_demo(args) -> None:
    from .demo import run_demo

    _threads(args)
    report = run_demo(Path(args.out), Path(args.models_dir), Path(args.teacher), _stage_from_args(args),
                      clips=args.clips)
    ok = report["speedup"] >= 10 and report["quality_retention"]["min"] >= 0.9
    print("PASS" if ok else "BELOW TARGET", "(speedup >= 10 and quality_retention.min >= 0.9)")


def _add_stage_args(p: argparse.ArgumentParser, generator_steps: int, minutes: float) -> None:
    g = p.add_argument_group("distillation stage")
    g.add_argument("--generator-steps", type=int, default=generator_steps, help="student (generator) updates")
    g.add_argument("--minutes", type=float, default=minutes, help="wall-clock budget; 0 = none")
    g.add_argument("--teacher-cfg", type=float, default=None,
                   help="teacher CFG for the real score, standard form (1 = off); default: the teacher's own")
    g.add_argument("--lr-student", type=float, default=2e-5)
    g.add_argument("--lr-critic", type=float, default=1e-4)
    g.add_argument("--critic-ratio", type=int, default=5, help="critic updates per student update")
    g.add_argument("--weight-background", type=float, default=1.0, help="background-preservation loss weight")


def build_parser() -> argparse.ArgumentParser:
    from .paths import DEFAULT_MODELS_DIR, SHIPPED_TEACHER

    parser = argparse.ArgumentParser(prog="python -m pvtt_train", description=__doc__)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="export synthetic template-transfer examples as MP4 + PNG")
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--heldout", action="store_true", help="use the held-out seed range")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--height", type=int, default=16)
    p.add_argument("--width", type=int, default=16)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("teacher", help="train the tiny flow-matching teacher")
    p.add_argument("--out", default=str(SHIPPED_TEACHER))
    p.add_argument("--minutes", type=float, default=29.0)
    p.add_argument("--max-steps", type=int, default=4600)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--mask-weight", type=float, default=4.0)
    p.add_argument("--cfg-dropout", type=float, default=0.1)
    p.add_argument("--sample-cfg", type=float, default=1.0, help="CFG the checkpoint's sampler uses")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("teacher-eval", help="teacher samples vs ground truth on held-out clips (the teacher bar)")
    p.add_argument("--teacher", default=str(SHIPPED_TEACHER))
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0, 1.25, 1.5, 2.0], help="CFG weights to try")
    p.add_argument("--calibrate-cfg", action="store_true",
                   help="write the best guided weight (> 1) on calibration clips into the checkpoint's sampler")
    p.set_defaults(func=cmd_teacher_eval)

    p = sub.add_parser("distill", help="DMD-distil a few-step student from a teacher")
    p.add_argument("--teacher", default=str(SHIPPED_TEACHER))
    p.add_argument("--out", default=str(DEFAULT_MODELS_DIR / "pvtt_student_4step.safetensors"))
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state-dir", default=None,
                   help="where resumable training states go (default runs/<student name>/state); keep it out "
                        "of models/pvtt so ComfyUI does not list them")
    p.add_argument("--resume", action="store_true", help="continue exactly from the newest state in --state-dir")
    p.add_argument("--save-every", type=int, default=25, help="generator steps between training states")
    _add_stage_args(p, generator_steps=150, minutes=0.0)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("evaluate", help="teacher vs student on held-out clips")
    p.add_argument("--teacher", default=str(SHIPPED_TEACHER))
    p.add_argument("--student", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=16)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="end to end: data, shipped teacher, distil, evaluate, export")
    p.add_argument("--out", required=True)
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR),
                   help="where the student goes; point at ComfyUI/models/pvtt to use it there")
    p.add_argument("--teacher", default=str(SHIPPED_TEACHER))
    p.add_argument("--clips", type=int, default=16)
    _add_stage_args(p, generator_steps=150, minutes=0.0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
