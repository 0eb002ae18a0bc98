"""PVTT Template Transfer on ComfyUI's own models: a native MODEL (UNETLoader, LoraLoaderModelOnly), VAE and SIGMAS.

The designer's Wan-VACE is already in memory, loaded by ComfyUI. Rather than reading the file again
in float32, PVTT's model is built around ComfyUI's tensors:

- ``load_models_gpu([model, vae], force_full_load=True)`` puts both on ComfyUI's device, with any LoRA
  patches applied to the weights (that is when ComfyUI applies them);
- diffusers' ``WanVACETransformer3DModel`` and ``AutoencoderKLWan`` are built empty (meta device) and
  given ComfyUI's parameters themselves (``load_state_dict(assign=True)``) under their diffusers names
  (``wan_keys``: a pure renaming), so every weight shares its storage with ComfyUI's model, in
  ComfyUI's dtype: nothing is copied or converted;
- the result is rebuilt at every run and dropped afterwards, so it never holds weights ComfyUI has
  since unpatched or offloaded.

Sampling is PVTT's own (conditioning, background re-injection, windows, photo detail). A native file
carries no PVTT metadata: the working size is the template's, snapped to Wan's grid and capped at
Wan 2.1's 480x832 and 81 frames, unless a PVTT_MODEL is connected too (its sampler, schedule, size
and prompt context apply, and its VAE when no VAE is connected). ``sigmas`` (PVTT Student Sigmas)
selects PVTT's few-step sampler at exactly those sigmas.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import torch

from ..pvtt_train.errors import InputError

log = logging.getLogger("[PVTT]")

NODE = "PVTT Template Transfer"
#: Stands in for a file name in logs and errors: the model came from ComfyUI, not from a PVTT file.
NATIVE_PATH = Path("ComfyUI MODEL")
#: Wan 2.1's native clip, the largest working size picked for a native model.
MAX_FRAMES, MAX_AREA = 81, 480 * 832
#: Weight dtypes diffusers' modules compute in directly.
RUNNABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def resolve_model(model, native_model, vae, sigmas, template: torch.Tensor):
    """The LoadedModel Template Transfer samples with, from whichever of its model inputs are connected."""
    if native_model is None:
        if model is None:
            raise InputError(f"{NODE}: no model connected. Connect a PVTT model (PVTT Load Model) to 'model', or a "
                             f"ComfyUI Wan2.1-VACE MODEL (UNETLoader, optionally through LoraLoaderModelOnly) to "
                             f"'native_model' together with its VAE (VAELoader) to 'vae'.")
        if vae is not None:
            log.warning("%s: 'vae' is used with 'native_model' only; %s keeps its own VAE", NODE, model.path.name)
        loaded = model
    else:
        loaded = native_loaded(native_model, vae, template, model)
    return with_sigmas(loaded, sigmas) if sigmas is not None else loaded


def native_loaded(native_model, vae, template: torch.Tensor, pvtt_model=None):
    """A LoadedModel whose transformer (and VAE) are ComfyUI's loaded tensors, shared, not copied."""
    from ..pvtt_train.models.checkpoint import LoadedModel
    from ..pvtt_train.models.wan_vace import WanVACEPVTT

    diffusion_model = getattr(getattr(native_model, "model", None), "diffusion_model", None)
    if diffusion_model is None:
        raise InputError(f"{NODE}: native_model is not a ComfyUI diffusion MODEL (no diffusion_model); connect "
                         f"UNETLoader's output (a Wan2.1-VACE file).")
    if vae is None and pvtt_model is None:
        raise InputError(f"{NODE}: native_model needs its VAE: connect VAELoader (the Wan 2.1 VAE, "
                         f"wan_2.1_vae.safetensors) to 'vae'.")
    patchers = [native_model] + ([vae.patcher] if vae is not None else [])
    import comfy.model_management

    comfy.model_management.load_models_gpu(patchers, force_full_load=True)
    device = native_model.load_device
    transformer = shared_transformer(diffusion_model)
    vae_module = shared_vae(vae.first_stage_model) if vae is not None else pvtt_model.model.vae
    context = pvtt_model.model.context.detach() if pvtt_model is not None else None
    try:
        module = WanVACEPVTT(transformer, vae_module, context=context)
    except ValueError as exc:
        raise InputError(f"{NODE}: the native model and the VAE do not fit together ({exc}); connect the Wan 2.1 "
                         f"VAE of this Wan2.1-VACE model.") from exc
    module.to(device).eval()  # only the context and the RoPE tables move: ComfyUI's weights are there already
    if pvtt_model is not None:
        metadata = {**pvtt_model.metadata, "provenance": {**pvtt_model.metadata.get("provenance", {}),
                                                          "weights": "comfyui_model"}}
        path = pvtt_model.path
    else:
        metadata = {**native_metadata(native_model, template, vae_module), "model": module.config()}
        path = NATIVE_PATH
    loaded = LoadedModel(model=module, metadata=metadata, path=path)
    loaded.shares_weights_of = patchers  # load_for_sampling reloads these, not a patcher of its own
    return loaded


