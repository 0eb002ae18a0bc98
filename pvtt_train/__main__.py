"""``python -m pvtt_train <command>``: data, teacher, distill, evaluate, demo, and the encoders and LoRA tools."""

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


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _weights(items: list[str]) -> dict[str, tuple[float, int]]:
    """``--weight temporal=0.2:10`` -> {"temporal": (0.2, 10)}."""
    from .distill.config import DEFAULT_WEIGHTS, LOSSES

    out = dict(DEFAULT_WEIGHTS)
    for item in items:
        name, _, value = item.partition("=")
        if name not in LOSSES or not value:
            raise SystemExit(f"--weight {item!r}: write NAME=WEIGHT[:WARMUP] with NAME one of {', '.join(LOSSES)}")
        weight, _, warmup = value.partition(":")
        out[name] = (float(weight), int(warmup) if warmup else DEFAULT_WEIGHTS[name][1])
    return out


def _progressive_from_args(args):
    from dataclasses import replace

    from .distill.config import PATHS, RunConfig, build_stages

    path = args.path if args.path in PATHS else _int_list(args.path)
    budgets = _int_list(args.generator_steps)
    overrides = {"critic_ratio": args.critic_ratio, "lr_critic": args.lr_critic, "teacher_cfg": args.teacher_cfg,
                 "critic_init": args.critic_init, "minutes": args.minutes, "shift": args.shift,
                 "weights": _weights(args.weight)}
    stages = build_stages(path, budgets if len(budgets) > 1 else budgets[0], lr_scale=args.lr_scale,
                          adversarial=args.adversarial, perceptual=args.perceptual, **overrides)
    if args.lr_student is not None:
        stages = [replace(s, lr_student=args.lr_student) for s in stages]
    run = RunConfig(batch_size=args.batch_size, grad_accumulation=args.grad_accumulation, seed=args.seed,
                    grad_clip=args.grad_clip, ema_decay=args.ema_decay, save_every=args.save_every,
                    keep_states=args.keep_states, mixed_precision=args.mixed_precision,
                    gradient_checkpointing=args.gradient_checkpointing, real_score=args.real_score,
                    regression_pool=args.regression_pool, eval_clips=args.eval_clips,
                    identity_encoder=args.identity_encoder, video_encoder=args.video_encoder, force=args.force)
    return stages, run


def cmd_distill(args) -> None:
    from .data.batches import training_data_config
    from .distill.progressive import make_accelerator, run_progressive
    from .distill.report import side_by_side, write_report
    from .models.checkpoint import load_checkpoint

    _threads(args)
    stages, run = _progressive_from_args(args)
    run_dir = Path(args.run_dir)
    acc = make_accelerator(run, run_dir)
    result = run_progressive(Path(args.teacher), stages, run, run_dir, Path(args.models_dir), resume=args.resume,
                             accelerator=acc)
    if acc.is_main_process:
        for s in result["stages"]:
            print(f"{s['name']}: {s['export']}")
        if args.report_clips:
            teacher = load_checkpoint(Path(args.teacher))
            report, _, _ = side_by_side(teacher, result, training_data_config(teacher), args.report_clips)
            write_report(report, run_dir)
            print((run_dir / "report.md").read_text())


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
    stages, run = _progressive_from_args(args)
    report = run_demo(Path(args.out), Path(args.models_dir), stages, run, Path(args.teacher), clips=args.clips,
                      resume=args.resume)
    final = report["stages"][-1]
    ok = all(s["gate"]["passed"] for s in report["stages"]) and final["quality_retention"]["min"] >= 0.9
    print("PASS" if ok else "BELOW TARGET", "(every gate passed and the last student's quality_retention.min "
                                            ">= 0.9)")


