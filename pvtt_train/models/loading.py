"""Load a PVTT model from either of its two on-disk forms, and turn the second into the first.

- a PVTT single-file ``.safetensors`` (weights + self-describing metadata): ``checkpoint.load_checkpoint``;
- a diffusers Wan 2.1 VACE folder (``model_index.json``, ``transformer/``, ``vae/``, ``scheduler/``),
  e.g. a downloaded ``Wan-AI/Wan2.1-VACE-1.3B-diffusers``: loaded from disk only, never downloaded,
  and given the same metadata a PVTT checkpoint carries, so samplers and nodes treat both alike.

``export_single_file`` writes a loaded Wan-VACE model as one PVTT checkpoint (transformer, VAE and
context in one state dict), which ``load_checkpoint`` rebuilds through ``build_model("wan_vace")``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, \
    WanVACETransformer3DModel
from safetensors import safe_open
from safetensors.torch import load_file

from .checkpoint import FORMAT, FORMAT_VERSION, PICKLE_SUFFIXES, CheckpointError, LoadedModel, load_checkpoint, \
    save_checkpoint
from .metadata_schema import SCHEDULE, Checker, check_vace_pair, constructor_defaults, parse_json_object, \
    public_config, transformer_config, vae_config, validate_sampler, validate_video
from .model_budget import check_fits, meta_model, model_bytes
from .schedule import FlowSchedule
from .wan_vace import WanVACEPVTT, check_clip_shape
from .weight_checks import check_finite, check_float_dtypes, check_module_finite, tensor_layout

logger = logging.getLogger(__name__)

PIPELINE_CLASS = "WanVACEPipeline"
COMPONENT_CLASSES = {"transformer": WanVACETransformer3DModel, "vae": AutoencoderKLWan}
#: Flow-matching schedulers a Wan folder may ship, and the config key that holds their shift.
SCHEDULER_SHIFT_KEYS = {FlowMatchEulerDiscreteScheduler: "shift", UniPCMultistepScheduler: "flow_shift"}
PROMPT_EMBEDS_FILE = "prompt_embeds.safetensors"
PVTT_SETTINGS_FILE = "pvtt.json"
#: Wan 2.1's native clip: 81 frames at 480x832 (height x width).
DEFAULT_VIDEO = {"frames": 81, "height": 480, "width": 832}
#: How the Wan-VACE base model is meant to be sampled (WanVACEPipeline's defaults).
DEFAULT_SAMPLER = {"kind": "euler_cfg", "steps": 50, "cfg": 5.0}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A PVTT checkpoint file or a diffusers Wan-VACE folder, ready for sampling (eval, no grad)."""
    path = Path(path)
    if path.is_dir():
        return load_diffusers_folder(path, device)
    return load_checkpoint(path, device)


def load_diffusers_folder(folder: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a Wan-VACE diffusers folder from disk and describe it like a PVTT teacher checkpoint."""
    folder = Path(folder).resolve()
    check_folder(folder, device)  # the cheap checks first, so a broken folder fails before any weight is read
    schedule = read_schedule(folder)
    settings = read_settings(folder)
    context, context_source = read_prompt_embeds(folder)
    components = {name: load_component(folder, name) for name in COMPONENT_CLASSES}
    try:
        model = WanVACEPVTT(components["transformer"], components["vae"], context=context)
    except ValueError as exc:
        raise CheckpointError(f"{folder.name}: cannot build a PVTT model from it ({exc})") from exc
    video = {**DEFAULT_VIDEO, **settings.get("video", {})}
    try:
        check_clip_shape(model.transformer, model.vae, video["frames"], video["height"], video["width"])
    except ValueError as exc:
        raise CheckpointError(f"{folder / PVTT_SETTINGS_FILE}: video {video} does not fit the model ({exc})") from exc
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.config(),
        "stage": "teacher",
        "schedule": schedule.to_dict(),
        "sampler": folder_sampler(settings),
        "video": video,
        "conditioning": {"reference": "vace_reference_frame", "uncond": "no_reference_frame"},
        "provenance": {"source": "diffusers_folder", "path": str(folder), "context": context_source},
    }
    model.to(device).eval().requires_grad_(False)
    return LoadedModel(model=model, metadata=metadata, path=folder)


def check_folder(folder: Path, device: str | torch.device = "cpu") -> None:
    """Refuse, with what to fix, a folder that is not a complete safetensors Wan-VACE repo, or whose
    numbers are out of range or would not fit in ``device``'s memory."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise CheckpointError(f"{folder} has no model_index.json, so it is not a diffusers model folder. Pass a "
                              f"Wan 2.1 VACE diffusers folder or a PVTT .safetensors file.")
    index = read_json(index_path)
    if index.get("_class_name") != PIPELINE_CLASS:
        raise CheckpointError(f"{index_path} describes a {index.get('_class_name')!r}; PVTT needs a {PIPELINE_CLASS} "
                              f"folder (Wan 2.1 VACE, e.g. Wan-AI/Wan2.1-VACE-1.3B-diffusers).")
    if (index.get("transformer_2") or [None])[-1] is not None:
        raise CheckpointError(f"{folder.name} is a two-expert (Wan 2.2) VACE model; PVTT supports one transformer.")
    for name in (*COMPONENT_CLASSES, "scheduler"):
        if not (folder / name).is_dir():
            raise CheckpointError(f"{folder.name} has no {name}/ subfolder; a Wan-VACE folder needs transformer/, "
                                  f"vae/ and scheduler/. Copy the complete model folder.")
    for name, cls in COMPONENT_CLASSES.items():
        config_path = folder / name / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{config_path} is missing; copy the complete model folder.")
        found = read_json(config_path).get("_class_name")
        if found != cls.__name__:
            raise CheckpointError(f"{config_path} is a {found!r}, but PVTT needs {cls.__name__} there "
                                  f"(a Wan 2.1 VACE model).")
        check_weights(folder / name)
    check_folder_numbers(folder, device)


