"""How much memory a model needs, counted before a byte of it is allocated.

The model is built on PyTorch's meta device, which records every parameter's and buffer's shape and
dtype but allocates nothing, so the count is exact (rotary tables and the context embedding included)
and instant even for a 14B model. ``metadata_schema`` has already bounded every dimension, so the meta
build itself cannot run away. A model that would not fit in the memory available now is refused with
the numbers, instead of swapping the machine to a halt or being killed halfway through reading.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..validation import available_memory

GB = 1e9
MB = 1e6


def meta_model(build, source: str | Path) -> nn.Module:
    """``build()`` run on the meta device: the model's layout without its memory. A config the
    constructors reject (diffusers' own checks) becomes a ``CheckpointError`` naming ``source``."""
    try:
        with torch.device("meta"):
            return build()
    except (KeyError, TypeError, ValueError, RuntimeError, AssertionError, IndexError) as exc:
        raise CheckpointError(f"{source}: cannot rebuild its model: {exc}") from exc


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, at the dtypes the model is built with."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` now (host RAM for the CPU), or None when it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    free = available_memory()
    if free is None and hasattr(os, "sysconf"):  # non-Linux POSIX without /proc/meminfo
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            free = None
    return free


def check_fits(needed: int, device: str | torch.device, source: str | Path, what: str = "its weights") -> None:
    """Refuse, before allocating, a model whose ``needed`` bytes exceed the free memory of ``device``
    (and of the host, where every model is built before it moves)."""
    device = torch.device(device)
    for place in {torch.device("cpu"), device}:
        free = available_bytes(place)
        if free is not None and needed > free:
            where = "GPU memory" if place.type == "cuda" else "memory"
            raise CheckpointError(
                f"{source}: {what} need about {_size(needed)}, but only {_size(free)} of {where} is "
                f"available. The sizes in its config (layers, widths) are larger than this machine can hold: free "
                f"memory, load it on a larger machine, or check that the file is the model you meant.")


def _size(n: int) -> str:
    return f"{n / GB:.2f} GB" if n >= GB else f"{n / MB:.1f} MB"
