"""ComfyUI-native (original Wan layout) Wan 2.1 VACE files: recognise them, rebuild their diffusers
modules from the tensor shapes alone, and write them.

- A diffusion-model file (ComfyUI's ``models/diffusion_models``, loaded by UNETLoader) holds only the
  transformer, with the original key names (``wan_keys``), bare or behind ``model.diffusion_model.`` /
  ``diffusion_model.``. Its config is read from the shapes the way ComfyUI's ``model_detection`` reads
  it: ``dim`` from ``head.modulation``, heads ``dim // 128``, ``ffn_dim`` from ``blocks.0.ffn.0``, the
  VACE layers as ``vace_blocks`` evenly spaced over the blocks (``range(0, layers, layers // n)``).
  The shapes also give what ComfyUI hard-codes (patch size, ``freq_dim``).
- A VAE file (``models/vae``) holds the original Wan VAE; its levels, channel multipliers, residual
  blocks per level and temporal downsampling are read from the shapes. Wan 2.1's latent statistics
  are not in the weights: they are diffusers' defaults for the 16-channel Wan VAE.

PVTT's own exports add what the shapes cannot say (the exact config, e.g. a head size other than
128, and the sampler, schedule and stage) as JSON in the header, under keys ComfyUI ignores, and the
context embedding as one extra tensor, ``pvtt_context``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanVACETransformer3DModel

from ..errors import CheckpointError
from .meta_loading import TensorSource, assign_weights, build_empty
from .wan_keys import (
    NATIVE_VACE_KEY,
    native_kind,
    strip_comfy_prefix,
    transformer_key_to_diffusers,
    transformer_key_to_native,
    vae_keys_to_native,
)
from .wan_vace import plain_config

#: Header keys of PVTT's native exports: the PVTT metadata of the model, and the VAE's diffusers config.
MODEL_HEADER = "pvtt_native"
VAE_HEADER = "pvtt_native_vae"
#: The context embedding (PVTT's stand-in for the prompt) in a native diffusion-model file.
CONTEXT_KEY = "pvtt_context"
#: ComfyUI's rule for Wan: heads of 128 channels.
COMFY_HEAD_DIM = 128
NATIVE_FIX = ("use a Wan 2.1 VACE diffusion model as ComfyUI loads it (e.g. wan2.1_vace_1.3B_fp16.safetensors), or "
              "re-export it with `python -m pvtt_train export --format comfy`.")


def header_json(source: TensorSource, key: str) -> dict | None:
    text = source.metadata.get(key)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{source.path.name}: its {key!r} header is not valid JSON ({exc}); re-export it.") \
            from exc
    return value if isinstance(value, dict) else None


# --- transformer ---------------------------------------------------------------------------------------------

def transformer_config(shapes: dict[str, tuple[int, ...]], hint: dict | None = None) -> dict:
    """The ``WanVACETransformer3DModel`` config of native transformer tensor ``shapes`` (unprefixed).

    ``hint`` (a PVTT export's stored config) wins where the shapes agree with it: it carries what the
    weights cannot (head count for heads not of 128, ``rope_max_seq_len``)."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise CheckpointError(f"the diffusion model has no {key!r}, which every Wan 2.1 VACE model has; "
                                  f"{NATIVE_FIX}")
        return shapes[key]

    patch = shape("patch_embedding.weight")
    dim, in_channels, patch_size = patch[0], patch[1], list(patch[2:])
    layers = _count(shapes, "blocks.")
    vace_blocks = _count(shapes, "vace_blocks.")
    spacing = layers // vace_blocks if 0 < vace_blocks <= layers else 0
    if not hint and (not spacing or len(range(0, layers, spacing)) != vace_blocks):
        raise CheckpointError(f"the diffusion model has {vace_blocks} VACE blocks over {layers} blocks, which "
                              f"ComfyUI cannot place evenly; {NATIVE_FIX}")
    config = {
        "patch_size": patch_size,
        "num_attention_heads": dim // COMFY_HEAD_DIM,
        "attention_head_dim": COMFY_HEAD_DIM,
        "in_channels": in_channels,
        "out_channels": shape("head.head.weight")[0] // (patch_size[0] * patch_size[1] * patch_size[2]),
        "text_dim": shape("text_embedding.0.weight")[1],
        "freq_dim": shape("time_embedding.0.weight")[1],
        "ffn_dim": shape("blocks.0.ffn.0.weight")[0],
        "num_layers": layers,
        "cross_attn_norm": "blocks.0.norm3.weight" in shapes,
        "qk_norm": "rms_norm_across_heads" if "blocks.0.self_attn.norm_q.weight" in shapes else None,
        "vace_layers": list(range(0, layers, spacing))[:vace_blocks] if spacing else [],
        "vace_in_channels": shape(NATIVE_VACE_KEY)[1],
    }
    if hint:
        derived = {k: v for k, v in config.items() if k not in ("num_attention_heads", "attention_head_dim",
                                                                "vace_layers")}
        clash = {k: (v, hint.get(k)) for k, v in derived.items() if hint.get(k, v) != v}
        if clash or hint.get("num_attention_heads", 1) * hint.get("attention_head_dim", dim) != dim:
            raise CheckpointError(f"the diffusion model's weights disagree with the config in its header {clash}; "
                                  f"the file was edited: re-export it.")
        return {**config, **hint}
    if dim % COMFY_HEAD_DIM:
        raise CheckpointError(f"the diffusion model is {dim} wide, not a multiple of {COMFY_HEAD_DIM}, so its head "
                              f"count cannot be read from it (ComfyUI assumes heads of {COMFY_HEAD_DIM}); "
                              f"{NATIVE_FIX}")
    return config