def _add_progressive_args(p: argparse.ArgumentParser, generator_steps: str) -> None:
    g = p.add_argument_group("stages")
    g.add_argument("--path", default="default",
                   help="'default' (50->16->8->4), 'gentle' (50->25->12->6->4) or step counts, e.g. 8,4")
    g.add_argument("--generator-steps", default=generator_steps,
                   help="student updates per stage: one number, or one per stage (e.g. 100,100,150)")
    g.add_argument("--minutes", type=float, default=0.0, help="wall-clock budget per stage; 0 = none")
    g.add_argument("--lr-scale", type=float, default=0.4,
                   help="multiplies the recipe's student learning rates 1e-4 / 5e-5 / 1e-5 (first/middle/last)")
    g.add_argument("--lr-student", type=float, default=None, help="one student learning rate for every stage")
    g.add_argument("--lr-critic", type=float, default=1e-4)
    g.add_argument("--critic-ratio", type=int, default=5, help="critic optimizer steps per student optimizer step")
    g.add_argument("--critic-init", choices=("teacher", "keep"), default="teacher",
                   help="each stage's critic: a fresh copy of the teacher, or the previous stage's critic")
    g.add_argument("--shift", type=float, default=None, help="student schedule shift; default: the teacher's")
    g.add_argument("--teacher-cfg", type=float, default=None,
                   help="teacher CFG for the real score, standard form (1 = off); default: the teacher's own")
    g.add_argument("--real-score", choices=("teacher", "previous"), default="teacher",
                   help="score each stage against the teacher, or against the previous stage's student")
    g = p.add_argument_group("losses")
    g.add_argument("--weight", action="append", default=[], metavar="NAME=W[:WARMUP]",
                   help="loss weight and warm-up (generator steps), e.g. temporal=0.2:10; repeatable")
    g.add_argument("--adversarial", action="store_true", help="add the GAN loss to the last stage")
    g.add_argument("--perceptual", action="store_true",
                   help="add the perceptual loss to the last stage (LPIPS if its weights are on disk)")
    g.add_argument("--regression-pool", type=int, default=64, help="clips with cached teacher ODE trajectories")
    g.add_argument("--identity-encoder", default=None,
                   help="identity encoder: the shipped one, or a .safetensors file / local CLIP or DINOv2 folder")
    g = p.add_argument_group("gates")
    g.add_argument("--eval-clips", type=int, default=64, help="held-out clips each gate scores")
    g.add_argument("--video-encoder", default=None,
                   help="encoder of the Fréchet distance: the shipped one, or an I3D .safetensors file")
    g.add_argument("--force", action="store_true", help="continue past a failed gate")
    g = p.add_argument_group("mechanics and scale-out (works under `accelerate launch`)")
    g.add_argument("--batch-size", type=int, default=4, help="per process and micro-batch")
    g.add_argument("--grad-accumulation", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--ema-decay", type=float, default=0.99)
    g.add_argument("--save-every", type=int, default=25, help="student steps between training states")
    g.add_argument("--keep-states", type=int, default=2, help="training states kept per stage")
    g.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--resume", action="store_true", help="continue the run in --run-dir where it stopped")


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

    p = sub.add_parser("distill", help="progressive, gated DMD distillation (50 -> 16 -> 8 -> 4 by default)")
    p.add_argument("--teacher", default=str(SHIPPED_TEACHER))
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR),
                   help="where each stage's student goes (point at ComfyUI/models/pvtt)")
    p.add_argument("--run-dir", default="runs/distill",
                   help="resumable run folder: training states, caches, logs, strips, report")
    p.add_argument("--report-clips", type=int, default=16,
                   help="held-out clips for the final side-by-side report; 0 = skip it")
    _add_progressive_args(p, generator_steps="60,100,150")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("evaluate", help="teacher vs student on held-out clips")
    p.add_argument("--teacher", default=str(SHIPPED_TEACHER))
    p.add_argument("--student", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=16)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="end to end: data, shipped teacher, progressive distillation, report, export")
    p.add_argument("--out", required=True)
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR),
                   help="where the students go; point at ComfyUI/models/pvtt to use them there")
    p.add_argument("--teacher", default=str(SHIPPED_TEACHER))
    p.add_argument("--clips", type=int, default=16)
    _add_progressive_args(p, generator_steps="60,100,150")
    p.set_defaults(func=cmd_demo)

    from .bench_cli import register as register_bench
    from .eval.frechet_cli import register as register_frechet
    from .identity.cli import register as register_identity
    from .models.lora_cli import register as register_lora

    register_identity(sub)
    register_frechet(sub)
    register_lora(sub)
    register_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
