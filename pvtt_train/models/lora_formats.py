"""A PVTT LoRA (``lora.py``) under the key names of other loaders: ComfyUI's and diffusers'.

A designer applies a 4-step speed-up with ComfyUI's LoraLoaderModelOnly or diffusers'
``load_lora_weights``; neither reads PVTT's own layout (diffusers-PEFT names plus ``.diff`` entries):

- ``comfy``: the original Wan names ComfyUI's Wan model uses (``wan_keys``), behind
  ``diffusion_model.``: ``<module>.lora_up.weight`` (PVTT's B) / ``.lora_down.weight`` (A) / ``.alpha``
  (the rank, so scale 1), and ``.diff`` / ``.diff_b`` for full deltas (norms, biases, modulation
  tables). ``comfy.lora.load_lora`` maps every entry and PVTT reads the file back bit-exactly, but
  ComfyUI's ModelPatcher only writes patches into parameters of leaf modules: the modulation tables,
  held directly by Wan's blocks and head, keep the base model's values in a stock graph. Those
  entries and their share of the delta are listed in the metadata (``comfy_unpatched``).
- ``diffusers``: ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight`` and bias deltas as
  ``.lora_B.bias`` (PEFT's ``lora_bias``, which is also how diffusers converts a ComfyUI Wan LoRA's
  ``.diff_b``). PEFT has no place for a full delta of a norm weight or a modulation table, and
  ``load_lora_weights`` refuses any key without ``lora`` in it, so those deltas (and the bias of a
  norm) are left out and
  listed, with their share of the delta, in the metadata (``dropped``); the comfy form keeps them.

Neither form holds anything outside the transformer (no VAE, no context): only Wan-VACE students
have these forms.
"""

from __future__ import annotations

import torch

from ..errors import CheckpointError
from .lora import EXTRA_PREFIX, TRANSFORMER_PREFIX, load_lora
from .wan_keys import transformer_key_to_diffusers, transformer_key_to_native

FORMATS = ("pvtt", "comfy", "diffusers")
COMFY_PREFIX = "diffusion_model."
KEY_FORMATS = {
    "comfy": "comfyui: diffusion_model.<original Wan module>.lora_up.weight / .lora_down.weight / .alpha; full "
             "deltas as <module>.diff (weights, other parameters) and <module>.diff_b (biases)",
    "diffusers": "diffusers-peft: transformer.<module>.lora_A.weight / .lora_B.weight / .lora_B.bias; full deltas "
                 "of norms and modulation tables are left out (see 'dropped')",
}
_PVTT_SUFFIXES = {".lora_A.weight": ".lora_down.weight", ".lora_B.weight": ".lora_up.weight",
                  ".diff_b": ".diff_b", ".diff": ".diff"}
_COMFY_SUFFIXES = {v: k for k, v in _PVTT_SUFFIXES.items()}


def _split(key: str, suffixes) -> tuple[str, str]:
    for suffix in suffixes:
        if key.endswith(suffix):
            return key[:-len(suffix)], suffix
    raise CheckpointError(f"LoRA key {key!r} ends in none of {', '.join(suffixes)}; it is not a PVTT LoRA entry.")


def _transformer_stem(stem: str) -> str:
    """A PVTT key stem inside the transformer, without its prefix; extras outside it are refused."""
    if stem.startswith(EXTRA_PREFIX):
        raise CheckpointError(f"LoRA entry {stem!r} lies outside the Wan transformer (PVTT's embedded wan_concat "
                              f"model); only a Wan-VACE student's LoRA has ComfyUI and diffusers forms. Use "
                              f"--format pvtt.")
    if not stem.startswith(TRANSFORMER_PREFIX):
        raise CheckpointError(f"LoRA key stem {stem!r} does not start with {TRANSFORMER_PREFIX!r}; it was not "
                              f"written by pvtt_train export-lora.")
    return stem[len(TRANSFORMER_PREFIX):]


def _rename(path: str, convert) -> str:
    """A module or parameter path through a wan_keys converter, with a clear error for a foreign one."""
    try:
        return convert(path)
    except KeyError:
        raise CheckpointError(f"LoRA entry {path!r} is not a Wan 2.1 VACE transformer module; apply the LoRA "
                              f"to the Wan-VACE model it was exported from.") from None