def _count(shapes, prefix: str) -> int:
    """Consecutive ``prefix{N}.`` groups from 0, as ComfyUI's ``count_blocks`` counts them."""
    indices = {int(k[len(prefix):].split(".")[0]) for k in shapes if k.startswith(prefix)
               and k[len(prefix):].split(".")[0].isdigit()}
    count = 0
    while count in indices:
        count += 1
    return count


def transformer_shapes(source: TensorSource) -> tuple[str, dict[str, tuple[int, ...]]]:
    """The ComfyUI prefix of a native diffusion model and its transformer tensors' shapes without it
    (headers only; PVTT's own context tensor left out)."""
    prefix, _ = strip_comfy_prefix(source.keys())
    shapes = {k[len(prefix):]: s for k, s in source.shapes().items() if k.startswith(prefix)}
    shapes.pop(CONTEXT_KEY, None)
    return prefix, shapes


def load_transformer(source: TensorSource, dtype: torch.dtype | None, device, hint: dict | None = None,
                     ) -> WanVACETransformer3DModel:
    """A native Wan-VACE diffusion model (any ComfyUI prefix) as diffusers' transformer, meta-built."""
    prefix, shapes = transformer_shapes(source)
    config = transformer_config(shapes, hint)
    names = {}
    for key in shapes:
        try:
            names[prefix + key] = transformer_key_to_diffusers(key)
        except KeyError:
            raise CheckpointError(f"{source.path.name}: {key!r} is not a Wan 2.1 VACE transformer weight (an I2V, "
                                  f"camera or other Wan variant?); {NATIVE_FIX}") from None
    try:
        model = build_empty(lambda: WanVACETransformer3DModel.from_config(config))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source.path.name}: cannot build a Wan-VACE transformer from {config} ({exc})") \
            from exc
    return assign_weights(model, source.read(names, device), source.path.name, NATIVE_FIX, dtype, device)


def transformer_tensors(transformer: WanVACETransformer3DModel) -> dict[str, torch.Tensor]:
    """The transformer's weights under their native (ComfyUI) names."""
    return {transformer_key_to_native(k): v for k, v in transformer.state_dict().items()}


# --- VAE ---------------------------------------------------------------------------------------------------

VAE_FIX = ("pass the Wan 2.1 VAE as ComfyUI loads it (e.g. ComfyUI/models/vae/wan_2.1_vae.safetensors) or a "
           "diffusers vae/ folder.")


