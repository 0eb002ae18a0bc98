"""torch.compile of a denoiser for inference, without recompiling between sampling steps.

Only the denoiser is compiled: the sampler passes it tensors of fixed shape every step (the
timestep is a tensor input, not a Python float), so one graph serves every step of every run at
a given batch size. ``freezing`` folds the weights into the graph as constants (inductor then
pre-packs them for oneDNN on CPU); it is for inference only, and the ``options`` dictionary keeps
it local to this compilation instead of flipping inductor's global config (ComfyUI runs other
packs' compiled models in the same process).
"""

from __future__ import annotations

import torch
from torch import nn

#: PVTT compile mode -> torch.compile ``options`` (inductor config for this compilation only).
MODES = {
    "default": {},
    "max-autotune-no-cudagraphs": {"max_autotune": True},
    "max-autotune": {"max_autotune": True, "triton.cudagraphs": True},
    "reduce-overhead": {"triton.cudagraphs": True},
}


def compile_denoiser(denoiser: nn.Module, mode: str = "default", freezing: bool = True) -> nn.Module:
    """``torch.compile(denoiser)`` with ``mode``'s options; CUDA graphs only where CUDA runs."""
    if mode not in MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(MODES)}")
    device = next(denoiser.parameters()).device
    options = {k: v for k, v in MODES[mode].items() if k != "triton.cudagraphs" or device.type == "cuda"}
    options["freezing"] = freezing
    return torch.compile(denoiser, options=options, dynamic=False)


def compiled_graph_count() -> int:
    """Graphs dynamo has compiled in this process (a recompilation adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
