"""Key names of Wan 2.1 (VACE) weights: diffusers' layout <-> the original Wan layout that ComfyUI uses.

A ComfyUI user's diffusion model (``models/diffusion_models``) and VAE (``models/vae``) carry the
original Wan names (``blocks.N.self_attn.q``, ``head.head``, ``encoder.downsamples.K.residual.2``);
diffusers' ``WanVACETransformer3DModel`` and ``AutoencoderKLWan`` name the same tensors differently.
Nothing is split, merged or reshaped between the two (the modulation tables are ``[1, 6, dim]`` and
``[1, 2, dim]`` in both), so a conversion is a pure renaming and round trips are bit-exact.

The transformer names are checked against ComfyUI's Wan detection (``comfy/model_detection.py``:
``head.modulation`` marks Wan 2.1, ``vace_patch_embedding.weight`` VACE, ``vace_blocks.N`` the VACE
layers) and against diffusers' own one-way converter (``convert_wan_transformer_to_diffusers``) in
``tests/test_wan_formats.py``. The VAE mapping is derived from the architecture (levels and residual
blocks per level), so it also covers the non-standard sizes of test fixtures, which diffusers'
converter (hard-wired to Wan's 4 levels x 2 blocks) does not.

This module only renames; it reads no file and builds no model (``native_wan.py`` does).
"""

from __future__ import annotations

import re

#: Prefixes ComfyUI checkpoints may put in front of the diffusion model's keys.
COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
#: Keys whose presence marks an original-layout Wan 2.1 transformer and its VACE variant (ComfyUI's tests).
NATIVE_WAN_KEY = "head.modulation"
NATIVE_VACE_KEY = "vace_patch_embedding.weight"
#: Key whose presence marks an original-layout Wan VAE (ComfyUI's and diffusers' detection use it too).
NATIVE_VAE_KEY = "decoder.middle.0.residual.0.gamma"

#: Transformer modules outside the blocks, native -> diffusers.
_TOP = {
    "patch_embedding": "patch_embedding",
    "vace_patch_embedding": "vace_patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
}
#: Modules inside ``blocks.N`` and ``vace_blocks.N``, native -> diffusers. The original ``norm3`` is the
#: cross-attention norm (affine), diffusers' ``norm2``; the two parameter-free norms have no weights.
_BLOCK = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "self_attn.norm_q": "attn1.norm_q", "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0", "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k",
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
    "modulation": "scale_shift_table",
    "before_proj": "proj_in", "after_proj": "proj_out",  # VACE blocks only (before_proj in the first)
}
_BLOCK_KEY = re.compile(r"^(blocks|vace_blocks)\.(\d+)\.(.+)$")


def _rename(name: str, table: dict[str, str]) -> str | None:
    """``name`` with its leading module path replaced per ``table`` (whole dotted components only)."""
    for old, new in table.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return None


def _convert_transformer_key(key: str, top: dict[str, str], block: dict[str, str]) -> str:
    match = _BLOCK_KEY.match(key)
    if match:
        scope, index, rest = match.groups()
        renamed = _rename(rest, block)
        new = None if renamed is None else f"{scope}.{index}.{renamed}"
    else:
        new = _rename(key, top)
    if new is None:
        raise KeyError(key)
    return new


_TOP_BACK = {v: k for k, v in _TOP.items()}
_BLOCK_BACK = {v: k for k, v in _BLOCK.items()}


def transformer_key_to_diffusers(key: str) -> str:
    """One original/ComfyUI Wan-VACE transformer key in diffusers' name; KeyError for a key it does not know."""
    return _convert_transformer_key(key, _TOP, _BLOCK)


def transformer_key_to_native(key: str) -> str:
    """One diffusers ``WanVACETransformer3DModel`` key in the original/ComfyUI name; KeyError if unknown."""
    return _convert_transformer_key(key, _TOP_BACK, _BLOCK_BACK)


