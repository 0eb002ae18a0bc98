"""``python -m pvtt_train <command>``: data, teacher, distill, evaluate, demo, and the encoders and LoRA tools.

Bad input ends the command with ``python -m pvtt_train <command>: error: <what is wrong and how to fix
it>`` on stderr and exit code 2, without a traceback; ``--debug`` (or ``PVTT_DEBUG=1``) shows the
traceback instead. Anything else is a bug and keeps its traceback. Ctrl-C exits with 130; SIGTERM
stops a command as Ctrl-C does and exits with 143 (``stop_signals``): training saves its state first,
and the same hint says how to continue.

Building the parser imports nothing heavy (no torch, diffusers or OpenCV): each command imports what
it needs when it runs, so ``--help`` is fast and quiet.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from . import stop_signals
from .cli_args import (
    AUTOGUIDANCE_WEIGHT,
    CFG,
    DEFAULT_GENERATOR_STEPS,
    DEMO_CRITIC_RATIO,
    DEMO_GENERATOR_STEPS,
    DEMO_LR_STUDENT,
    DEMO_RESIDUAL_GENERATOR_STEPS,
    DEMO_TEACHER_SHIFT,
    DEMO_TRUTH_REGION,
    DEMO_TRUTH_WEIGHT,
    FLOW_SHIFT,
    LEARNING_RATE,
    REAL_SCORE_CFG,
    SEED,
    aspect_range,
    check_encoders,
    check_guide_model,
    check_model_file,
    check_output_folders,
    check_student_targets,
    clip_frames,
    clip_side,
    loss_weight,
    number,
    out_file,
    out_folder,
    region_weights,
    shape_list,
    step_budgets,
    step_path,
    whole,
)
from .data.shapes import DEFAULT_ASPECT, SHAPES
from .data.warp_paste import PASTES
from .distill.config import CRITIC_RATIO, LR_SCALE, UNIFORM_TRUTH  # light (no torch): the stages' own defaults
from .errors import DISK_ERRORS
from .models.paste_residual import PREDICTIONS
from .training_extra import require as require_training_extra

PROG = "python -m pvtt_train"
#: ``DEMO_TRUTH_REGION`` as ``--truth-region`` is written, for the help texts.
DEMO_TRUTH_REGION_FLAG = ",".join(f"{w:g}" for w in DEMO_TRUTH_REGION)
DEBUG_ENV = "PVTT_DEBUG"
#: teacher-eval --calibrate-cfg's output, in --out: the teacher with the calibrated sampler CFG.
CALIBRATED_TEACHER = "teacher_calibrated.safetensors"


# --- commands ------------------------------------------------------------------------------------------------

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
    from .data.synthetic import SyntheticConfig
    from .errors import InputError
    from .train.teacher import TeacherConfig, train_teacher

    if args.specular_scenes > 0 and args.specular == 0:
        raise InputError(f"--specular-scenes {args.specular_scenes:g} shares out a specular light, but --specular is "
                         f"0 (no highlight): add --specular S, e.g. --specular 0.6")
    _threads(args)
    cfg = TeacherConfig(minutes=args.minutes, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                        mask_weight=args.mask_weight, interior_weight=args.interior_weight,
                        input_perturbation=args.input_perturbation, dream=args.dream,
                        rollout_steps=args.rollout_steps, rollout_spacing=args.rollout_spacing,
                        cfg_dropout=args.cfg_dropout, seed=args.seed,
                        sample_cfg=args.sample_cfg, save_every=args.save_every, prediction=args.prediction,
                        data=SyntheticConfig(paste=args.paste, shapes=args.shapes, aspect=args.aspect,
                                             light_slope=args.light_slope, specular=args.specular,
                                             specular_scenes=args.specular_scenes, sheen=args.sheen,
                                             grain=args.grain))
    out = train_teacher(cfg, Path(args.out))
    print(f"teacher written to {out}")


def _weights(items: list[tuple[str, tuple[float, int | None]]]) -> dict[str, tuple[float, int]]:
    """Parsed ``--weight`` values (see ``loss_weight``) over the default weights."""
    from .distill.config import DEFAULT_WEIGHTS

    out = dict(DEFAULT_WEIGHTS)
    for name, (weight, warmup) in items:
        out[name] = (weight, DEFAULT_WEIGHTS[name][1] if warmup is None else warmup)
    return out


def _progressive_from_args(args):
    """The stages and run settings of ``distill``/``demo``, checked (an inconsistency is an InputError)."""
    from dataclasses import replace

    from .distill.config import RunConfig, build_stages, check_config
    from .errors import InputError

    budgets = args.generator_steps
    overrides = {"critic_ratio": args.critic_ratio, "lr_critic": args.lr_critic, "teacher_cfg": args.teacher_cfg,
                 "critic_init": args.critic_init, "minutes": args.minutes, "shift": args.shift,
                 "weights": _weights(args.weight), "truth_region": args.truth_region}
    run = RunConfig(batch_size=args.batch_size, grad_accumulation=args.grad_accumulation, seed=args.seed,
                    grad_clip=args.grad_clip, ema_decay=args.ema_decay, save_every=args.save_every,
                    keep_states=args.keep_states, mixed_precision=args.mixed_precision,
                    gradient_checkpointing=args.gradient_checkpointing, real_score=args.real_score,
                    regression_pool=args.regression_pool, eval_clips=args.eval_clips,
                    identity_encoder=args.identity_encoder, video_encoder=args.video_encoder, force=args.force)
    try:
        stages = build_stages(args.path, budgets if len(budgets) > 1 else budgets[0], lr_scale=args.lr_scale,
                              adversarial=args.adversarial, perceptual=args.perceptual, **overrides)
        if args.lr_student is not None:
            stages = [replace(s, lr_student=args.lr_student) for s in stages]
        check_config(stages, run)
    except ValueError as exc:  # build_stages and check_config refuse settings, with the fix, as ValueError
        raise InputError(f"--path {args.path if isinstance(args.path, str) else ','.join(map(str, args.path))} "
                         f"--generator-steps {','.join(map(str, budgets))}: {exc}") from exc
    return stages, run


def _check_progressive_inputs(args, stages, any_form: bool = False) -> None:
    """Everything a distillation reads, checked before it creates a folder; then the folders and files it writes.
    ``any_form``: the teacher may also be a diffusers or ComfyUI-native Wan-VACE model (``distill``; the
    demo's is PVTT's)."""
    teacher_meta = check_model_file(args.teacher, "--teacher", "teacher", folder_ok=any_form)
    check_guide_model(args.teacher, teacher_meta, args.guide_model, args.guide_weight, folder_ok=any_form)
    check_encoders(args.identity_encoder, args.video_encoder)
    from .run_folder import check_run_folder

    run_dir = Path(args.run_dir) if hasattr(args, "run_dir") else Path(args.out) / "run"  # the demo's
    check_run_folder(run_dir, args.resume, args.overwrite)
    check_output_folders({flag: getattr(args, name) for flag, name in (("--out", "out"), ("--run-dir", "run_dir"),
                                                                        ("--models-dir", "models_dir"))
                          if hasattr(args, name)})
    check_student_targets(args.models_dir, stages)


def _with_teacher_sampling(args, run):
    """``run`` with the teacher's sampling shift and autoguidance weight of ``--teacher-shift``, ``--guide-model``
    and ``--guide-weight`` (``distill/teacher_sampling.py``); returns (run, the guide's path or None)."""
    from dataclasses import replace

    from .sampling.autoguidance import GUIDE_WEIGHT

    guide = Path(args.guide_model) if args.guide_model is not None else None
    return replace(run, teacher_shift=args.teacher_shift,
                   guide_weight=(args.guide_weight or GUIDE_WEIGHT) if guide is not None else args.guide_weight), guide


def cmd_distill(args) -> None:
    _threads(args)
    stages, run = _progressive_from_args(args)
    run, guide = _with_teacher_sampling(args, run)
    _check_progressive_inputs(args, stages, any_form=True)
    if args.report_clips:
        require_training_extra("distill --report-clips (its quality_speed.png plot)", "matplotlib")
    if not args.skip_memory_check:
        from .plan_cli import check_distill_memory

        check_distill_memory(args.teacher, stages, run, args.guide_model)

    from .data.batches import training_data_config
    from .data.dataset import open_data
    from .distill.progressive import make_accelerator, run_progressive
    from .distill.report import sampled_side_by_side, write_report
    from .models.loading import load_model

    run_dir = Path(args.run_dir)
    acc = make_accelerator(run, run_dir)
    result = run_progressive(Path(args.teacher), stages, run, run_dir, Path(args.models_dir), resume=args.resume,
                             accelerator=acc, data=args.data, overwrite=args.overwrite, guide_path=guide)
    if acc.is_main_process:
        for s in result["stages"]:
            print(f"{s['name']}: {s['export']}")
        if args.report_clips:
            teacher = load_model(Path(args.teacher))
            data = open_data(args.data) or training_data_config(teacher)
            report, _, _ = sampled_side_by_side(teacher, result, data, args.report_clips, run, guide)
            write_report(report, run_dir)
            print((run_dir / "report.md").read_text())


def cmd_evaluate(args) -> None:
    check_model_file(args.teacher, "--teacher", "teacher", folder_ok=True)
    check_model_file(args.student, "--student", "student", folder_ok=True)

    from .data.batches import training_data_config
    from .eval.evaluate import evaluate, format_table, save_grid
    from .models.checkpoint import write_atomic
    from .models.loading import load_model

    _threads(args)
    teacher, student = load_model(args.teacher), load_model(args.student)
    report, outputs, batch = evaluate(teacher, student, training_data_config(teacher), count=args.clips)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    save_grid(out / "grid.png", batch, outputs["teacher"].composited, outputs["student"].composited)
    print(format_table(report))


def cmd_teacher_eval(args) -> None:
    from .errors import InputError

    guided = tuple(c for c in args.cfg if c > 1)
    if args.calibrate_cfg and not guided:
        raise InputError(f"--calibrate-cfg picks among guided weights (> 1), but --cfg gives only "
                         f"{' '.join(f'{c:g}' for c in args.cfg)}; add some, e.g. --cfg 1 1.25 1.5 2")
    check_model_file(args.teacher, "--teacher", "teacher")

    from .data.batches import training_data_config
    from .eval.teacher_bar import calibrate_cfg, teacher_bar
    from .models.checkpoint import load_checkpoint, save_checkpoint, write_atomic

    _threads(args)
    teacher = load_checkpoint(args.teacher)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.calibrate_cfg:
        # The teacher given is never rewritten (it may be the shipped one, or a user's only copy): the
        # calibrated sampler goes into a new checkpoint in --out, which distill --teacher then takes.
        cfg = calibrate_cfg(teacher, training_data_config(teacher), guided)
        calibrated = save_checkpoint(out / CALIBRATED_TEACHER, teacher.model,
                                     {**teacher.metadata, "sampler": {**teacher.sampler, "cfg": cfg}})
        teacher = load_checkpoint(calibrated)
        print(f"teacher sampler CFG {cfg:g} (best product PSNR on calibration clips) saved in {calibrated}; "
              f"{args.teacher} is unchanged")
    results = teacher_bar(teacher, training_data_config(teacher), cfgs=tuple(args.cfg), count=args.clips,
                          strip_path=out / "teacher_strip.png")
    write_atomic(out / "teacher_bar.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    print(json.dumps(results, indent=2))


def _demo_defaults(args) -> None:
    """Fill in the demo's teacher and recipe: without ``--teacher``, the shipped paste-residual teacher sampled at flow
    shift 5 and autoguided by its shipped guide, the sampler whose students meet the most of issue 14's bars (README),
    distilled by the ``DEMO_*`` recipe of ``cli_args`` (critic ratio 1, most updates in the 4-step stage, one learning
    rate, the region-weighted ground-truth loss), each part unless its flag is given; a ``--teacher`` of the user's is
    sampled and distilled as its flags say (plainly: ``--lr-scale``'s and ``--critic-ratio``'s defaults, no truth
    loss, at ``DEMO_GENERATOR_STEPS``), as ``distill`` does."""
    from .paths import SHIPPED_RESIDUAL_GUIDE, SHIPPED_RESIDUAL_TEACHER

    recipe = {"generator_steps": step_budgets(DEMO_GENERATOR_STEPS), "critic_ratio": CRITIC_RATIO,
              "truth_region": UNIFORM_TRUTH}
    if args.teacher is None:
        args.teacher = str(SHIPPED_RESIDUAL_TEACHER)
        if args.teacher_shift is None:
            args.teacher_shift = DEMO_TEACHER_SHIFT
        if args.guide_model is None:
            args.guide_model = str(SHIPPED_RESIDUAL_GUIDE)
        if args.lr_scale is None and args.lr_student is None:
            args.lr_student = DEMO_LR_STUDENT
        if all(name != "truth" for name, _ in args.weight):
            args.weight.append(("truth", (DEMO_TRUTH_WEIGHT, None)))
        recipe = {"generator_steps": step_budgets(DEMO_RESIDUAL_GENERATOR_STEPS), "critic_ratio": DEMO_CRITIC_RATIO,
                  "truth_region": DEMO_TRUTH_REGION}
    if args.lr_scale is None:
        args.lr_scale = LR_SCALE
    for name, value in recipe.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def cmd_demo(args) -> None:
    _threads(args)
    _demo_defaults(args)
    stages, run = _progressive_from_args(args)
    run, guide = _with_teacher_sampling(args, run)
    _check_progressive_inputs(args, stages)
    require_training_extra("the demo (its report plot)", "matplotlib")

    from .demo import run_demo

    report = run_demo(Path(args.out), Path(args.models_dir), stages, run, Path(args.teacher), guide_path=guide,
                      clips=args.clips, resume=args.resume, overwrite=args.overwrite, heldout_clips=args.heldout_clips)
    final = report["stages"][-1]
    ok = all(s["gate"]["passed"] for s in report["stages"]) and final["quality_retention"]["min"] >= 0.9
    print("PASS" if ok else "BELOW TARGET", "(every gate passed and the last student's quality_retention.min "
                                            ">= 0.9)")


# --- the parser ---------------------------------------------------------------------------------------------

def _add_progressive_args(p: argparse.ArgumentParser, demo: bool = False) -> None:
    """The stage, loss, gate and mechanics options of ``distill`` and ``demo``; for ``demo`` the recipe's options
    default to None, filled in by ``_demo_defaults`` (they depend on its teacher)."""
    def default(value, shown: str, demo_default_teacher: str):
        """(default, help suffix): ``value``, or for the demo None (``_demo_defaults``) and what its default
        teacher takes."""
        if not demo:
            return value, f" (default {shown})"
        return None, f" (default {shown}; the demo's default teacher: {demo_default_teacher})"

    g = p.add_argument_group("stages")
    g.add_argument("--path", default="default", type=step_path,
                   help="'default' (50->16->8->4), 'gentle' (50->25->12->6->4) or step counts, e.g. 8,4")
    budgets = DEMO_GENERATOR_STEPS if demo else DEFAULT_GENERATOR_STEPS
    value, note = default(budgets, budgets, DEMO_RESIDUAL_GENERATOR_STEPS)
    g.add_argument("--generator-steps", default=value, type=step_budgets,
                   help="student updates per stage: one number, or one per stage" + note)
    g.add_argument("--minutes", type=number(0, meaning=" (0 = no limit)"), default=0.0,
                   help="wall-clock budget per stage; 0 = none")
    value, note = default(LR_SCALE, f"{LR_SCALE:g}", f"--lr-student {DEMO_LR_STUDENT:g}")
    g.add_argument("--lr-scale", type=number(0, low_open=True), default=value,
                   help="multiplies the recipe's student learning rates 1e-4 / 5e-5 / 1e-5 (first/middle/last)" + note)
    g.add_argument("--lr-student", type=LEARNING_RATE, default=None, help="one student learning rate for every stage")
    g.add_argument("--lr-critic", type=LEARNING_RATE, default=1e-4,
                   help="learning rate of the critic (the fake score) in every stage (default %(default)g)")
    value, note = default(CRITIC_RATIO, str(CRITIC_RATIO), str(DEMO_CRITIC_RATIO))
    g.add_argument("--critic-ratio", type=whole(1), default=value,
                   help="critic optimizer steps per student optimizer step" + note)
    g.add_argument("--critic-init", choices=("teacher", "keep"), default="teacher",
                   help="each stage's critic: a fresh copy of the teacher, or the previous stage's critic")
    g.add_argument("--shift", type=number(0, low_open=True), default=None,
                   help="student schedule shift; default: the teacher's")
    g.add_argument("--teacher-cfg", type=REAL_SCORE_CFG, default=None,
                   help="teacher CFG for the real score and the regression targets, standard form (1 = off, "
                        "below 1 = towards the unconditional branch); default: the teacher's own")
    g.add_argument("--real-score", choices=("teacher", "previous"), default="teacher",
                   help="score each stage against the teacher, or against the previous stage's student")
    g = p.add_argument_group("losses")
    g.add_argument("--weight", action="append", default=[], metavar="NAME=W[:WARMUP]", type=loss_weight,
                   help="loss weight and warm-up (generator steps), e.g. temporal=0.2:10; repeatable")
    value, note = default(UNIFORM_TRUTH, "1,0: every pixel alike", DEMO_TRUTH_REGION_FLAG)
    g.add_argument("--truth-region", type=region_weights, default=value, metavar="MASK,INTERIOR",
                   help="pixel weights of --weight truth's MSE: MASK in the edit region and INTERIOR added at its "
                        "interior, as the teacher command's --mask-weight and --interior-weight; 4,36 is the shipped "
                        "paste-residual teacher's own" + note)
    g.add_argument("--adversarial", action="store_true", help="add the GAN loss to the last stage")
    g.add_argument("--perceptual", action="store_true",
                   help="add the perceptual loss to the last stage (LPIPS if its weights are on disk)")
    g.add_argument("--regression-pool", type=whole(1), default=64, help="clips with cached teacher ODE trajectories")
    g.add_argument("--identity-encoder", default=None,
                   help="identity encoder: the shipped one, or a .safetensors file / local CLIP or DINOv2 folder")
    g = p.add_argument_group("gates")
    g.add_argument("--eval-clips", type=whole(2, " (a Fréchet distance needs a covariance)"), default=64,
                   help="held-out clips each gate scores")
    g.add_argument("--video-encoder", default=None,
                   help="encoder of the Fréchet distance: the shipped one, or an I3D .safetensors file")
    g.add_argument("--force", action="store_true", help="continue past a failed gate")
    g = p.add_argument_group("mechanics and scale-out (works under `accelerate launch`)")
    g.add_argument("--batch-size", type=whole(1), default=4, help="per process and micro-batch")
    g.add_argument("--grad-accumulation", type=whole(1), default=1, help="micro-batches per optimizer step")
    g.add_argument("--seed", type=SEED, default=0,
                   help="seed of the training noise and data stream, the regression pool's clips and the gates' "
                        "sampling noise (the gate clips stay the same)")
    g.add_argument("--grad-clip", type=number(0, low_open=True), default=1.0,
                   help="student gradients are clipped to this global norm (default %(default)g)")
    g.add_argument("--ema-decay", type=number(0, 1, high_open=True), default=0.99,
                   help="decay of the student's EMA copy, which is what each stage exports; 0 = no EMA, the last "
                        "weights (default %(default)g)")
    g.add_argument("--save-every", type=whole(1), default=25, help="student steps between training states")
    g.add_argument("--keep-states", type=whole(1), default=2, help="training states kept per stage")
    g.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                   help="default: accelerate's setting (its config file under `accelerate launch`, or "
                        "ACCELERATE_MIXED_PRECISION; 'no' without either)")
    g.add_argument("--skip-memory-check", action="store_true",
                   help="run even when `plan` says the configuration does not fit the devices")
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each transformer block in the backward pass instead of keeping its activations: "
                        "less memory (see `plan`), more time")
    g.add_argument("--resume", action="store_true", help="continue the run in --run-dir where it stopped")
    g.add_argument("--overwrite", action="store_true",
                   help="delete the run saved in the run folder and start again (only a folder PVTT created)")