def _check_dtypes(params: dict[str, torch.Tensor], what: str) -> None:
    odd = sorted({str(p.dtype) for p in params.values() if p.dtype not in RUNNABLE_DTYPES})
    if odd:
        raise InputError(f"{NODE}: the {what}'s weights are {', '.join(odd)}, which PVTT cannot compute with "
                         f"without a copy; load it with weight_dtype 'default' (float16/bfloat16/float32).")


def shared_transformer(diffusion_model: torch.nn.Module):
    """diffusers' Wan-VACE transformer whose parameters are ``diffusion_model``'s own (ComfyUI's VaceWanModel)."""
    from diffusers import WanVACETransformer3DModel

    from ..pvtt_train.errors import CheckpointError
    from ..pvtt_train.models import native_wan
    from ..pvtt_train.models.meta_loading import build_empty
    from ..pvtt_train.models.wan_keys import NATIVE_VACE_KEY, transformer_key_to_diffusers

    params = dict(diffusion_model.named_parameters())
    if NATIVE_VACE_KEY not in params:
        raise InputError(f"{NODE}: native_model is a {type(diffusion_model).__name__} without VACE; PVTT needs "
                         f"Wan2.1-VACE (e.g. wan2.1_vace_1.3B_fp16.safetensors in UNETLoader).")
    _check_dtypes(params, "native model")
    try:
        config = native_wan.transformer_config({k: tuple(v.shape) for k, v in params.items()})
        names = {transformer_key_to_diffusers(k): v for k, v in params.items()}
    except (CheckpointError, KeyError) as exc:
        raise InputError(f"{NODE}: native_model is not a Wan 2.1 VACE model PVTT can run ({exc}).") from exc
    return _assign(build_empty(lambda: WanVACETransformer3DModel.from_config(config)), names, "native model")


def shared_vae(first_stage_model: torch.nn.Module):
    """diffusers' Wan VAE whose parameters are ``first_stage_model``'s own (ComfyUI's Wan 2.1 WanVAE)."""
    from diffusers import AutoencoderKLWan

    from ..pvtt_train.errors import CheckpointError
    from ..pvtt_train.models import native_wan
    from ..pvtt_train.models.meta_loading import build_empty
    from ..pvtt_train.models.wan_keys import vae_keys_to_native

    params = dict(first_stage_model.named_parameters())
    _check_dtypes(params, "VAE")
    try:
        config = native_wan.vae_config({k: tuple(v.shape) for k, v in params.items()})
        empty = build_empty(lambda: AutoencoderKLWan.from_config(config))
        to_native = vae_keys_to_native(empty.state_dict(), config["num_res_blocks"])
        names = {diffusers: params[native] for diffusers, native in to_native.items()}
    except (CheckpointError, KeyError, ValueError) as exc:
        raise InputError(f"{NODE}: 'vae' is not a Wan 2.1 VAE ({exc}); connect VAELoader with "
                         f"wan_2.1_vae.safetensors.") from exc
    return _assign(empty, names, "VAE")


