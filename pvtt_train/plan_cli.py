"""``python -m pvtt_train plan``: per-GPU memory of a distillation, from the model's config alone (``memory_plan.py``),
and the check ``distill`` runs before it loads any weight."""

from __future__ import annotations

import argparse
import json
import os


def memory_size(text: str) -> int:
    """argparse ``type``: "80GiB", "80GB", "81920MiB" -> bytes."""
    from .memory_plan import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_plan(args) -> None:
    from .distill.config import StageConfig
    from .errors import InputError
    from .memory_plan import Planner, Setup, count_parameters, format_plan, model_spec, trainer_as_built

    if args.strategy == "fsdp" and args.gpus == 1:
        raise InputError("--strategy fsdp with --gpus 1 shards nothing; give the number of GPUs, e.g. --gpus 8")
    spec = model_spec(args.model)
    video = {"frames": args.frames or spec.video["frames"], "height": args.height or spec.video["height"],
             "width": args.width or spec.video["width"]}
    planner = Planner(spec)
    try:
        planner.check_video(**video)
    except ValueError as exc:
        raise InputError(f"--frames/--height/--width: {exc}") from None
    built = trainer_as_built(args.strategy, args.mixed_precision, args.offload)  # what distill builds
    setup = Setup(gpus=args.gpus, gpu_memory=args.gpu_memory, strategy=args.strategy,
                  mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
                  batch_size=args.batch_size, frames=args.frames, height=args.height, width=args.width,
                  teacher=args.teacher or built["teacher"], teacher_half=built["teacher_half"],
                  ema=args.ema or built["ema"], offload=args.offload,
                  regression=not args.no_regression, pixel_losses=not args.no_pixel_losses,
                  perceptual=args.perceptual,
                  guide_parameters=count_parameters(model_spec(args.guide_model)).trainable if args.guide_model else 0,
                  discriminator_inputs=discriminator_inputs([StageConfig(losses=("adversarial",))]) if args.adversarial
                  else 0)
    plan = planner.plan(setup)
    print(json.dumps(plan.to_json(), indent=2) if args.json else format_plan(plan))


def discriminator_inputs(stages) -> int:
    """Clips per sample the adversarial loss's discriminator step sends through the critic: real, fake and, with
    R1 on (the default ``r1_weight``), perturbed real ones; 0 without the loss."""
    return max((2 + (s.r1_weight > 0) for s in stages if "adversarial" in s.losses), default=0)


def distributed_setup(gpu_memory: int | None = None) -> dict:
    """Strategy, process count and per-device memory of this process, as ``accelerate launch`` set them up
    (its environment: ACCELERATE_USE_FSDP, WORLD_SIZE) and as torch sees the device (CUDA memory, or
    the machine's available RAM on CPU)."""
    import psutil
    import torch

    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")
    offload = os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() in ("1", "true", "yes")
    if gpu_memory is None:
        if torch.cuda.is_available():
            gpu_memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        else:
            gpu_memory = psutil.virtual_memory().available
    return {"gpus": int(os.environ.get("WORLD_SIZE", "1")), "strategy": "fsdp" if fsdp else "ddp",
            "offload": offload and fsdp, "gpu_memory": int(gpu_memory)}


