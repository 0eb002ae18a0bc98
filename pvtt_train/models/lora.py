"""LoRA export of a distilled student: the low-rank part of its weight delta from the teacher.

A DMD student is a full fine-tune of the teacher, so shipping it means shipping every weight
again. Most of what distillation changes is low-rank, so a truncated SVD of ``W_student - W_teacher``
per Linear/Conv layer recovers nearly all of it in a fraction of the size, and a user who already
has the teacher (e.g. Wan 2.1 VACE) loads only the LoRA.

File layout (safetensors, the diffusers/PEFT key format that ComfyUI's LoRA loader also reads):

- ``transformer.<path inside the Wan transformer>.lora_A.weight`` [r, in] and ``.lora_B.weight``
  [out, r] per Linear layer (Conv: A is [r, in, *kernel], B is [out, r, 1, ...]); the singular
  values are split as sqrt on both sides so neither factor dominates numerically;
- ``<module>.diff`` / ``<module>.diff_b``: the full delta of a weight / bias that is not a
  Linear or Conv weight (norms, biases, ``scale_shift_table``), which cannot be low-rank;
- ``pvtt.<path>.diff``: parameters outside the transformer (the learned ``context`` token).

Every layer stores exactly ``rank`` components (zero-padded where a layer is smaller), so
``alpha = rank`` means scale 1 in every loader, whichever way it infers per-layer ranks. No
``.alpha`` tensors are written. Factors and deltas are stored in float32.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel, WanVACETransformer3DModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from .checkpoint import PICKLE_SUFFIXES, write_atomic

FORMAT = "pvtt_lora"
FORMAT_VERSION = 1
KEY_FORMAT = ("diffusers-peft: transformer.<module>.lora_A.weight / .lora_B.weight; full deltas as <module>.diff "
              "(weights, other parameters) and <module>.diff_b (biases); pvtt.<path> outside the transformer")
TRANSFORMER_PREFIX = "transformer."
EXTRA_PREFIX = "pvtt."
LOW_RANK_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_WAN_TRANSFORMERS = (WanTransformer3DModel, WanVACETransformer3DModel)
_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".diff_b", ".diff")


def _transformer_name(model: nn.Module) -> str:
    """Attribute name of the Wan transformer inside a PVTT model ('' if ``model`` is one)."""
    if isinstance(model, _WAN_TRANSFORMERS):
        return ""
    for name, child in model.named_children():
        if isinstance(child, _WAN_TRANSFORMERS):
            return name
    raise CheckpointError(f"{type(model).__name__} holds no Wan transformer; LoRA export and merging need "
                          f"a PVTT model (wan_concat or wan_vace).")


def _key_stem(path: str, transformer: str) -> str:
    """Model path of a module/parameter to the stem of its LoRA keys."""
    if not transformer:
        return TRANSFORMER_PREFIX + path
    if path.startswith(transformer + "."):
        return TRANSFORMER_PREFIX + path[len(transformer) + 1:]
    return EXTRA_PREFIX + path


def _model_path(stem: str, transformer: str) -> str:
    """Inverse of ``_key_stem``."""
    if stem.startswith(TRANSFORMER_PREFIX):
        rest = stem[len(TRANSFORMER_PREFIX):]
        return f"{transformer}.{rest}" if transformer else rest
    if stem.startswith(EXTRA_PREFIX):
        return stem[len(EXTRA_PREFIX):]
    raise CheckpointError(f"LoRA key {stem!r} starts with neither {TRANSFORMER_PREFIX!r} nor {EXTRA_PREFIX!r}; "
                          f"it was not written by pvtt_train export-lora.")


def _low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Rank-``rank`` factors (A, B) of a Linear/Conv weight delta, with kept and total energy (sum sigma^2).

    The SVD runs in float64: deltas are small next to the weights, and float32 would lose their
    tail singular values. Missing components (layer smaller than ``rank``) are zero-padded.
    """
    matrix = delta.double().flatten(1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    a = matrix.new_zeros(rank, matrix.shape[1])
    b = matrix.new_zeros(matrix.shape[0], rank)
    a[:r] = root[:, None] * vh[:r]
    b[:, :r] = u[:, :r] * root
    energy = s.square()
    a = a.reshape(rank, *delta.shape[1:]).float()
    b = b.reshape(delta.shape[0], rank, *([1] * (delta.ndim - 2))).float()
    return a, b, float(energy[:r].sum()), float(energy.sum())


def extract_lora(base: nn.Module, tuned: nn.Module, rank: int) -> tuple[dict[str, torch.Tensor], dict]:
    """LoRA state (see the module docstring) of ``tuned - base``, and a report of what it keeps.

    The report has per low-rank layer ``||dW||`` and the relative Frobenius error ``||dW - BA|| / ||dW||``,
    ``retained_energy`` (share of sum sigma^2 kept over all low-rank layers), ``relative_error`` of
    the whole delta (full ``.diff`` entries are exact), and the parameters stored as full deltas.
    Unchanged parameters are left out.
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    base_params, tuned_params = dict(base.named_parameters()), dict(tuned.named_parameters())
    mismatched = sorted(base_params.keys() ^ tuned_params.keys())
    mismatched += [k for k in tuned_params.keys() & base_params.keys()
                   if tuned_params[k].shape != base_params[k].shape]
    if mismatched:
        raise CheckpointError(f"the student does not have the teacher's architecture (differs at "
                              f"{mismatched[:5]}); export a LoRA against the teacher it was distilled from.")
    transformer = _transformer_name(tuned)
    modules = dict(tuned.named_modules())
    state: dict[str, torch.Tensor] = {}
    layers, full = {}, []
    kept = total = full_energy = 0.0
    for name, weight in tuned_params.items():
        delta = weight.detach().double() - base_params[name].detach().double()
        if not delta.any():
            continue
        module_path, _, leaf = name.rpartition(".")
        if leaf == "weight" and isinstance(modules[module_path], LOW_RANK_TYPES):
            a, b, layer_kept, layer_total = _low_rank(delta, rank)
            stem = _key_stem(module_path, transformer)
            state[f"{stem}.lora_A.weight"], state[f"{stem}.lora_B.weight"] = a, b
            layers[stem] = {"shape": list(delta.shape), "delta_norm": layer_total ** 0.5,
                            "relative_error": max(0.0, 1 - layer_kept / layer_total) ** 0.5}
            kept, total = kept + layer_kept, total + layer_total
            continue
        if leaf in ("weight", "bias"):
            key = _key_stem(module_path, transformer) + (".diff_b" if leaf == "bias" else ".diff")
        else:
            key = _key_stem(name, transformer) + ".diff"
        state[key] = delta.float()
        full.append(key)
        full_energy += float(delta.square().sum())
    report = {
        "rank": rank,
        "layers": layers,
        "full_deltas": full,
        "retained_energy": kept / total if total else 1.0,
        "relative_error": (max(0.0, total - kept) / (total + full_energy)) ** 0.5 if total + full_energy else 0.0,
    }
    return state, report


def _check_path(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path.name} is a pickle-format file; PVTT reads LoRAs only as .safetensors "
                              f"(pickles can run code).")
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path.name}: expected a .safetensors LoRA file")


def save_lora(path: str | Path, state: dict[str, torch.Tensor], metadata: dict, key_format: str = KEY_FORMAT) -> Path:
    """Write a LoRA atomically; ``metadata`` (JSON-able) must give rank, alpha and both models' SHA-256.
    ``key_format`` describes the key names (``lora_formats`` writes the ComfyUI and diffusers ones)."""
    path = Path(path)
    _check_path(path)
    missing = [k for k in ("rank", "alpha", "base_sha256", "student_sha256") if k not in metadata]
    if missing:
        raise ValueError(f"LoRA metadata needs {missing}")
    meta = {**metadata, "format": FORMAT, "format_version": FORMAT_VERSION, "key_format": key_format}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={FORMAT: json.dumps(meta, sort_keys=True)}))
    return path


def load_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and PVTT metadata ({} if the file has none) of a LoRA file."""
    path = Path(path)
    _check_path(path)
    if not path.is_file():
        raise CheckpointError(f"LoRA file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({exc}); it may be truncated "
                              f"or corrupt: export it again.") from exc
    try:
        meta = json.loads(header.get(FORMAT, "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path.name}: its PVTT LoRA metadata is not valid JSON ({exc})") from exc
    return state, meta


def _lora_delta(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, stem: str) -> torch.Tensor:
    """``B @ A`` reshaped to ``weight``, after checking the factors fit it."""
    fits = (a.shape[1:] == weight.shape[1:] and b.shape[0] == weight.shape[0] and b.shape[1] == a.shape[0]
            and all(d == 1 for d in b.shape[2:]))
    if not fits:
        raise CheckpointError(f"LoRA {stem}: factors A{tuple(a.shape)} / B{tuple(b.shape)} do not fit the "
                              f"model's weight {tuple(weight.shape)}; apply it to the model it was exported from.")
    return (b.double().flatten(1) @ a.double().flatten(1)).reshape(weight.shape)


def apply_lora(model: nn.Module, state: dict[str, torch.Tensor], scale: float = 1.0) -> nn.Module:
    """A copy of ``model`` with ``scale`` times the LoRA merged into its weights.

    Every key must name a parameter of ``model`` with a matching shape; anything else means the
    LoRA belongs to another base model and raises ``CheckpointError`` (``model`` is untouched).
    """
    merged = copy.deepcopy(model)
    transformer = _transformer_name(merged)
    params = dict(merged.named_parameters())
    stems: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise CheckpointError(f"LoRA key {key!r} is not one PVTT can merge (expected {', '.join(_SUFFIXES)}).")
        stems.setdefault(key[:-len(suffix)], {})[suffix] = tensor

    def param(path: str, stem: str) -> torch.Tensor:
        if path not in params:
            raise CheckpointError(f"LoRA {stem} targets {path!r}, which this model does not have: the LoRA was "
                                  f"exported from another base model (see its metadata's base_sha256).")
        return params[path]

    with torch.no_grad():
        for stem, parts in stems.items():
            path = _model_path(stem, transformer)
            updates = []
            if ".lora_A.weight" in parts or ".lora_B.weight" in parts:
                if not {".lora_A.weight", ".lora_B.weight"} <= parts.keys():
                    raise CheckpointError(f"LoRA {stem} has only one of lora_A / lora_B; the file is incomplete.")
                weight = param(f"{path}.weight", stem)
                updates.append((weight, _lora_delta(weight, parts[".lora_A.weight"], parts[".lora_B.weight"], stem)))
            if ".diff" in parts:
                updates.append((param(path if path in params else f"{path}.weight", stem), parts[".diff"]))
            if ".diff_b" in parts:
                updates.append((param(f"{path}.bias", stem), parts[".diff_b"]))
            for target, delta in updates:
                if delta.shape != target.shape:
                    raise CheckpointError(f"LoRA {stem}: delta {tuple(delta.shape)} does not fit the model's "
                                          f"{tuple(target.shape)}; apply it to the model it was exported from.")
                target.copy_((target.double() + scale * delta.to(target.device, torch.float64)).to(target.dtype))
    return merged