def vae_config(shapes: dict[str, tuple[int, ...]], hint: dict | None = None) -> dict:
    """The ``AutoencoderKLWan`` config of native Wan 2.1 VAE tensor ``shapes``."""
    if hint:
        return hint
    try:
        base = shapes["encoder.conv1.weight"][0]
        z_dim = shapes["conv2.weight"][0]
    except KeyError:
        raise CheckpointError(f"not a Wan 2.1 VAE (no encoder.conv1 / conv2); {VAE_FIX}") from None
    entries = _count(shapes, "encoder.downsamples.")
    resamples = [i for i in range(entries) if f"encoder.downsamples.{i}.resample.1.weight" in shapes]
    levels = len(resamples) + 1
    res_blocks, remainder = divmod(entries - len(resamples), levels)
    if remainder or res_blocks < 1:
        raise CheckpointError(f"the VAE's encoder has {entries} stages, not whole levels of residual blocks; "
                              f"{VAE_FIX}")
    firsts = [level * (res_blocks + 1) for level in range(levels)]
    dim_mult = [shapes[f"encoder.downsamples.{i}.residual.2.weight"][0] // base for i in firsts]
    temporal = [f"encoder.downsamples.{i}.time_conv.weight" in shapes for i in resamples]
    if z_dim != 16:
        raise CheckpointError(f"the VAE has {z_dim} latent channels; without a PVTT header its latent statistics "
                              f"are known only for Wan 2.1's 16-channel VAE. {VAE_FIX}")
    return {"base_dim": base, "z_dim": z_dim, "dim_mult": dim_mult, "num_res_blocks": res_blocks,
            "attn_scales": [], "temperal_downsample": temporal, **wan21_latent_stats()}


def wan21_latent_stats() -> dict:
    """Wan 2.1's per-channel latent mean and std, from diffusers' ``AutoencoderKLWan`` defaults."""
    import inspect

    params = inspect.signature(AutoencoderKLWan.__init__).parameters
    return {"latents_mean": list(params["latents_mean"].default), "latents_std": list(params["latents_std"].default)}


def load_vae(source: TensorSource, dtype: torch.dtype | None, device) -> AutoencoderKLWan:
    """A native Wan 2.1 VAE file as diffusers' ``AutoencoderKLWan``, meta-built."""
    shapes = source.shapes()
    config = vae_config(shapes, header_json(source, VAE_HEADER))
    try:
        model = build_empty(lambda: AutoencoderKLWan.from_config(config))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source.path.name}: cannot build a Wan VAE from {config} ({exc})") from exc
    try:
        to_native = vae_keys_to_native(model.state_dict(), config["num_res_blocks"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{source.path.name}: not a Wan 2.1 VAE layout ({exc}); {VAE_FIX}") from exc
    names = {native: diffusers for diffusers, native in to_native.items() if native in shapes}
    extra = sorted(set(shapes) - set(names))
    if extra:
        raise CheckpointError(f"{source.path.name}: {extra[:3]} are not Wan 2.1 VAE weights (a Wan 2.2 VAE?); "
                              f"{VAE_FIX}")
    return assign_weights(model, source.read(names, device), source.path.name, VAE_FIX, dtype, device)


def vae_tensors(vae: AutoencoderKLWan) -> dict[str, torch.Tensor]:
    """The VAE's weights under their native (ComfyUI) names."""
    state = vae.state_dict()
    mapping = vae_keys_to_native(state, vae.config.num_res_blocks)
    return {mapping[k]: v for k, v in state.items()}


def vae_header(vae: AutoencoderKLWan) -> dict[str, str]:
    return {VAE_HEADER: json.dumps(plain_config(vae), sort_keys=True)}


def is_native_file(path: Path) -> str | None:
    """``native_kind`` of a ``.safetensors`` file or index from its header alone; None if unreadable."""
    path = Path(path)
    if not (path.is_file() and (path.suffix.lower() == ".safetensors" or path.name.endswith(".index.json"))):
        return None
    try:
        return native_kind(TensorSource(path).keys())
    except CheckpointError:
        return None