def to_comfy(state: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """PVTT LoRA tensors under ComfyUI's names (tensors shared, not copied)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        stem, suffix = _split(key, _PVTT_SUFFIXES)
        native = COMFY_PREFIX + _rename(_transformer_stem(stem), transformer_key_to_native)
        out[native + _PVTT_SUFFIXES[suffix]] = tensor
        if suffix == ".lora_A.weight":
            out[native + ".alpha"] = torch.tensor(float(rank))
    return out


def from_comfy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ComfyUI-form PVTT LoRA back in PVTT's layout. An ``alpha`` other than the rank is folded into
    the up factor (ComfyUI scales by ``alpha / rank``), so the merged weights are what ComfyUI patches."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if not key.startswith(COMFY_PREFIX):
            raise CheckpointError(f"LoRA key {key!r} lacks ComfyUI's {COMFY_PREFIX!r} prefix; the file mixes "
                                  f"LoRA formats. Export it again.")
        if key.endswith(".alpha"):
            continue
        stem, suffix = _split(key[len(COMFY_PREFIX):], _COMFY_SUFFIXES)
        pvtt_key = TRANSFORMER_PREFIX + _rename(stem, transformer_key_to_diffusers) + _COMFY_SUFFIXES[suffix]
        if suffix == ".lora_up.weight":
            down = state.get(f"{COMFY_PREFIX}{stem}.lora_down.weight")
            alpha = state.get(f"{COMFY_PREFIX}{stem}.alpha")
            if down is not None and alpha is not None and float(alpha) != down.shape[0]:
                tensor = tensor * (float(alpha) / down.shape[0])
        out[pvtt_key] = tensor
    return out


def to_diffusers(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """PVTT LoRA tensors as diffusers' Wan loader takes them, and the PVTT keys that had to be left out."""
    out: dict[str, torch.Tensor] = {}
    dropped = []
    for key, tensor in state.items():
        stem, suffix = _split(key, _PVTT_SUFFIXES)
        _transformer_stem(stem)
        if suffix in (".lora_A.weight", ".lora_B.weight"):
            out[key] = tensor
        elif suffix == ".diff_b" and f"{stem}.lora_A.weight" in state:
            out[f"{stem}.lora_B.bias"] = tensor
        else:  # a norm's weight or bias, a modulation table: no PEFT layer to hang it on
            dropped.append(key)
    return out, dropped


def dropped_share(state: dict[str, torch.Tensor], dropped: list[str]) -> float:
    """Share of the LoRA's squared norm (low-rank products and full deltas) in the ``dropped`` entries."""
    def energy(keys) -> float:
        total = 0.0
        for key in keys:
            if key.endswith(".lora_B.weight"):
                a = state[key[:-len(".lora_B.weight")] + ".lora_A.weight"].double().flatten(1)
                total += float((state[key].double().flatten(1) @ a).square().sum())
            elif not key.endswith(".lora_A.weight"):
                total += float(state[key].double().square().sum())
        return total

    whole = energy(state)
    return energy(dropped) / whole if whole else 0.0


def comfy_unpatched(comfy_state: dict[str, torch.Tensor]) -> list[str]:
    """The ComfyUI-form entries ComfyUI's ModelPatcher maps but never applies: full deltas of parameters
    held directly by a module that has sub-modules (``comfy/model_patcher.py`` ``_load_list`` skips
    those modules), which in Wan are the blocks' and the head's modulation tables."""
    return sorted(k for k in comfy_state if k.endswith(".modulation.diff"))


def to_pvtt_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors of a LoRA in any of the three forms in PVTT's own layout (for ``lora.apply_lora``)."""
    if any(k.startswith(COMFY_PREFIX) for k in state):
        return from_comfy(state)
    return {(k[:-len(".lora_B.bias")] + ".diff_b" if k.endswith(".lora_B.bias") else k): v for k, v in state.items()}


def load_any_lora(path) -> tuple[dict[str, torch.Tensor], dict]:
    """``lora.load_lora`` of a PVTT LoRA in any form, its tensors in PVTT's layout."""
    state, meta = load_lora(path)
    return to_pvtt_layout(state), meta


def convert(state: dict[str, torch.Tensor], fmt: str, rank: int) -> tuple[dict[str, torch.Tensor], dict]:
    """PVTT LoRA tensors in form ``fmt`` and the metadata entries that form adds (key format, dropped)."""
    if fmt == "pvtt":
        return state, {}
    if fmt == "comfy":
        out = to_comfy(state, rank)
        unpatched = comfy_unpatched(out)
        pvtt_keys = [k for k in state if k.endswith(".diff") and COMFY_PREFIX + _rename(
            _transformer_stem(k[:-len(".diff")]), transformer_key_to_native) + ".diff" in unpatched]
        return out, {"key_format": KEY_FORMATS["comfy"], "comfy_unpatched": unpatched,
                     "comfy_unpatched_share": dropped_share(state, pvtt_keys)}
    if fmt == "diffusers":
        out, dropped = to_diffusers(state)
        return out, {"key_format": KEY_FORMATS["diffusers"], "dropped": dropped,
                     "dropped_share": dropped_share(state, dropped)}
    raise ValueError(f"unknown LoRA format {fmt!r}; choose one of {FORMATS}")
