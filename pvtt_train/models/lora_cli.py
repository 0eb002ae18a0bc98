"""``python -m pvtt_train export-lora``: a student as a LoRA on its teacher (see ``lora.py``)."""

from __future__ import annotations

import argparse


def cmd_export_lora(args) -> None:
    import torch

    from ..cli_args import check_model_file
    from .loading import load_model, source_sha256
    from .lora import extract_lora, save_lora

    check_model_file(args.teacher, "--teacher", "teacher", folder_ok=True)
    check_model_file(args.student, "--student", "student", folder_ok=True)
    torch.set_num_threads(args.threads)
    teacher, student = load_model(args.teacher), load_model(args.student)
    state, report = extract_lora(teacher.model, student.model, args.rank)
    out = save_lora(args.out, state, {
        "rank": args.rank,
        "alpha": args.rank,
        "base": teacher.path.name,
        "base_sha256": source_sha256(teacher.path, length=64),
        "student": student.path.name,
        "student_sha256": source_sha256(student.path, length=64),
        "model": student.metadata["model"],
        "sampler": student.sampler,
        "report": report,
    })
    # Rank by what is lost, not by relative error: layers that barely changed can have a large one.
    worst = sorted(report["layers"].items(), key=lambda kv: -kv[1]["relative_error"] * kv[1]["delta_norm"])[:3]
    print(f"LoRA rank {args.rank} written to {out}: {len(report['layers'])} low-rank layers, "
          f"{len(report['full_deltas'])} full deltas; retained energy {report['retained_energy']:.4f}, "
          f"relative error of the whole delta {report['relative_error']:.4f}")
    print("largest residuals (relative error): " + ", ".join(f"{k} {v['relative_error']:.3f}" for k, v in worst))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export-lora`` to the ``python -m pvtt_train`` sub-commands."""
    from ..cli_args import out_file, whole
    from ..paths import SHIPPED_TEACHER

    p = subparsers.add_parser("export-lora", help="export a student as a LoRA on its teacher (SVD of the delta)")
    p.add_argument("--teacher", default=str(SHIPPED_TEACHER), help="the base model the LoRA applies to")
    p.add_argument("--student", required=True)
    p.add_argument("--rank", type=whole(1), default=16)
    p.add_argument("--out", required=True, type=out_file(), help="the .safetensors LoRA to write")
    p.set_defaults(func=cmd_export_lora)
