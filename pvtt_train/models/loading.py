"""Load a PVTT model from any of its three on-disk forms, and turn them into one another.

- a PVTT single-file ``.safetensors`` (weights + self-describing metadata): ``checkpoint.load_checkpoint``;
- a diffusers Wan 2.1 VACE folder (``model_index.json``, ``transformer/``, ``vae/``, ``scheduler/``),
  e.g. a downloaded ``Wan-AI/Wan2.1-VACE-1.3B-diffusers``: loaded from disk only, never downloaded,
  and given the same metadata a PVTT checkpoint carries, so samplers and nodes treat all alike;
- a ComfyUI-native Wan2.1-VACE diffusion model (original Wan key names, ``native_wan``), one file or
  a sharded ``*.safetensors.index.json``, with its VAE passed as ``vae=`` or found beside it (the
  same folder, or ComfyUI's ``models/vae`` next to ``models/diffusion_models``).

Every form is built on the meta device and filled straight from the files in the requested dtype
(``meta_loading``; diffusers' ``from_pretrained`` with ``low_cpu_mem_usage`` does the same), so no
weight is randomly initialised and then overwritten.

``export_single_file`` writes a loaded Wan-VACE model as one PVTT checkpoint (transformer, VAE and
context in one state dict), which ``load_checkpoint`` rebuilds through ``build_model("wan_vace")``;
``export_cli`` writes the other two forms.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, \
    WanVACETransformer3DModel
from safetensors import safe_open
from safetensors.torch import load_file

from . import native_wan
from .checkpoint import FORMAT, FORMAT_VERSION, PICKLE_SUFFIXES, CheckpointError, LoadedModel, file_sha256, \
    load_checkpoint, read_metadata, save_checkpoint
from .meta_loading import INDEX_SUFFIX, TensorSource
from .metadata_schema import SCHEDULE, Checker, check_vace_pair, constructor_defaults, parse_json_object, \
    public_config, transformer_config, vae_config, validate_sampler, validate_video
from .model_budget import check_fits, meta_model, model_bytes
from .schedule import FlowSchedule
from .text_encoder import conditioning_metadata
from .wan_vace import WanVACEPVTT, check_clip_shape
from .weight_checks import check_finite, check_float_dtypes, check_module_finite, tensor_layout

logger = logging.getLogger(__name__)

PIPELINE_CLASS = "WanVACEPipeline"
COMPONENT_CLASSES = {"transformer": WanVACETransformer3DModel, "vae": AutoencoderKLWan}
#: Flow-matching schedulers a Wan folder may ship, and the config key that holds their shift.
SCHEDULER_SHIFT_KEYS = {FlowMatchEulerDiscreteScheduler: "shift", UniPCMultistepScheduler: "flow_shift"}
#: model_index.json entries of a Wan-VACE folder besides the pipeline class and scheduler (no text encoder:
#: PVTT's context embedding stands in for the prompt).
MODEL_INDEX_COMPONENTS = {"text_encoder": [None, None], "tokenizer": [None, None],
                          "transformer": ["diffusers", "WanVACETransformer3DModel"], "transformer_2": [None, None],
                          "vae": ["diffusers", "AutoencoderKLWan"], "boundary_ratio": None}
PROMPT_EMBEDS_FILE = "prompt_embeds.safetensors"
PVTT_SETTINGS_FILE = "pvtt.json"
#: Wan 2.1's native clip: 81 frames at 480x832 (height x width).
DEFAULT_VIDEO = {"frames": 81, "height": 480, "width": 832}
#: How the Wan-VACE base model is meant to be sampled (WanVACEPipeline's defaults).
DEFAULT_SAMPLER = {"kind": "euler_cfg", "steps": 50, "cfg": 5.0}
#: Wan 2.1's flow shift at 480p (5.0 is for 720p), for a native file that does not say.
DEFAULT_SHIFT = 3.0
CONDITIONING = {"reference": "vace_reference_frame", "uncond": "no_reference_frame"}
#: Where a native diffusion model's VAE is looked for when none is given: beside it, then ComfyUI's
#: models/vae next to models/diffusion_models.
VAE_SEARCH = (".", "../vae")


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = torch.float32,
               vae: str | Path | None = None, vae_dirs=()) -> LoadedModel:
    """A PVTT checkpoint file, a diffusers Wan-VACE folder or a ComfyUI-native Wan-VACE file (``vae``:
    its VAE, else found in ``vae_dirs``, beside it or in ComfyUI's models/vae), in ``dtype``, ready for
    sampling (eval, no grad)."""
    path = Path(path)
    if path.is_dir():
        return load_diffusers_folder(path, device, dtype)
    if native_wan.is_native_file(path):
        return load_native_file(path, device, dtype, vae=vae, vae_dirs=vae_dirs)
    return load_checkpoint(path, device, dtype=dtype)


def load_diffusers_folder(folder: Path, device: str | torch.device = "cpu",
                          dtype: torch.dtype | None = torch.float32) -> LoadedModel:
    """Load a Wan-VACE diffusers folder from disk and describe it like a PVTT teacher checkpoint."""
    folder = Path(folder).resolve()
    check_folder(folder, device)  # the cheap checks first, so a broken folder fails before any weight is read
    schedule = read_schedule(folder)
    settings = read_settings(folder)
    context, context_source = read_prompt_embeds(folder)
    components = {name: load_component(folder, name, dtype) for name in COMPONENT_CLASSES}
    model = _assemble(folder, components["transformer"], components["vae"], context)
    video = _check_video(model, {**DEFAULT_VIDEO, **settings.get("video", {})}, folder / PVTT_SETTINGS_FILE)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.config(),
        "stage": "teacher",
        "schedule": schedule.to_dict(),
        "sampler": folder_sampler(settings),
        "video": video,
        "conditioning": conditioning_metadata(folder),
        "provenance": {"source": "diffusers_folder", "path": str(folder), "context": context_source},
    }
    _ready(model, device, dtype)
    return LoadedModel(model=model, metadata=metadata, path=folder)


def load_native_file(path: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = torch.float32,
                     vae: str | Path | None = None, shift: float | None = None, vae_dirs=()) -> LoadedModel:
    """Load a ComfyUI-native Wan-VACE diffusion model (file or safetensors index) with its VAE, and
    describe it like a PVTT checkpoint: a PVTT export's own metadata, else a Wan-VACE teacher's
    defaults (shift ``shift`` or 3.0, WanVACEPipeline's sampler, 81 frames at 480x832)."""
    path = Path(path).resolve()
    source = _native_model_source(path)
    stored = native_wan.header_json(source, native_wan.MODEL_HEADER)
    hint = (stored or {}).get("model", {}).get("transformer")
    vae_path = Path(vae) if vae is not None else find_vae(path, stored, vae_dirs)
    transformer = native_wan.load_transformer(source, dtype, device, hint)
    vae_model = load_vae_source(vae_path, dtype, device)
    context = None
    if native_wan.CONTEXT_KEY in source.keys():
        context = next(source.read({native_wan.CONTEXT_KEY: "context"}))[1].float()
    model = _assemble(path, transformer, vae_model, context)
    provenance = {"source": "comfy_native", "path": str(path), "vae": str(vae_path.resolve()),
                  "context": "pvtt_context" if context is not None else "zeros"}
    if stored:
        metadata = {**stored, "model": model.config(),
                    "provenance": {**stored.get("provenance", {}), "converted_from": provenance}}
        if shift is not None:
            metadata["schedule"] = {**metadata["schedule"], "shift": shift}
    else:
        metadata = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "model": model.config(), "stage": "teacher",
            "schedule": FlowSchedule(shift=DEFAULT_SHIFT if shift is None else shift).to_dict(),
            "sampler": dict(DEFAULT_SAMPLER), "video": dict(DEFAULT_VIDEO), "conditioning": dict(CONDITIONING),
            "provenance": provenance,
        }
    metadata["video"] = _check_video(model, metadata["video"], path)
    _ready(model, device, dtype)
    return LoadedModel(model=model, metadata=metadata, path=path)


def native_model_description(path: str | Path, vae: str | Path | None = None, vae_dirs=()) -> tuple[dict, dict]:
    """The PVTT model config and clip of a ComfyUI-native diffusion model, from tensor headers only
    (no weight read): what ``plan`` and the distill memory check count."""
    path = Path(path).resolve()
    source = _native_model_source(path)
    stored = native_wan.header_json(source, native_wan.MODEL_HEADER)
    if stored:
        return stored["model"], stored.get("video", dict(DEFAULT_VIDEO))
    transformer = native_wan.transformer_config(native_wan.transformer_shapes(source)[1])
    vae_path = Path(vae) if vae is not None else find_vae(path, stored, vae_dirs)
    if vae_path.is_dir():
        folder = vae_path / "vae" if (vae_path / "model_index.json").is_file() else vae_path
        vae_config = read_json(folder / "config.json")
    else:
        vae_source = TensorSource(vae_path)
        vae_config = native_wan.vae_config(vae_source.shapes(), native_wan.header_json(vae_source,
                                                                                        native_wan.VAE_HEADER))
    config = {"arch": WanVACEPVTT.arch, "transformer": transformer,
              "vae": {k: v for k, v in vae_config.items() if not k.startswith("_")}, "context_tokens": 1}
    return config, dict(DEFAULT_VIDEO)


def _native_model_source(path: Path) -> TensorSource:
    """The tensors of a native file, refused with the fix when they are a VAE or Wan without VACE."""
    source = TensorSource(path, fix="copy the model file again.")
    kind = native_wan.native_kind(source.keys())
    if kind == "vae":
        raise CheckpointError(f"{path.name} is a Wan VAE, not a diffusion model; pass the Wan2.1-VACE diffusion "
                              f"model and give this file as its VAE (--vae / vae=).")
    if kind != "vace":
        raise CheckpointError(f"{path.name} is a Wan 2.1 diffusion model without VACE (no "
                              f"{native_wan.NATIVE_VACE_KEY}); PVTT needs Wan2.1-VACE, e.g. "
                              f"wan2.1_vace_1.3B_fp16.safetensors.")
    return source


def find_vae(model_path: Path, stored: dict | None = None, extra_dirs=()) -> Path:
    """The native Wan VAE for a native diffusion model: in ``extra_dirs``, beside it, or in ComfyUI's
    ``models/vae``. The file a PVTT export names wins; otherwise there must be exactly one."""
    model_path = Path(model_path)
    folders = [*map(Path, extra_dirs), *((model_path.parent / d).resolve() for d in VAE_SEARCH)]
    found = []
    for folder in dict.fromkeys(folders):
        if folder.is_dir():
            found += [p for p in sorted(folder.glob("*.safetensors")) if native_wan.is_native_file(p) == "vae"]
    wanted = ((stored or {}).get("provenance") or {}).get("vae_file")
    named = [p for p in found if p.name == wanted]
    if named or len(found) == 1:
        return (named or found)[0]
    where = ", ".join(str(f) for f in dict.fromkeys(folders))
    if not found:
        raise CheckpointError(f"{model_path.name} is a ComfyUI-native diffusion model, which holds no VAE, and no Wan "
                              f"VAE file was found in {where}. Pass the Wan 2.1 VAE (--vae PATH, or vae=), e.g. "
                              f"ComfyUI/models/vae/wan_2.1_vae.safetensors or a diffusers vae/ folder.")
    raise CheckpointError(f"{model_path.name} holds no VAE and several Wan VAE files fit "
                          f"({', '.join(p.name for p in found)}); say which with --vae PATH (or vae=).")


def load_vae_source(path: Path, dtype: torch.dtype | None, device: str | torch.device = "cpu") -> AutoencoderKLWan:
    """A Wan VAE from a native file, a diffusers ``vae/`` folder, or a diffusers model folder's ``vae/``."""
    path = Path(path)
    if path.is_dir() and (path / "model_index.json").is_file():
        path = path / "vae"
    if path.is_dir():
        check_weights(path)
        try:
            return AutoencoderKLWan.from_pretrained(path, local_files_only=True, use_safetensors=True,
                                                    torch_dtype=dtype, low_cpu_mem_usage=True).to(device)
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path} could not be loaded as a Wan VAE ({exc}); {native_wan.VAE_FIX}") from exc
    if not path.is_file():
        raise CheckpointError(f"VAE not found: {path}; {native_wan.VAE_FIX}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path.name} is a pickle-format file; PVTT loads only .safetensors (pickles can run "
                              f"code). Use ComfyUI's wan_2.1_vae.safetensors.")
    if native_wan.is_native_file(path) != "vae":
        raise CheckpointError(f"{path.name} is not a Wan VAE file; {native_wan.VAE_FIX}")
    return native_wan.load_vae(TensorSource(path), dtype, device)


