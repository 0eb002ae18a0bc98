"""Checks on the weights themselves: the layout a file declares, and the numbers it holds.

A safetensors header lists every tensor's name, dtype and shape, so a file whose tensors do not fit
the architecture its metadata describes, or that stores integers where weights belong, is refused
before anything is allocated. Finiteness can only be told from the data, so it is checked as each
tensor is copied into the model (one pass, no second copy of the weights): a single NaN or Inf weight
turns every generated clip into NaN, and the error names the tensor instead of returning such a clip.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

#: safetensors dtype names of floating-point tensors; anything else cannot be a PVTT weight.
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
#: Bytes per element of the float dtypes, for the size of the largest tensor read at once.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}


def tensor_layout(handle) -> dict[str, tuple[str, list[int]]]:
    """Name -> (dtype, shape) of every tensor of an open ``safe_open`` handle, read from the header only."""
    layout = {}
    for name in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
        view = handle.get_slice(name)
        layout[name] = (view.get_dtype(), list(view.get_shape()))
    return layout


def check_float_dtypes(layout: dict[str, tuple[str, list[int]]], source: str | Path) -> None:
    """Refuse integer, boolean or other non-float tensors: cast to float they would be silently wrong."""
    bad = [(name, dtype) for name, (dtype, _) in layout.items() if dtype not in FLOAT_DTYPES]
    if bad:
        name, dtype = bad[0]
        raise CheckpointError(f"{source}: tensor {name!r} is stored as {dtype} ({len(bad)} of {len(layout)} tensors "
                              f"are not floating point); PVTT weights are {', '.join(FLOAT_DTYPES[:4])}. The file "
                              f"was edited or written by another tool: export it again with pvtt_train.")


def check_layout_matches(layout: dict[str, tuple[str, list[int]]], expected: dict[str, torch.Tensor],
                         source: str | Path) -> None:
    """The file's tensors must be exactly the model's: same names, same shapes (``expected`` may be a
    meta-device state dict, so nothing is allocated to find out)."""
    missing = sorted(set(expected) - set(layout))
    unexpected = sorted(set(layout) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match the architecture in its metadata (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}). The file was edited or written by an incompatible tool; re-export it "
            f"with pvtt_train.")
    wrong = [(name, layout[name][1], list(t.shape)) for name, t in expected.items() if layout[name][1] != list(t.shape)]
    if wrong:
        name, found, want = wrong[0]
        raise CheckpointError(
            f"{source}: weights do not match the architecture in its metadata: tensor {name!r} has shape {found} in "
            f"the file but {want} in the model ({len(wrong)} tensors differ). Re-export it with pvtt_train.")


def largest_tensor_bytes(layout: dict[str, tuple[str, list[int]]]) -> int:
    """Bytes of the biggest tensor, which is held once more while it is copied into the model."""
    sizes = [DTYPE_BYTES.get(dtype, 8) * _numel(shape) for dtype, shape in layout.values()]
    return max(sizes, default=0)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def check_finite(name: str, tensor: torch.Tensor, source: str | Path) -> None:
    """Refuse a weight holding NaN or Inf, naming it and how many of its values are bad."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise CheckpointError(f"{source}: weight {name!r} holds {bad} NaN/Inf values of {tensor.numel()}; the file "
                              f"is damaged (or was saved from a diverged training run). Use an intact copy, or "
                              f"export it again from a healthy state.")


def check_module_finite(module: nn.Module, source: str | Path) -> None:
    """``check_finite`` over a model loaded by another library (diffusers), one tensor at a time."""
    for name, tensor in module.state_dict().items():
        check_finite(name, tensor, source)