def check_distill_memory(teacher: str, stages, run, guide: str | None = None) -> None:
    """Refuse, before any weight is loaded, a distillation whose plan does not fit the devices.

    Plans the trainer as it is built (``memory_plan.trainer_as_built``) at the teacher's clip size, with the
    autoguided teacher's ``guide`` frozen beside it."""
    import torch

    from .distill.config import losses_used
    from .errors import InputError
    from .memory_plan import Planner, Setup, count_parameters, model_spec, refusal, trainer_as_built

    mixed = run.mixed_precision
    if mixed is None:  # accelerate's own setting (its config file or ACCELERATE_MIXED_PRECISION) decides
        mixed = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    losses = losses_used(stages)
    env = distributed_setup()
    built = trainer_as_built(env["strategy"], mixed, env["offload"])
    setup = Setup(**env, mixed_precision=mixed, gradient_checkpointing=run.gradient_checkpointing,
                  batch_size=run.batch_size, regression="regression" in losses,
                  pixel_losses=bool(losses & {"temporal", "identity"}), perceptual="perceptual" in losses,
                  ema="off" if run.ema_decay <= 0 else built["ema"], teacher=built["teacher"],
                  teacher_half=built["teacher_half"], discriminator_inputs=discriminator_inputs(stages),
                  guide_parameters=count_parameters(model_spec(guide)).trainable if guide is not None else 0)
    plan = Planner(model_spec(str(teacher))).plan(setup)
    if not plan.fits:
        device = "GPU" if torch.cuda.is_available() else "CPU (available RAM)"
        raise InputError(f"not enough memory on this {device}: {refusal(plan)}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``plan`` to the ``python -m pvtt_train`` sub-commands."""
    from .cli_args import whole

    p = subparsers.add_parser("plan", help="per-GPU memory of a distillation, from the model config (no weights read)")
    p.add_argument("--model", required=True,
                   help="a Wan-VACE diffusers folder, a PVTT .safetensors file, wan2.1-vace-1.3b or wan2.1-vace-14b")
    p.add_argument("--gpus", type=whole(1), default=1, help="processes (GPUs) in the run")
    p.add_argument("--gpu-memory", type=memory_size, default=memory_size("80GiB"),
                   help="memory of each GPU, e.g. 80GiB, 80GB or 81920MiB")
    p.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp",
                   help="ddp: every GPU holds every copy; fsdp: FULL_SHARD over the GPUs")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="plan distill --gradient-checkpointing: each block keeps only its input for the backward")
    p.add_argument("--mixed-precision", choices=("bf16", "fp16", "no"), default="bf16",
                   help="the run's mixed precision: bf16/fp16 halve the activations and the frozen teacher "
                        "(default %(default)s)")
    p.add_argument("--batch-size", type=whole(1), default=1, help="clips per GPU and micro-batch")
    p.add_argument("--frames", type=whole(1), default=None, help="clip frames; default: the model's (81 for Wan)")
    p.add_argument("--height", type=whole(16), default=None, help="clip height; default: the model's")
    p.add_argument("--width", type=whole(16), default=None, help="clip width; default: the model's")
    p.add_argument("--teacher", choices=("sharded", "replicated", "cpu"), default=None,
                   help="frozen teacher: sharded by FSDP (replicated under DDP), a full copy per GPU, or on CPU; "
                        "default: as distill builds it (sharded under FSDP, in bf16 under mixed precision)")
    p.add_argument("--ema", choices=("sharded", "replicated", "cpu", "off"), default=None,
                   help="the student's EMA copy: sharded by FSDP (replicated under DDP), per GPU, on CPU, or none; "
                        "default: as distill builds it (sharded under FSDP, in host RAM with --offload)")
    p.add_argument("--offload", action="store_true",
                   help="FSDP parameter offload: sharded weights, gradients and AdamW states in host RAM")
    p.add_argument("--guide-model", default=None,
                   help="plan an autoguided teacher (distill --guide-model): its guide, in the forms --model takes, "
                        "is frozen and placed as the teacher is")
    p.add_argument("--no-regression", action="store_true", help="plan without the regression loss's student call")
    p.add_argument("--no-pixel-losses", action="store_true",
                   help="plan without the losses that decode the student's clip with gradients (temporal, identity)")
    p.add_argument("--perceptual", action="store_true",
                   help="plan distill --perceptual: the regression call's clip decoded and re-encoded with gradients")
    p.add_argument("--adversarial", action="store_true",
                   help="plan distill --adversarial: its discriminator head, and the critic run up to the head's block "
                        "on real, fake and perturbed real clips")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of markdown")
    p.set_defaults(func=cmd_plan)