def check_weights(subfolder: Path) -> None:
    """Weights must be safetensors: pickle files can run code when loaded, so they are refused, and so
    is a safetensors index that names any other kind of shard (diffusers would ``torch.load`` it).
    Every weight file must hold floating-point tensors only (read from the headers, no data)."""
    indexes = sorted(subfolder.glob("*.safetensors.index.json"))
    shards = {shard for index in indexes for shard in check_shard_index(index)}
    shards |= set(subfolder.glob("*.safetensors"))
    if not shards:
        pickles = sorted(p.name for p in subfolder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(f"{subfolder} holds pickle-format weights ({', '.join(pickles)}); PVTT loads only "
                                  f".safetensors (pickles can run code). Convert them with safetensors first.")
        raise CheckpointError(f"{subfolder} has no .safetensors weights; copy the complete model folder.")
    for shard in sorted(shards):
        try:
            with safe_open(str(shard), framework="pt") as handle:
                layout = tensor_layout(handle)
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{shard} is not a readable safetensors file ({exc}); it may be truncated or "
                                  f"corrupt: copy the model folder again.") from exc
        check_float_dtypes(layout, shard)


def check_shard_index(index: Path) -> list[Path]:
    """The shards a ``*.safetensors.index.json`` names, each a ``.safetensors`` file inside its folder,
    or a ``CheckpointError`` naming the index and the offending shard."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no weight_map (tensor name -> shard file); copy the model folder again.")
    root, shards = index.parent.resolve(), []
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).suffix != ".safetensors":
            raise CheckpointError(f"{index} maps {tensor!r} to the shard {shard!r}, which is not a .safetensors file; "
                                  f"PVTT loads only safetensors (.bin and other pickle shards can run code). Convert "
                                  f"the shard with safetensors and name it in the index.")
        path = (index.parent / shard).resolve()
        if not path.is_relative_to(root):
            raise CheckpointError(f"{index} names the shard {shard!r}, which lies outside {root}; every shard must "
                                  f"be inside the component's folder. Copy the model folder again.")
        if not path.is_file():
            raise CheckpointError(f"{index} names the shard {shard!r}, which is missing; copy the complete model "
                                  f"folder.")
        shards.append(path)
    return shards


def check_folder_numbers(folder: Path, device: str | torch.device = "cpu") -> None:
    """Every number of the folder's configs, pvtt.json and scheduler config in range and consistent,
    and the model's memory (counted on the meta device) within what ``device`` has free, all before
    diffusers allocates a weight: a config.json saying 1e6 layers would otherwise exhaust memory."""
    fix = "Fix the file, or copy the model folder again."
    transformer_path, vae_path = folder / "transformer" / "config.json", folder / "vae" / "config.json"
    transformer = transformer_config(read_json(transformer_path), "wan_vace", "", Checker(str(transformer_path), fix))
    vae = vae_config(read_json(vae_path), "", Checker(str(vae_path), fix))
    check_vace_pair(transformer, vae, "transformer/config.json", Checker(str(folder), fix))
    settings_check = Checker(str(folder / PVTT_SETTINGS_FILE), fix)
    settings = read_settings(folder)
    validate_sampler(folder_sampler(settings), read_schedule(folder).to_dict(), settings_check)
    validate_video({**DEFAULT_VIDEO, **settings.get("video", {})},
                   {"arch": "wan_vace", "transformer": transformer, "vae": vae}, settings_check)
    layout = meta_model(lambda: WanVACEPVTT(WanVACETransformer3DModel.from_config(transformer),
                                            AutoencoderKLWan.from_config(vae)), folder.name)
    check_fits(model_bytes(layout), device, folder.name)


def folder_sampler(settings: dict) -> dict:
    """pvtt.json's sampler over Wan's default; a few-step sampler replaces the default whole, since the
    default's CFG weight would not apply to it."""
    sampler = settings.get("sampler", {})
    if sampler.get("kind", DEFAULT_SAMPLER["kind"]) != DEFAULT_SAMPLER["kind"]:
        return dict(sampler)
    return {**DEFAULT_SAMPLER, **sampler}