def _assemble(where: Path, transformer, vae, context) -> WanVACEPVTT:
    try:
        return WanVACEPVTT(transformer, vae, context=context)
    except ValueError as exc:
        raise CheckpointError(f"{where.name}: cannot build a PVTT model from it ({exc})") from exc


def _check_video(model: WanVACEPVTT, video: dict, where: Path) -> dict:
    try:
        check_clip_shape(model.transformer, model.vae, video["frames"], video["height"], video["width"])
    except ValueError as exc:
        raise CheckpointError(f"{where}: video {video} does not fit the model ({exc})") from exc
    return video


def _ready(model: WanVACEPVTT, device, dtype: torch.dtype | None) -> None:
    """Device, eval mode and no gradients; the context embedding in ``dtype`` like the weights (the
    components arrive in ``dtype`` already, with diffusers' float32 modules kept)."""
    model.to(device)
    if dtype is not None:
        model.context.data = model.context.data.to(dtype)
    model.eval().requires_grad_(False)


def check_model_source(path: str | Path, vae: str | Path | None = None, wanted: str | None = None) -> dict | None:
    """The cheap checks of any model form, before a weight is read: a folder's files and configs, a
    native file's kind and VAE, a PVTT file's metadata. Returns the PVTT metadata where the source
    carries it (a PVTT file or a PVTT native export), else None."""
    path = Path(path)
    if path.is_dir():
        check_folder(path.resolve())
        return None
    kind = native_wan.is_native_file(path)
    if kind is None:
        return read_metadata(path, wanted)
    source = _native_model_source(path)
    stored = native_wan.header_json(source, native_wan.MODEL_HEADER)
    vae_path = Path(vae) if vae is not None else find_vae(path, stored)
    if not vae_path.exists():
        raise CheckpointError(f"VAE not found: {vae_path}; {native_wan.VAE_FIX}")
    return stored


