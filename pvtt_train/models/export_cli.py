"""``python -m pvtt_train export``: any model form into any other (PVTT file, ComfyUI-native file, diffusers folder).

- ``--format pvtt``: one self-describing PVTT ``.safetensors`` (``loading.export_single_file``);
- ``--format comfy``: the transformer as a ComfyUI-native diffusion model (original Wan key names,
  no prefix, for ``models/diffusion_models`` and UNETLoader), with PVTT's metadata and context
  embedding riding along where ComfyUI ignores them; ``--vae-out`` also writes the VAE as a native
  file for ``models/vae``;
- ``--format diffusers``: a folder in the published Wan2.1-VACE layout (``model_index.json``,
  ``transformer/``, ``vae/``, ``scheduler/``), plus ``pvtt.json`` and ``prompt_embeds.safetensors`` so
  the video size, sampler and context come back on loading.

Every write is atomic (a file via ``write_atomic``; a folder is written under a temp name beside the
target, then renamed), and nothing existing is overwritten by a folder export.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

FORMATS = ("pvtt", "comfy", "diffusers")
DTYPES = ("float32", "bfloat16", "float16")


def export_comfy(loaded, out: Path, vae_out: Path | None = None) -> list[Path]:
    """The transformer as a ComfyUI-native file (+ the VAE as one, with ``vae_out``)."""
    from safetensors.torch import save_file

    from . import native_wan
    from .checkpoint import write_atomic

    model = loaded.model
    tensors = native_wan.transformer_tensors(model.transformer)
    tensors[native_wan.CONTEXT_KEY] = model.context.detach()
    metadata = {**loaded.metadata, "model": model.config()}
    provenance = {**metadata.get("provenance", {}), "exported_from": str(loaded.path)}
    if vae_out is not None:
        provenance["vae_file"] = vae_out.name
    metadata["provenance"] = provenance
    header = {native_wan.MODEL_HEADER: json.dumps(metadata, sort_keys=True)}
    written = [_save(out, tensors, header, save_file, write_atomic)]
    if vae_out is not None:
        written.append(_save(vae_out, native_wan.vae_tensors(model.vae), native_wan.vae_header(model.vae),
                             save_file, write_atomic))
    return written


def _save(path: Path, tensors: dict, header: dict, save_file, write_atomic) -> Path:
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_atomic(Path(path), lambda tmp: save_file(cpu, tmp, metadata=header))
    return Path(path)


def export_diffusers(loaded, out: Path) -> Path:
    """A diffusers Wan-VACE folder, written under a temp name beside ``out`` and renamed into place."""
    from diffusers import UniPCMultistepScheduler
    from safetensors.torch import save_file

    from ..errors import InputError
    from .checkpoint import temp_folder
    from .loading import MODEL_INDEX_COMPONENTS, PIPELINE_CLASS, PROMPT_EMBEDS_FILE, PVTT_SETTINGS_FILE

    out = Path(out)
    if out.exists():
        raise InputError(f"--out {out} already exists; PVTT does not overwrite a folder it did not create. Pass a "
                         f"new folder path.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(out)  # PVTT's temp naming: hidden from the model list, recognised after a kill
    try:
        model, schedule = loaded.model, loaded.schedule
        model.transformer.save_pretrained(tmp / "transformer", safe_serialization=True)
        model.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=schedule.shift,
                                num_train_timesteps=schedule.num_train_timesteps).save_pretrained(tmp / "scheduler")
        index = {"_class_name": PIPELINE_CLASS, **MODEL_INDEX_COMPONENTS,
                 "scheduler": ["diffusers", "UniPCMultistepScheduler"]}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        (tmp / PVTT_SETTINGS_FILE).write_text(json.dumps({"video": loaded.video, "sampler": loaded.sampler},
                                                         indent=2))
        save_file({"prompt_embeds": model.context.detach().to("cpu").contiguous()}, str(tmp / PROMPT_EMBEDS_FILE))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def cmd_export(args) -> None:
    import torch

    from ..cli_args import check_model_file
    from ..errors import InputError
    from .loading import export_single_file, load_model

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.format in ("pvtt", "comfy") and out.suffix.lower() != ".safetensors":
        raise InputError(f"--out {out}: --format {args.format} writes one .safetensors file; e.g. "
                         f"{out.with_suffix('.safetensors')}")
    if args.format == "diffusers" and out.suffix.lower() == ".safetensors":
        raise InputError(f"--out {out}: --format diffusers writes a folder; pass a folder path, e.g. "
                         f"{out.with_suffix('')}")
    if args.vae_out and args.format != "comfy":
        raise InputError(f"--vae-out is for --format comfy (the {args.format} form holds the VAE already)")
    check_model_file(args.model, "--model", "model", folder_ok=True, vae=args.vae)
    loaded = load_model(args.model, dtype=getattr(torch, args.dtype), vae=args.vae)
    if loaded.metadata["model"].get("arch") != "wan_vace" and args.format != "pvtt":
        raise InputError(f"--model {args.model} is PVTT's embedded {loaded.metadata['model'].get('arch')} model; only "
                         f"Wan-VACE models have ComfyUI-native and diffusers forms. Use --format pvtt.")
    if args.format == "pvtt":
        written = [export_single_file(loaded, out)]
    elif args.format == "comfy":
        written = export_comfy(loaded, out, Path(args.vae_out) if args.vae_out else None)
    else:
        written = [export_diffusers(loaded, out)]
    print(f"exported {loaded.path.name} ({loaded.metadata.get('stage')}, {args.dtype}) as {args.format}: "
          + ", ".join(map(str, written)))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``python -m pvtt_train`` sub-commands."""
    from ..cli_args import out_file

    p = subparsers.add_parser("export", help="convert a model: PVTT file, ComfyUI-native file or diffusers folder")
    p.add_argument("--model", required=True,
                   help="a PVTT .safetensors, a diffusers Wan2.1-VACE folder or a ComfyUI-native Wan2.1-VACE "
                        ".safetensors (or its .safetensors.index.json)")
    p.add_argument("--out", required=True, help="the .safetensors file to write (a new folder for diffusers)")
    p.add_argument("--format", choices=FORMATS, default="pvtt",
                   help="pvtt: one PVTT file; comfy: ComfyUI-native diffusion model (models/diffusion_models); "
                        "diffusers: a Wan-VACE diffusers folder")
    p.add_argument("--vae", default=None,
                   help="the VAE of a ComfyUI-native --model (native file or diffusers vae/ folder); default: a Wan "
                        "VAE beside it or in ComfyUI's models/vae")
    p.add_argument("--vae-out", default=None, type=out_file(),
                   help="with --format comfy: also write the VAE as a ComfyUI-native file (models/vae)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="weights are loaded and written in this dtype (diffusers' float32 modules stay float32)")
    p.set_defaults(func=cmd_export)