def load_component(folder: Path, name: str):
    """One model subfolder through diffusers' own ``from_pretrained``: from disk, safetensors only,
    every weight checked for NaN/Inf once loaded."""
    try:
        component = COMPONENT_CLASSES[name].from_pretrained(folder, subfolder=name, local_files_only=True,
                                                            use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{folder / name} could not be loaded ({exc}). The files may be incomplete or "
                              f"corrupt: copy the model folder again.") from exc
    check_module_finite(component, folder / name)
    return component


def read_schedule(folder: Path) -> FlowSchedule:
    """The flow schedule (shift) of the folder's own scheduler config, its numbers checked before
    diffusers builds the scheduler (which allocates a table of num_train_timesteps entries)."""
    config_path = folder / "scheduler" / "scheduler_config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} is missing; copy the complete model folder.")
    raw = read_json(config_path)
    name = raw.get("_class_name")
    cls = next((c for c in SCHEDULER_SHIFT_KEYS if c.__name__ == name), None)
    if cls is not None:
        shift_key = SCHEDULER_SHIFT_KEYS[cls]
        Checker(str(config_path), "Fix the file, or copy the model folder again.").fields(
            public_config(raw), {shift_key: SCHEDULE["shift"], "num_train_timesteps": SCHEDULE["num_train_timesteps"]},
            "", defaults=constructor_defaults(cls), others_allowed=True)
    config = cls.from_pretrained(folder, subfolder="scheduler", local_files_only=True).config if cls else {}
    if cls is None or (cls is UniPCMultistepScheduler and not config.use_flow_sigmas):
        raise CheckpointError(f"{config_path}: {name!r} is not a flow-matching scheduler PVTT knows "
                              f"(FlowMatchEulerDiscreteScheduler, or UniPCMultistepScheduler with use_flow_sigmas).")
    return FlowSchedule(shift=float(config[SCHEDULER_SHIFT_KEYS[cls]]),
                        num_train_timesteps=int(config.num_train_timesteps))


def read_prompt_embeds(folder: Path) -> tuple[torch.Tensor | None, str]:
    """The stored context embedding (``prompt_embeds`` in prompt_embeds.safetensors), or None for zeros."""
    path = folder / PROMPT_EMBEDS_FILE
    if not path.is_file():
        logger.info("%s: no %s, context embedding starts at zeros", folder.name, PROMPT_EMBEDS_FILE)
        return None, "zeros"
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); it may be truncated: copy it "
                              f"again, or delete it to start the context embedding at zeros.") from exc
    if "prompt_embeds" not in tensors:
        raise CheckpointError(f"{path} has no 'prompt_embeds' tensor (found {sorted(tensors)})")
    if not tensors["prompt_embeds"].is_floating_point():
        raise CheckpointError(f"{path}: 'prompt_embeds' is {tensors['prompt_embeds'].dtype}, not floating point; "
                              f"write the text encoder's output, or delete it to start the context at zeros.")
    check_finite("prompt_embeds", tensors["prompt_embeds"], path)
    logger.info("%s: context embedding from %s", folder.name, PROMPT_EMBEDS_FILE)
    return tensors["prompt_embeds"], PROMPT_EMBEDS_FILE


def read_settings(folder: Path) -> dict:
    """Optional pvtt.json: ``video`` (frames/height/width) and ``sampler`` overrides for this folder."""
    path = folder / PVTT_SETTINGS_FILE
    if not path.is_file():
        return {}
    settings = read_json(path)
    unknown = sorted(set(settings) - {"video", "sampler"})
    if unknown:
        raise CheckpointError(f"{path}: unknown keys {unknown}; it may set 'video' and 'sampler'.")
    check = Checker(str(path), "Fix the file, or delete it for Wan's defaults.")
    for key in settings:
        check.section(settings[key], key)
    return settings


def read_json(path: Path) -> dict:
    """A JSON object from a model folder; anything else (invalid, absurdly large or nested JSON) is a
    CheckpointError that says to fix the file."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); copy the model folder again.") from exc
    return parse_json_object(text, str(path), "copy the model folder again.")


def export_single_file(loaded: LoadedModel, path: str | Path) -> Path:
    """Save a loaded model as one PVTT checkpoint: its weights, config and metadata, provenance kept."""
    metadata = {k: v for k, v in loaded.metadata.items() if k not in ("format", "format_version", "model")}
    metadata["provenance"] = {**metadata.get("provenance", {}), "exported_from": str(loaded.path)}
    return save_checkpoint(path, loaded.model, metadata)