def _add_teacher_sampling_args(p: argparse.ArgumentParser) -> None:
    """How ``distill`` and ``demo`` sample the teacher (``distill/teacher_sampling.py``)."""
    g = p.add_argument_group("teacher sampling (what the students learn to draw)")
    g.add_argument("--teacher-shift", default=None, type=FLOW_SHIFT,
                   help="sample the teacher at this flow shift for the regression targets, the gates and the report "
                        "(s' = shift s / (1 + (shift - 1) s)); default: its schedule's. The students keep --shift")
    g.add_argument("--guide-model", default=None,
                   help="autoguide the teacher by this weaker copy of itself (its own command with a lower "
                        "--max-steps): the real score, the regression targets and the gates' reference all become "
                        "v_guide + w (v_teacher - v_guide), 2 calls where there was 1")
    g.add_argument("--guide-weight", default=None, type=AUTOGUIDANCE_WEIGHT,
                   help="autoguidance's weight w (default 2 with --guide-model)")


def build_parser() -> argparse.ArgumentParser:
    from .paths import DEFAULT_MODELS_DIR, SHIPPED_TEACHER

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=whole(1), default=2, help="torch CPU threads")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="export synthetic template-transfer examples as MP4 + PNG")
    p.add_argument("--out", required=True, type=out_folder, help="folder for the examples, one sub-folder each")
    p.add_argument("--count", type=whole(1), default=8, help="examples to write")
    p.add_argument("--first-seed", type=SEED, default=0,
                   help="seed of the first example; the others follow (within the held-out range with --heldout)")
    p.add_argument("--heldout", action="store_true", help="use the held-out seed range")
    p.add_argument("--frames", type=clip_frames, default=9, help="frames per clip")
    p.add_argument("--height", type=clip_side, default=16, help="even, >= 10")
    p.add_argument("--width", type=clip_side, default=16, help="even, >= 10")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("teacher", help="train the tiny flow-matching teacher")
    p.add_argument("--out", default=str(SHIPPED_TEACHER), type=out_file(),
                   help="the teacher .safetensors to write (default: the shipped teacher's path)")
    p.add_argument("--minutes", type=number(0, low_open=True, meaning=" (the training budget)"), default=29.0,
                   help="wall-clock training budget (default %(default)g); training stops at this or --max-steps")
    p.add_argument("--max-steps", type=whole(0, " (0 = limited by --minutes only)"), default=4600,
                   help="optimizer steps; 0 = limited by --minutes only (default %(default)s)")
    p.add_argument("--batch-size", type=whole(1), default=8, help="clips per optimizer step")
    p.add_argument("--lr", type=LEARNING_RATE, default=1e-3, help="AdamW learning rate (default %(default)g)")
    p.add_argument("--mask-weight", type=number(0), default=4.0,
                   help="how many times more the loss weighs the product region than the background "
                        "(default %(default)g)")
    p.add_argument("--interior-weight", type=number(0), default=0.0,
                   help="extra loss weight at the mask's interior pixels (all 8 neighbours in the mask), the "
                        "only ones whose correction the pipeline keeps at a designer's size (default: 0)")
    p.add_argument("--input-perturbation", type=number(0), default=0.0,
                   help="extra noise on the network's input that its target does not have (Ning et al. 2023; "
                        "0.1 in the paper), so the teacher learns to correct a sampler's own drift (default: 0)")
    p.add_argument("--dream", type=number(0), default=0.0, metavar="P",
                   help="DREAM (Zhou et al. 2024): train on the input moved towards the model's own clean estimate "
                        "by sigma**P of the way, as a sampler's own steps leave it, at one extra forward pass per "
                        "step (1 in the paper; default: 0, off)")
    p.add_argument("--rollout-steps", type=whole(0), default=0, metavar="K",
                   help="train on where K of the model's own Euler steps take the truth noised --rollout-spacing "
                        "per step higher, its clean target unchanged: the inputs a sampler's own steps make, at K "
                        "extra forward passes per step (default: 0, off)")
    p.add_argument("--rollout-spacing", type=number(0, 1, low_open=True), default=0.04,
                   help="sigma covered by each --rollout-steps step (default: 0.04, two of a 50-step sampler's)")
    p.add_argument("--cfg-dropout", type=number(0, 1, high_open=True), default=0.1,
                   help="share of training samples whose product reference is dropped, which trains the "
                        "unconditional branch classifier-free guidance needs (default %(default)g)")
    p.add_argument("--sample-cfg", type=CFG, default=1.0, help="CFG the checkpoint's sampler uses")
    p.add_argument("--save-every", type=whole(0, " (0 = save only at the end)"), default=250,
                   help="optimizer steps between resumable checkpoints; 0 = save only at the end")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the weights' initialisation and the training data")
    p.add_argument("--prediction", choices=PREDICTIONS, default="velocity",
                   help="what the network predicts: the flow velocity, or the clean clip's correction of the "
                        "aligned paste composite (paste_residual; it starts as the paste itself), or that "
                        "correction with EDM's skip around the paste, which keeps the noisy input near clean "
                        "(paste_residual_edm)")
    p.add_argument("--paste", choices=PASTES, default="aligned_paste",
                   help="the training paste: fitted at the working size, or warped at the supersampled size and "
                        "shrunk as the pipeline does for a full-size clip (supersampled_warp)")
    p.add_argument("--shapes", type=shape_list, default=SHAPES,
                   help="training product silhouettes, separated by commas; circles, squares and diamonds have no "
                        "orientation their mask shows, so a warped photo's pattern cannot be aligned to them "
                        "(default: all)")
    p.add_argument("--aspect", type=aspect_range, default=DEFAULT_ASPECT, metavar="MIN,MAX",
                   help="width / height range of ellipses and rounded rectangles (default: %s)"
                        % ",".join(f"{a:g}" for a in DEFAULT_ASPECT))
    p.add_argument("--light-slope", type=number(0, 2, high_open=True), default=0.0,
                   help="strength of a fixed directional light gradient across each training clip, which one "
                        "gain per frame cannot express (default: 0, none)")
    p.add_argument("--specular", type=number(0, 1), default=0.0,
                   help="peak strength of a specular highlight on the new product, at a random place per clip "
                        "that the product photo does not show, so sampling must draw it (default: 0, none)")
    p.add_argument("--specular-scenes", type=number(0, 1), default=0.0,
                   help="share of clips whose scene has the --specular light, shown on the template's old product "
                        "too; the other clips have no highlight at all, so the model learns to draw one only where "
                        "the template shows the light (default: 0, a highlight on every new product and none on "
                        "the template)")
    p.add_argument("--sheen", type=number(0, 1, high_open=True), default=0.0,
                   help="strength of a sheen on the new product: one side brighter, the other darker, along a random "
                        "direction per clip that the product photo does not show, so sampling must draw it "
                        "(default: 0, none)")
    p.add_argument("--grain", type=number(0, 0.5, high_open=True), default=0.0,
                   help="strength of a fine grain on the new product, about a pixel across, different per clip and "
                        "fixed on the product, that the product photo does not show: detail only the last, low-noise "
                        "steps of a sampler draw (default: 0, none)")
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("teacher-eval", help="teacher samples vs ground truth on held-out clips (the teacher bar)")
    p.add_argument("--teacher", default=str(SHIPPED_TEACHER), help="the teacher to score (default: the shipped one)")
    p.add_argument("--out", required=True, type=out_folder, help="folder for the report and sample grids")
    p.add_argument("--clips", type=whole(1), default=16, help="held-out clips to score")
    p.add_argument("--cfg", type=CFG, nargs="+", default=[1.0, 1.25, 1.5, 2.0], help="CFG weights to try")
    p.add_argument("--calibrate-cfg", action="store_true",
                   help=f"save a copy of the teacher whose sampler uses the best guided weight (> 1) on "
                        f"calibration clips as OUT/{CALIBRATED_TEACHER}; the teacher given is never changed")
    p.set_defaults(func=cmd_teacher_eval)

    p = sub.add_parser("distill", help="progressive, gated DMD distillation (50 -> 16 -> 8 -> 4 by default)")
    p.add_argument("--teacher", default=str(SHIPPED_TEACHER),
                   help="the teacher to distil: a PVTT .safetensors, a diffusers Wan2.1-VACE folder or a "
                        "ComfyUI-native Wan2.1-VACE file (default: the shipped velocity teacher)")
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR), type=out_folder,
                   help="where each stage's student goes (point at ComfyUI/models/pvtt)")
    p.add_argument("--run-dir", default="runs/distill", type=out_folder,
                   help="resumable run folder: training states, caches, logs, strips, report")
    p.add_argument("--report-clips", type=whole(0, " (0 = skip the report)"), default=16,
                   help="held-out clips for the final side-by-side report; 0 = skip it")
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (the teacher's generator) or a dataset folder written by prepare-data")
    _add_progressive_args(p)
    _add_teacher_sampling_args(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("evaluate", help="teacher vs student on held-out clips")
    p.add_argument("--teacher", default=str(SHIPPED_TEACHER), help="the teacher (default: the shipped one)")
    p.add_argument("--student", required=True, help="the student to compare with it")
    p.add_argument("--out", required=True, type=out_folder, help="folder for the report and the side-by-side grid")
    p.add_argument("--clips", type=whole(1), default=16, help="held-out clips to score")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="end to end: data, shipped teacher, progressive distillation, report, export")
    p.add_argument("--out", required=True, type=out_folder,
                   help="folder for the demo's data, run folder, report, grids and held-out evaluation")
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR), type=out_folder,
                   help="where the students go; point at ComfyUI/models/pvtt to use them there")
    p.add_argument("--teacher", default=None,
                   help=f"default: the shipped paste-residual teacher, sampled at flow shift 5 and autoguided by its "
                        f"shipped guide, distilled with --generator-steps {DEMO_RESIDUAL_GENERATOR_STEPS} "
                        f"--critic-ratio {DEMO_CRITIC_RATIO} --lr-student {DEMO_LR_STUDENT:g} --weight "
                        f"truth={DEMO_TRUTH_WEIGHT:g} --truth-region {DEMO_TRUTH_REGION_FLAG} "
                        f"(each unless its flag says otherwise); a teacher you name is sampled and distilled as the "
                        f"flags say, plainly by default, with --generator-steps {DEMO_GENERATOR_STEPS} "
                        f"(models_shipped/pvtt_teacher.safetensors --generator-steps 30,80,130 reproduces the shipped "
                        f"velocity students)")
    p.add_argument("--clips", type=whole(1), default=16, help="held-out clips of the final side-by-side report")
    p.add_argument("--heldout-clips", type=whole(0, " (0 = skip the held-out evaluation)"), default=4,
                   help="clips of the independent held-out generator (256x256, 33 frames) run through the nodes "
                        "for out/heldout/ (the README's held-out table uses 4)")
    _add_progressive_args(p, demo=True)
    _add_teacher_sampling_args(p)
    p.set_defaults(func=cmd_demo)

    from .bench_cli import register as register_bench
    from .data.prepare_cli import register as register_prepare_data
    from .eval.frechet_cli import register as register_frechet
    from .gpu_check import register as register_gpu_check
    from .heldout_cli import register as register_heldout
    from .identity.cli import register as register_identity
    from .models.export_cli import register as register_export
    from .models.lora_cli import register as register_lora
    from .plan_cli import register as register_plan
    from .sample_cli import register as register_sample
    from .sampler_eval_cli import register as register_sampler_eval

    register_identity(sub)
    register_frechet(sub)
    register_lora(sub)
    register_bench(sub)
    register_prepare_data(sub)
    register_sample(sub)
    register_export(sub)
    register_plan(sub)
    register_gpu_check(sub)
    register_heldout(sub)
    register_sampler_eval(sub)
    return parser