def _assign(empty: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> torch.nn.Module:
    """``empty`` (meta) given exactly ``tensors`` (no cast, no copy); buffers no file holds follow the weights."""
    expected = set(empty.state_dict())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise InputError(f"{NODE}: the {what} does not match the architecture read from its shapes (missing "
                         f"{missing[:4]}, unexpected {unexpected[:4]}).")
    empty.load_state_dict(tensors, strict=True, assign=True)
    device = next(iter(tensors.values())).device
    for module in empty.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.device != device:
                setattr(module, name, buffer.to(device))
    return empty.eval().requires_grad_(False)


def working_video(template: torch.Tensor, vae) -> dict:
    """The clip a native model samples at: the template's frames and size snapped to Wan's grid (1 + 4k
    frames, sides a multiple of 16), at most 81 frames and Wan 2.1's 480x832 area, aspect kept."""
    from ..pvtt_train.models.wan_vace import spatial_factor, temporal_factor

    t, grid = temporal_factor(vae), spatial_factor(vae) * 2  # the transformer's 2x2 patch
    frames = max(1, (min(int(template.shape[0]), MAX_FRAMES) - 1) // t * t + 1)
    height, width = int(template.shape[1]), int(template.shape[2])
    scale = min(1.0, math.sqrt(MAX_AREA / (height * width)))
    snap = lambda side: max(grid, int(side * scale) // grid * grid)  # noqa: E731
    return {"frames": frames, "height": snap(height), "width": snap(width)}


def native_metadata(native_model, template: torch.Tensor, vae) -> dict:
    """PVTT metadata for a native model: Wan-VACE's teacher defaults (WanVACEPipeline's Euler + CFG), the
    flow shift of the MODEL's own model sampling (ModelSamplingSD3 sets it), the template's working size."""
    from ..pvtt_train.models.checkpoint import FORMAT, FORMAT_VERSION
    from ..pvtt_train.models.loading import CONDITIONING, DEFAULT_SAMPLER, DEFAULT_SHIFT

    sampling = native_model.get_model_object("model_sampling") if hasattr(native_model, "get_model_object") else None
    shift = float(getattr(sampling, "shift", DEFAULT_SHIFT))
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "stage": "teacher",
            "schedule": {"shift": shift, "num_train_timesteps": 1000},
            "sampler": dict(DEFAULT_SAMPLER), "video": working_video(template, vae),
            "conditioning": dict(CONDITIONING), "provenance": {"source": "comfyui_model"}}


def with_sigmas(loaded, sigmas):
    """``loaded`` sampled with PVTT's few-step sampler at ``sigmas`` (ComfyUI's SIGMAS: descending, ending in 0,
    e.g. from PVTT Student Sigmas), whatever its own sampler says."""
    values = [float(s) for s in torch.as_tensor(sigmas).flatten()]
    if values and values[-1] == 0.0:
        values = values[:-1]  # ComfyUI's schedules end at 0; PVTT's lists name the sigmas it denoises from
    if not values or any(not 0 < s <= 1 for s in values) or any(a <= b for a, b in zip(values, values[1:])):
        raise InputError(f"{NODE}: sigmas must decrease within (0, 1] and may end with 0 (a flow model's "
                         f"schedule, e.g. PVTT Student Sigmas); got {[round(s, 4) for s in values][:8]}.")
    sampler = {"kind": "few_step", "steps": len(values), "timesteps": [s * 1000 for s in values]}
    metadata = {**loaded.metadata, "sampler": sampler, "schedule": {"shift": 1.0, "num_train_timesteps": 1000}}
    out = replace(loaded, metadata=metadata)
    if getattr(loaded, "shares_weights_of", None):
        out.shares_weights_of = loaded.shares_weights_of
    return out