def strip_comfy_prefix(keys) -> tuple[str, list[str]]:
    """The ComfyUI prefix the Wan keys carry (``""`` if none) and the keys without it. The prefix is the
    one in front of ``head.modulation``; keys outside it (e.g. a bundled VAE) are dropped."""
    keys = list(keys)
    for prefix in ("", *COMFY_PREFIXES):
        if prefix + NATIVE_WAN_KEY in keys:
            return prefix, [k[len(prefix):] for k in keys if k.startswith(prefix)]
    return "", keys


def native_kind(keys) -> str | None:
    """``"vace"`` for a native Wan-VACE diffusion model, ``"wan"`` for a native Wan without VACE,
    ``"vae"`` for a native Wan VAE, else None (judged by keys only, like ComfyUI)."""
    bare = set(strip_comfy_prefix(keys)[1])
    if NATIVE_WAN_KEY in bare:
        return "vace" if NATIVE_VACE_KEY in bare else "wan"
    if NATIVE_VAE_KEY in bare:
        return "vae"
    return None


# --- VAE ---------------------------------------------------------------------------------------------------

#: Residual block members, diffusers -> native (``residual`` is Sequential(norm, SiLU, conv, norm, SiLU,
#: dropout, conv) in the original).
_RESNET = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
           "conv_shortcut": "shortcut"}
#: Per-side (encoder/decoder) modules outside the level blocks, diffusers -> native.
_VAE_SIDE = {"conv_in": "conv1", "norm_out": "head.0", "conv_out": "head.2",
             "mid_block.resnets.0": "middle.0", "mid_block.attentions.0": "middle.1", "mid_block.resnets.1": "middle.2"}
_VAE_TOP = {"quant_conv": "conv1", "post_quant_conv": "conv2"}


def _resnet_member(rest: str) -> str:
    renamed = _rename(rest, _RESNET)
    if renamed is None:
        raise KeyError(rest)
    return renamed


def vae_key_to_native(key: str, num_res_blocks: int) -> str:
    """One diffusers ``AutoencoderKLWan`` (Wan 2.1) key in the original/ComfyUI name.

    The encoder's ``down_blocks`` list is the original ``downsamples`` one for one. The decoder groups
    the original flat ``upsamples`` (per level: ``num_res_blocks + 1`` residual blocks, then a resample
    except after the last level) into ``up_blocks.i.resnets.j`` and ``up_blocks.i.upsamplers.0``.
    """
    top = _rename(key, _VAE_TOP)
    if top is not None:
        return top
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        raise KeyError(key)
    renamed = _rename(rest, _VAE_SIDE)
    if renamed is not None:
        if renamed.startswith("middle.") and renamed.split(".")[1] in ("0", "2"):
            head = ".".join(renamed.split(".")[:2])
            return f"{side}.{head}.{_resnet_member(renamed[len(head) + 1:])}"
        return f"{side}.{renamed}"
    if side == "encoder" and (m := re.match(r"^down_blocks\.(\d+)\.(.+)$", rest)):
        index, member = m.groups()
        is_resample = member.startswith(("resample.", "time_conv."))
        return f"encoder.downsamples.{index}.{member if is_resample else _resnet_member(member)}"
    per_level = num_res_blocks + 2  # residual blocks + the resample
    if side == "decoder" and (m := re.match(r"^up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", rest)):
        level, j, member = m.groups()
        return f"decoder.upsamples.{int(level) * per_level + int(j)}.{_resnet_member(member)}"
    if side == "decoder" and (m := re.match(r"^up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", rest)):
        level, member = m.groups()
        return f"decoder.upsamples.{int(level) * per_level + num_res_blocks + 1}.{member}"
    raise KeyError(key)


def vae_keys_to_native(diffusers_keys, num_res_blocks: int) -> dict[str, str]:
    """``{diffusers key: native key}`` for every key of a diffusers Wan VAE; invert it to go back."""
    mapping = {k: vae_key_to_native(k, num_res_blocks) for k in diffusers_keys}
    if len(set(mapping.values())) != len(mapping):
        raise ValueError("two VAE keys map to one native name; the VAE is not a Wan 2.1 VAE")
    return mapping
