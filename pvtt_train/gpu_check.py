"""``python -m pvtt_train gpu-check``: time and peak memory of the real Wan2.1-VACE-1.3B on this GPU.

Builds the published 1.3B configuration with random weights (nothing is downloaded) and measures

- a 4-step sample at the native 81 x 480 x 832 clip in bf16, with SDPA restricted to the flash
  kernel, to the math kernel, and with the transformer under ``torch.compile``;
- one DMD generator + critic step with the student, critic and teacher transformers sharded by
  FSDP2 (``fully_shard`` per block, bf16 parameters, fp32 reductions) and gradient checkpointing,

and writes both, next to ``plan``'s estimate for the same step, to ``gpu_check.json`` and
``gpu_check.md``. A variant that fails (out of memory, no compiler) is reported with its error.

``--config tiny --device cpu`` runs exactly the same code on a tiny random model on the CPU (with a
one-process gloo group), for developers and the tests; its numbers say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import time
from pathlib import Path

#: The developer's tiny configuration: the tests' tiny Wan-VACE layout (VAE 4x, z_dim 4, 2 layers of width 32).
TINY = {
    "config": {
        "arch": "wan_vace", "context_tokens": 4,
        "transformer": {"patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 4,
                        "out_channels": 4, "text_dim": 32, "freq_dim": 32, "ffn_dim": 64, "num_layers": 2,
                        "rope_max_seq_len": 32, "vace_layers": [0], "vace_in_channels": 24},
        "vae": {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 4], "num_res_blocks": 1,
                "temperal_downsample": [True, True], "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4},
    },
    "video": {"frames": 5, "height": 16, "width": 16},
}
CONFIGS = ("wan2.1-vace-1.3b", "tiny")
VARIANTS = ("flash", "math", "compile")
STEPS = 4
TEACHER_CFG = 5.0  # WanVACEPipeline's default guidance: the real score makes two teacher calls
NO_GPU = "gpu-check needs an NVIDIA GPU; this machine has none (torch.cuda.is_available() is False)"


def check_device(device: str, config: str) -> None:
    """Refuse, with the fix, a device this run cannot use."""
    import torch

    from .errors import InputError

    if device == "cpu" and config != "tiny":
        raise InputError(f"--device cpu runs only --config tiny (the {config} model on a CPU would take hours and "
                         f"measure nothing useful); run on a CUDA machine, or add --config tiny for a dry run")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"{NO_GPU}. Run it on a CUDA machine; `--config tiny --device cpu` dry-runs the code path.")


def model_setup(config: str) -> tuple[dict, dict]:
    """(PVTT model config, clip) of a ``--config`` name."""
    if config == "tiny":
        return json.loads(json.dumps(TINY["config"])), dict(TINY["video"])
    from .models.wan_configs import NATIVE_VIDEO, named_config

    model = named_config(config)
    model.pop("text_encoder")
    return model, dict(NATIVE_VIDEO)


def build(config: dict, device, dtype):
    """The PVTT model with random weights, created directly on ``device`` (no CPU copy of 1.3B weights)."""
    import torch

    from .models.pvtt_model import build_model

    with torch.device(device):
        model = build_model(config)
    return model.to(dtype)


def designer_inputs(video: dict, device, seed: int = 0):
    """Random template [1,F,H,W,3], a centred box mask [1,F,H,W] and a product photo [1,H/2,W/2,3]."""
    import torch

    g = torch.Generator().manual_seed(seed)
    f, h, w = video["frames"], video["height"], video["width"]
    template = torch.rand(1, f, h, w, 3, generator=g)
    mask = torch.zeros(1, f, h, w)
    mask[:, :, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
    reference = torch.rand(1, h // 2, w // 2, 3, generator=g)
    return template.to(device), mask.to(device), reference.to(device)


class Meter:
    """Wall time and peak allocated memory of a block (memory on CUDA only)."""

    def __init__(self, device):
        import torch

        self.cuda = torch.device(device).type == "cuda"
        self.seconds, self.peak = 0.0, None

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        self.seconds = time.perf_counter() - self.start
        return False


def _sdpa_backend(variant: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH if variant == "math" else SDPBackend.FLASH_ATTENTION])


def measure_sampling(config: dict, video: dict, device: str, variants, repeats: int, warmup: int = 1) -> list[dict]:
    """A 4-step sample (conditioning, denoising, decoding) per variant, after ``warmup`` untimed runs."""
    import torch

    from .models.schedule import FlowSchedule, uniform_timesteps
    from .sampling.samplers import sample_student

    model = build(config, device, torch.bfloat16).eval().requires_grad_(False)
    schedule = FlowSchedule(shift=3.0)
    sigmas = schedule.student_sigmas(uniform_timesteps(STEPS))
    inputs = designer_inputs(video, device)
    eager = model.transformer
    rows = []
    for variant in variants:
        row = {"variant": variant, "steps": STEPS, **video}
        try:
            model.transformer = torch.compile(eager) if variant == "compile" else eager
            with torch.no_grad(), _sdpa_backend(variant):
                def run(model=model):
                    cond = model.condition(*inputs)
                    return model.decode(sample_student(model, cond, schedule, sigmas,
                                                       torch.Generator(device).manual_seed(0)))

                for _ in range(warmup):  # kernels, and for compile the compilation itself
                    run()
                times = []
                for _ in range(repeats):
                    with Meter(device) as meter:
                        out = run()
                    times.append(meter.seconds)
            row.update(seconds=min(times), peak_bytes=meter.peak, finite=bool(torch.isfinite(out).all()))
        except Exception as exc:  # a variant that cannot run here (OOM, no compiler) is a result, not a crash
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        finally:
            model.transformer = eager
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    del model
    return rows


def _process_group(device: str):
    """A one-process group (nccl on CUDA, gloo on CPU) and its device mesh, unless one exists."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    kind = "cuda" if device.startswith("cuda") else "cpu"
    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                world_size=1, rank=0)
    return init_device_mesh(kind, (dist.get_world_size(),))