def source_sha256(path: str | Path, length: int = 16) -> str:
    """A content hash of any model form: a file's SHA-256, or for a folder the SHA-256 over the files
    that make the PVTT model (index, settings, prompt embeddings, transformer/, vae/, scheduler/)."""
    path = Path(path)
    if not path.is_dir():
        if path.name.endswith(INDEX_SUFFIX):
            files = [path, *sorted({path.parent / s for s in TensorSource(path).files.values()})]
            return _hash_files(path.parent, files, length)
        return file_sha256(path, length)
    files = [p for p in (path / "model_index.json", path / PVTT_SETTINGS_FILE, path / PROMPT_EMBEDS_FILE)
             if p.is_file()]
    for name in (*COMPONENT_CLASSES, "scheduler"):
        files += sorted(p for p in (path / name).glob("*") if p.is_file() and p.suffix.lower() in (".json",
                                                                                                ".safetensors"))
    return _hash_files(path, files, length)


def _hash_files(root: Path, files: list[Path], length: int) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(root).as_posix()}\0{file_sha256(p, 64)}\n".encode())
    return h.hexdigest()[:length]


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


def load_component(folder: Path, name: str, dtype: torch.dtype | None = None):
    """One model subfolder through diffusers' own ``from_pretrained``: from disk, safetensors only, built
    empty and filled in ``dtype`` (``low_cpu_mem_usage``), sharded or not; every weight checked for
    NaN/Inf once loaded."""
    try:
        component = COMPONENT_CLASSES[name].from_pretrained(folder, subfolder=name, local_files_only=True,
                                                            use_safetensors=True, torch_dtype=dtype,
                                                            low_cpu_mem_usage=True)
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