# --- running a command: user errors end cleanly, bugs keep their traceback ----------------------------------

#: What to tell a user who pressed Ctrl-C, per command (default: INTERRUPTED).
INTERRUPT_HINTS = {
    "distill": "run the same command with --resume to continue from the last training state",
    "demo": "run the same command with --resume to continue from the last training state",
    "data": "run the same command again: finished examples are kept and only the rest are written",
    "teacher": "the teacher cannot resume; --out holds the checkpoint of the last --save-every step, if any",
}
INTERRUPTED = "nothing was finished; run the command again"
#: OSErrors that are the machine's state, not a bug: a full disk, quota or file-size limit, a read-only disk.
USER_ERRNOS = {*DISK_ERRORS, errno.EROFS}


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is meant for the user (it says what is wrong and how to fix it)."""
    from .errors import CheckpointError, InputError

    types: list[type[BaseException]] = [InputError, CheckpointError, FileNotFoundError, NotADirectoryError,
                                        IsADirectoryError, PermissionError, FileExistsError]
    # Optional or heavy modules: if one was never imported, none of its errors can have been raised.
    for module, name in (("pvtt_accel.optional", "MissingPackage"), ("pvtt_train.data.export", "ExportError"),
                         ("pvtt_train.training_extra", "MissingTrainingPackage")):
        if module in sys.modules:
            types.append(getattr(sys.modules[module], name))
    return tuple(types)


def _is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, user_error_types()) or (isinstance(exc, OSError) and exc.errno in USER_ERRNOS)


def _message(exc: BaseException) -> str:
    """The user-facing text of ``exc``: an OSError without its ``[Errno N]`` prefix."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return str(exc)


def _is_gate_failure(exc: BaseException) -> bool:
    gates = sys.modules.get("pvtt_train.distill.gates")
    return gates is not None and isinstance(exc, gates.GateFailed)


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error exits 2 (a failed gate 1, Ctrl-C 130, SIGTERM 143) with a one-line message."""
    args = build_parser().parse_args(argv)
    command = f"{PROG} {args.command}"
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        with stop_signals.handled():
            args.func(args)
    except KeyboardInterrupt as exc:
        if debug:
            raise
        stopped = "terminated (SIGTERM)" if isinstance(exc, stop_signals.Terminated) else "interrupted"
        print(f"\n{command}: {stopped}; {INTERRUPT_HINTS.get(args.command, INTERRUPTED)}", file=sys.stderr)
        raise SystemExit(stop_signals.exit_code(exc)) from None
    except SystemExit as exc:
        if debug or not isinstance(exc.code, str):  # raise SystemExit("message") is a user error too
            raise
        print(f"{command}: error: {exc.code}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as exc:
        gate_failed = _is_gate_failure(exc)
        if debug or not (gate_failed or _is_user_error(exc)):
            raise
        print(f"{command}: error: {_message(exc)}", file=sys.stderr)
        raise SystemExit(1 if gate_failed else 2) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