def shard_transformer(model, mesh, checkpointing: bool) -> None:
    """FSDP2 on the model's transformer: each block a unit, then the root; bf16 compute, fp32 reductions."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    transformer = model.transformer
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    for block in [*transformer.blocks, *getattr(transformer, "vace_blocks", [])]:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(transformer, mesh=mesh, mp_policy=policy)


def measure_dmd_step(config: dict, video: dict, device: str, warmup: int = 1) -> dict:
    """One generator step (DMD loss, exit at the last step) and one critic step, after ``warmup`` such pairs."""
    import torch

    from .distill.dmd import critic_loss, dmd_loss
    from .models.schedule import FlowSchedule, uniform_timesteps
    from .sampling.samplers import student_rollout

    mesh = _process_group(device)
    teacher = build(config, device, torch.bfloat16).eval().requires_grad_(False)
    student = build(config, device, torch.float32).train()
    critic = build(config, device, torch.float32).train()
    for model in (student, critic):
        model.vae.requires_grad_(False)
    for model in (teacher, student, critic):
        shard_transformer(model, mesh, checkpointing=model is not teacher)
    trainable = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    opt_g = torch.optim.AdamW(trainable(student), lr=1e-6)
    opt_c = torch.optim.AdamW(trainable(critic), lr=1e-6, betas=(0.0, 0.999))
    schedule = FlowSchedule(shift=3.0)
    sigmas = schedule.student_sigmas(uniform_timesteps(STEPS))
    with torch.no_grad():
        cond = teacher.condition(*designer_inputs(video, device))
    gen = torch.Generator().manual_seed(0)

    def step() -> tuple[float, float]:
        x0 = student_rollout(student, cond, schedule, sigmas, len(sigmas) - 1, gen, grad_at_exit=True)
        loss_g = dmd_loss(x0, cond, teacher, critic, schedule, TEACHER_CFG, gen).loss
        loss_g.backward()
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        loss_c = critic_loss(critic, x0.detach(), cond, schedule, gen)
        loss_c.backward()
        opt_c.step()
        opt_c.zero_grad(set_to_none=True)
        return loss_g.item(), loss_c.item()

    for _ in range(warmup):
        step()
    with Meter(device) as meter:
        losses = step()
    return {"seconds": meter.seconds, "peak_bytes": meter.peak, "loss_generator": losses[0],
            "loss_critic": losses[1], "finite": all(math.isfinite(v) for v in losses),
            "processes": mesh.size()}


def planned_step(config_name: str, config: dict, video: dict, gpu_memory: int) -> dict:
    """``plan``'s estimate of the measured step: FSDP over the processes, teacher sharded in bf16,
    gradient checkpointing, no EMA, one student graph, no pixel-space losses."""
    from .memory_plan import ModelSpec, Planner, Setup, gib

    planner = Planner(ModelSpec(config_name, config, video))
    plan = planner.plan(Setup(gpus=1, gpu_memory=gpu_memory, strategy="fsdp", mixed_precision="bf16",
                              gradient_checkpointing=True, batch_size=1, teacher="sharded", ema="off",
                              regression=False, pixel_losses=False), alternatives=False)
    return {"total_bytes": plan.total, "total_gib": round(gib(plan.total), 2),
            "gpu": {k: round(gib(v), 3) for k, v in plan.gpu.items()}}


def device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()})"


def format_report(report: dict) -> str:
    mib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f} GiB"  # noqa: E731
    v = report["video"]
    lines = [f"# gpu-check: {report['config']} on {report['device_name']}", "",
             f"torch {report['torch']}, diffusers {report['diffusers']}; random weights; clip {v['frames']} x "
             f"{v['height']} x {v['width']}; {report['created']}.", "",
             f"## {STEPS}-step sample, bf16", "", "| variant | seconds | peak memory | note |", "|---|---:|---:|---|"]
    for r in report["sampling"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | - | - | failed: {r['error']} |")
        else:
            lines.append(f"| {r['variant']} | {r['seconds']:.2f} | {mib(r['peak_bytes'])} | "
                         f"{'' if r['finite'] else 'non-finite output'} |")
    step = report["dmd_step"]
    lines += ["", "## One DMD generator + critic step (FSDP2, gradient checkpointing, bf16)", "",
              "| | seconds | peak memory |", "|---|---:|---:|"]
    if "error" in step:
        lines.append(f"| measured | - | failed: {step['error']} |")
    else:
        lines.append(f"| measured ({step['processes']} process) | {step['seconds']:.2f} | {mib(step['peak_bytes'])} |")
    lines.append(f"| `plan` estimate | | {report['plan']['total_gib']:.2f} GiB |")
    lines += ["", "The plan's estimate includes its fixed allowance (CUDA context, allocator slack), which "
              "`max_memory_allocated` does not see."]
    return "\n".join(lines) + "\n"


def run_gpu_check(out: Path, config_name: str = "wan2.1-vace-1.3b", device: str = "cuda",
                  variants=VARIANTS, repeats: int = 1, frames: int | None = None, warmup: int = 1) -> dict:
    import datetime

    import diffusers
    import torch

    from .models.checkpoint import write_atomic

    config, video = model_setup(config_name)
    if frames is not None:
        video["frames"] = frames
    report = {"config": config_name, "device": device, "device_name": device_name(device), "video": video,
              "warmup": warmup,
              "torch": torch.__version__, "diffusers": diffusers.__version__,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    report["sampling"] = measure_sampling(config, video, device, variants, repeats, warmup)
    try:
        report["dmd_step"] = measure_dmd_step(config, video, device, warmup)
    except Exception as exc:  # reported next to the plan rather than lost
        report["dmd_step"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
    memory = torch.cuda.get_device_properties(torch.device(device)).total_memory if device.startswith("cuda") \
        else 80 * 2**30
    report["plan"] = planned_step(config_name, config, video, memory)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "gpu_check.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    write_atomic(out / "gpu_check.md", lambda tmp: Path(tmp).write_text(format_report(report)))
    return report


def variant_list(text: str) -> tuple[str, ...]:
    wanted = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in wanted if v not in VARIANTS]
    if not wanted or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: choose variants from {', '.join(VARIANTS)}, comma-separated")
    return wanted


def cmd_gpu_check(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    check_device(args.device, args.config)
    report = run_gpu_check(Path(args.out), args.config, args.device, args.variants, args.repeats, args.frames,
                           args.warmup)
    print(format_report(report))
    print(f"written: {args.out}/gpu_check.json, gpu_check.md")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``gpu-check`` to the ``python -m pvtt_train`` sub-commands."""
    from .cli_args import clip_frames, device_name as device_arg, out_folder, whole

    p = subparsers.add_parser("gpu-check", help="time and peak memory of Wan2.1-VACE-1.3B (random weights) on a GPU")
    p.add_argument("--out", required=True, type=out_folder, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--config", choices=CONFIGS, default="wan2.1-vace-1.3b",
                   help="the model; 'tiny' is a developer dry run of the same code")
    p.add_argument("--device", default="cuda", type=device_arg, help="cuda or cuda:N (cpu only with --config tiny)")
    p.add_argument("--variants", default=",".join(VARIANTS), type=variant_list,
                   help="sampling variants: flash, math (SDPA kernels) and compile (torch.compile, flash)")
    p.add_argument("--repeats", type=whole(1), default=1, help="timed samples per variant (the fastest is kept)")
    p.add_argument("--warmup", type=whole(0), default=1,
                   help="untimed runs before each measurement (the first includes compilation)")
    p.add_argument("--frames", type=clip_frames, default=None, help="clip frames (1 + 4k); default: the config's")
    p.set_defaults(func=cmd_gpu_check)
