"""torch.compile of a denoiser for inference, without recompiling between sampling steps.

Only the denoiser is compiled: the sampler passes it tensors of fixed shape every step (the
timestep is a tensor input, not a Python float), so one graph serves every step of every run at
a given batch size. ``freezing`` folds the weights into the graph as constants (inductor then
pre-packs them for oneDNN on CPU: about 15% faster on the tiny student); it is for inference only.
Passing ``freezing`` in ``torch.compile(options=...)`` has no effect: inductor reads it from its
global config, both when ``torch.compile`` is called and when a graph is traced (at the first
call, and at any recompilation). ``CompiledDenoiser`` switches it on around exactly those two
moments, so other packs' compiled models in the same ComfyUI process are not frozen behind their
back (inductor's config is process-wide: this holds while one thread compiles at a time, as
ComfyUI's single execution thread does).
"""

from __future__ import annotations

import itertools
import types

import torch
from torch import nn

#: PVTT compile mode -> torch.compile ``options`` (inductor config for this compilation only).
MODES = {
    "default": {},
    "max-autotune-no-cudagraphs": {"max_autotune": True},
    "max-autotune": {"max_autotune": True, "triton.cudagraphs": True},
    "reduce-overhead": {"triton.cudagraphs": True},
}


class CompileFailed(RuntimeError):
    """torch.compile could not build or run the denoiser; the message says what to install or switch off."""


class CompiledDenoiser(nn.Module):
    """A denoiser run through its own compiled entry function.

    dynamo keeps compiled graphs per code object and stops compiling one after
    ``recompile_limit`` (8) graphs, falling back to eager with only a log line. Compiling modules
    directly shares one code object (``Module._call_impl``) between every compiled model, so the
    ninth PVTT Accelerate run in a ComfyUI session would silently run eager (measured). Each
    instance therefore gets a fresh code object, whose graphs are freed with it.
    ``freezing`` is switched on around every call (see the module docstring); CUDA-graph outputs
    are copied, because the next replay overwrites them.
    """

    _instances = itertools.count()

    def __init__(self, inner: nn.Module, options: dict, freezing: bool):
        super().__init__()
        self.inner = inner  # registered, so .parameters() and .to() reach the weights
        self.options = options
        self.freezing = freezing
        self.copy_outputs = bool(options.get("triton.cudagraphs"))

        def entry(**inputs):
            return inner(**inputs)

        code = entry.__code__.replace(co_name=f"pvtt_denoiser_{next(self._instances)}")
        fresh = types.FunctionType(code, entry.__globals__, code.co_name, entry.__defaults__, entry.__closure__)
        with _freezing(freezing):
            self.compiled = torch.compile(fresh, options=options or None, dynamic=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    def forward(self, **inputs):
        try:
            with _freezing(self.freezing):
                out = self.compiled(**inputs)
        except Exception as exc:
            if type(exc).__module__.startswith("torch._"):  # dynamo/inductor, not the model
                raise CompileFailed(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:300]}). On a CPU it "
                                    f"needs a C++ compiler (g++ or clang on Linux/macOS, MSVC on Windows); install "
                                    f"one, or set compile to off or auto (auto skips compiling where no compiler "
                                    f"is found).") from exc
            raise
        return tuple(t.clone() for t in out) if self.copy_outputs else out


def _freezing(on: bool):
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=on)


def effective_options(mode: str, device: torch.device) -> dict:
    """``mode``'s inductor options on ``device``: CUDA graphs only where CUDA runs."""
    if mode not in MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(MODES)}")
    return {k: v for k, v in MODES[mode].items() if k != "triton.cudagraphs" or device.type == "cuda"}


def compile_denoiser(denoiser: nn.Module, mode: str = "default", freezing: bool = True) -> CompiledDenoiser:
    """The denoiser compiled with ``mode``'s options (``effective_options``) and frozen weights."""
    device = next(denoiser.parameters()).device
    return CompiledDenoiser(denoiser, effective_options(mode, device), freezing)


def compiled_graph_count() -> int:
    """Graphs dynamo has compiled in this process (a recompilation adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
