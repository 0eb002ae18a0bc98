"""``python -m pvtt_train bench``: teacher and students × acceleration backends in one run (``bench.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

#: The shipped students, fastest last: the default set the benchmark measures.
SHIPPED_STUDENTS = ("pvtt_student_16step", "pvtt_student_8step", "pvtt_student_4step")
#: Run sizes without --quick (None on the command line means "not given").
DEFAULTS = {"clips": 4, "repeats": 5, "warmup": 2}
#: ``--quick``: the 4-step student, few clips and rounds (about 5 minutes on 2 idle cores, most of it compiling).
QUICK_STUDENTS = ("pvtt_student_4step",)
QUICK = {"clips": 2, "repeats": 3, "warmup": 1}


def check_device(device: str) -> None:
    """Refuse, with the fix, a CUDA device this torch cannot use."""
    import torch

    from .errors import InputError

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: this torch sees no CUDA GPU (torch.cuda.is_available() is False); "
                             f"use --device cpu, or install a CUDA build of torch on a machine with an NVIDIA GPU")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices; use "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")


def cmd_bench(args) -> None:
    import torch

    from .bench import default_variants, quick_variants, run_bench
    from .cli_args import check_model_file
    from .training_extra import require

    require("bench (its bench.png plot)", "matplotlib")
    torch.set_num_threads(args.threads)
    check_device(args.device)
    device = torch.device(args.device)
    for name, value in {**DEFAULTS, **(QUICK if args.quick else {})}.items():
        if getattr(args, name) is None:  # not given on the command line
            setattr(args, name, value)
    variants = quick_variants(device) if args.quick and not args.variants else default_variants(device)
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",")]
        known = {v.name: v for v in variants}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise SystemExit(f"--variants: unknown {', '.join(unknown)}; on {device.type} choose from "
                             f"{', '.join(known)}")
        if wanted[0] != "eager":
            wanted.insert(0, "eager")  # the baseline every speed-up and PSNR is measured against
        variants = tuple(known[w] for w in dict.fromkeys(wanted))
    shipped = QUICK_STUDENTS if args.quick else SHIPPED_STUDENTS
    students = [Path(s) for s in args.students] if args.students else \
        [Path(args.models_dir) / f"{name}.safetensors" for name in shipped]
    missing = [str(p) for p in [Path(args.teacher), *students] if not p.exists()]
    if missing:
        raise SystemExit(f"not found: {', '.join(missing)}. Pass --teacher/--students, or --models-dir "
                         f"pointing at a folder with the students (bash run.sh demo writes them to models/pvtt).")
    check_model_file(args.teacher, "--teacher", "teacher", folder_ok=True)  # or a diffusers Wan-VACE folder
    for student in students:
        check_model_file(student, "--students", "model", folder_ok=True)
    report = run_bench(Path(args.teacher), students, variants, Path(args.out), clips=args.clips,
                       repeats=args.repeats, teacher_repeats=args.teacher_repeats, warmup=args.warmup,
                       seed=args.seed, device=args.device)
    print()
    print((Path(args.out) / "bench.md").read_text())
    print(f"report: {args.out}/bench.json, bench.md, bench.png ({len(report['rows'])} rows)")


def cmd_bench_attention(args) -> None:
    import torch

    from .bench import attention_micro

    torch.set_num_threads(args.threads)
    rows = attention_micro(args.layouts, args.repeats)
    keys = [k for k in rows[0] if k.endswith("_ms")]
    print(f"attention per call, ms ({torch.get_num_threads()} threads)")
    print("| tokens x heads x dim | " + " | ".join(k.removesuffix("_ms") for k in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for r in rows:
        print(f"| {r['tokens']}x{r['heads']}x{r['head_dim']} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` to the ``python -m pvtt_train`` sub-commands."""
    from .cli_args import SEED, attention_layouts, device_name, out_folder, whole
    from .paths import SHIPPED_MODELS, SHIPPED_TEACHER

    p = subparsers.add_parser("bench", help="latency, memory and fidelity of teacher and students × backends")
    p.add_argument("--quick", action="store_true",
                   help="the 4-step student only, with eager, bf16, compile, onnxruntime and auto (CUDA: eager, "
                        "bf16, bf16+compile, auto), 2 clips x 3 rounds, 1 warm-up: about 5 minutes on 2 idle cores. "
                        "--variants, --students, --clips, --repeats and --warmup still override it")
    p.add_argument("--teacher", default=str(SHIPPED_TEACHER),
                   help="the teacher checkpoint (the 'x teacher' column's baseline); default: the shipped one")
    p.add_argument("--students", nargs="*", default=None,
                   help="student checkpoints; default: the shipped three (--quick: the 4-step one)")
    p.add_argument("--models-dir", default=str(SHIPPED_MODELS), help="where the default students are")
    p.add_argument("--variants", default="", help="comma-separated subset (eager is always included); "
                                                  "default: every backend for this device (--quick: the main ones)")
    p.add_argument("--out", default="out/bench", type=out_folder,
                   help="folder for bench.json, bench.md, bench.png and caches")
    p.add_argument("--clips", type=whole(1), default=None,
                   help=f"synthetic clips, sampled one at a time (default {DEFAULTS['clips']}, --quick "
                        f"{QUICK['clips']})")
    p.add_argument("--repeats", type=whole(1), default=None,
                   help=f"timed passes over the clips per student variant, alternating with eager (default "
                        f"{DEFAULTS['repeats']}, --quick {QUICK['repeats']})")
    p.add_argument("--teacher-repeats", type=whole(1), default=1, help="timed passes for the 50-step teacher")
    p.add_argument("--warmup", type=whole(0), default=None,
                   help=f"untimed runs per variant, the first includes compilation (default {DEFAULTS['warmup']}, "
                        f"--quick {QUICK['warmup']})")
    p.add_argument("--seed", type=SEED, default=0, help="noise seed of every sample (the same for every variant)")
    p.add_argument("--device", default="cpu", type=device_name, help="cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser("bench-attention", help="attention kernels alone: SDPA, decomposed, token merging")
    p.add_argument("--layouts", default="576x4x32,2304x12x128,4608x12x128", type=attention_layouts,
                   help="comma-separated TOKENSxHEADSxHEAD_DIM (default: the tiny model, then Wan-1.3B heads)")
    p.add_argument("--repeats", type=whole(1), default=10, help="timed calls per kernel and layout (after one "
                                                                "untimed call)")
    p.set_defaults(func=cmd_bench_attention)
