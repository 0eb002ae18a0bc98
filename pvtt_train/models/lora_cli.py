"""``python -m pvtt_train export-lora``: a student as a LoRA on its teacher (see ``lora.py``), in PVTT's,
ComfyUI's or diffusers' key names (``lora_formats.py``)."""

from __future__ import annotations

import argparse

LORA_FORMATS = ("pvtt", "comfy", "diffusers")


def student_sampling(student) -> dict:
    """What a loader of the LoRA needs to sample the student: its timesteps and shift (ComfyUI's
    PVTT Student Sigmas reads them)."""
    sampler, schedule = student.sampler, student.metadata["schedule"]
    return {"timesteps": list(sampler.get("timesteps", [])), "steps": sampler.get("steps"),
            "shift": schedule["shift"], "num_train_timesteps": schedule.get("num_train_timesteps", 1000)}


def cmd_export_lora(args) -> None:
    import torch

    from ..cli_args import check_model_file
    from ..errors import InputError
    from .loading import load_model, source_sha256
    from .lora import extract_lora, save_lora
    from .lora_formats import convert

    check_model_file(args.teacher, "--teacher", "teacher", folder_ok=True)
    check_model_file(args.student, "--student", "student", folder_ok=True)
    torch.set_num_threads(args.threads)
    teacher, student = load_model(args.teacher), load_model(args.student)
    if args.format != "pvtt" and student.metadata["model"].get("arch") != "wan_vace":
        raise InputError(f"--student {args.student} is PVTT's embedded {student.metadata['model'].get('arch')} "
                         f"model; only Wan-VACE students have ComfyUI and diffusers LoRA forms. Use --format pvtt.")
    state, report = extract_lora(teacher.model, student.model, args.rank)
    tensors, form = convert(state, args.format, args.rank)
    metadata = {
        "rank": args.rank,
        "alpha": args.rank,
        "base": teacher.path.name,
        "base_sha256": source_sha256(teacher.path, length=64),
        "student": student.path.name,
        "student_sha256": source_sha256(student.path, length=64),
        "model": student.metadata["model"],
        "sampler": student.sampler,
        **student_sampling(student),
        "report": report,
        **{k: v for k, v in form.items() if k != "key_format"},
    }
    out = save_lora(args.out, tensors, metadata, **({"key_format": form["key_format"]} if "key_format" in form else {}))
    # Rank by what is lost, not by relative error: layers that barely changed can have a large one.
    worst = sorted(report["layers"].items(), key=lambda kv: -kv[1]["relative_error"] * kv[1]["delta_norm"])[:3]
    print(f"LoRA rank {args.rank} ({args.format} keys) written to {out}: {len(report['layers'])} low-rank layers, "
          f"{len(report['full_deltas'])} full deltas; retained energy {report['retained_energy']:.4f}, "
          f"relative error of the whole delta {report['relative_error']:.4f}")
    print("largest residuals (relative error): " + ", ".join(f"{k} {v['relative_error']:.3f}" for k, v in worst))
    if form.get("dropped"):
        print(f"warning: diffusers' LoRA format cannot hold {len(form['dropped'])} full deltas (norms, modulation "
              f"tables), {100 * form['dropped_share']:.2f}% of the LoRA's squared norm; they are left out. "
              f"--format comfy keeps them.")
    if form.get("comfy_unpatched"):
        print(f"warning: ComfyUI's model patcher does not apply {len(form['comfy_unpatched'])} of these entries "
              f"(the modulation tables, {100 * form['comfy_unpatched_share']:.2f}% of the LoRA's squared norm): in a "
              f"stock KSampler graph they keep the base model's values. PVTT Template Transfer's native_model input "
              f"applies them; for an exact student in a stock graph, export the whole student instead "
              f"(python -m pvtt_train export --format comfy).")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export-lora`` to the ``python -m pvtt_train`` sub-commands."""
    from ..cli_args import out_file, whole
    from ..paths import SHIPPED_TEACHER

    p = subparsers.add_parser("export-lora", help="export a student as a LoRA on its teacher (SVD of the delta)")
    p.add_argument("--teacher", default=str(SHIPPED_TEACHER), help="the base model the LoRA applies to")
    p.add_argument("--student", required=True, help="the distilled student whose difference from --teacher becomes "
                                                    "the LoRA (the forms --teacher takes)")
    p.add_argument("--rank", type=whole(1), default=16,
                   help="LoRA rank: higher keeps more of the student (the printed retained energy), at a larger "
                        "file (default %(default)s)")
    p.add_argument("--out", required=True, type=out_file(), help="the .safetensors LoRA to write")
    p.add_argument("--format", choices=LORA_FORMATS, default="pvtt",
                   help="pvtt: PVTT's own keys; comfy: ComfyUI's (LoraLoaderModelOnly, models/loras); diffusers: "
                        "diffusers' Wan load_lora_weights (Wan-VACE students only for comfy and diffusers)")
    p.set_defaults(func=cmd_export_lora)
