"""One entry point for PyTorch-side acceleration: ``accelerate(loaded, options)``.

The checkpoint's denoiser is copied (the caller's model, e.g. one cached by the ComfyUI loader,
is never modified), then, in this order: cast to the compute precision, given its attention
kernel (and optional token merging), INT8-quantised, wrapped so the sampler still sees fp32, and
compiled. The result is a LoadedModel that samples like the original up to the rounding of the
chosen precision (INT8 and token merging approximate more; the benchmark reports each one's PSNR),
with ``metadata["acceleration"]`` saying what runs.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch

from ._train import train_module
from .attention import BACKENDS, apply_attention_backend
from .compile import MODES as COMPILE_MODES
from .compile import compile_denoiser
from .denoiser import (
    LoadedModel,
    calibration_batch,
    condition_batch,
    get_denoiser,
    require_pytorch_denoiser,
    with_denoiser,
)
from .int8 import MODES as INT8_MODES
from .int8 import quantize_int8
from .precision import DTYPES, DtypeAdapter, cast_transformer

sample_from_metadata = train_module("sampling.samplers").sample_from_metadata


@dataclass(frozen=True)
class AccelerationOptions:
    """What to apply; the defaults keep fp32 weights and pick the attention kernel (``auto``)."""

    attention: str = "auto"
    precision: str = "fp32"
    compile: str = "off"
    int8: str = "off"
    tome_ratio: float = 0.0
    calibration_clips: int = 4

    def __post_init__(self):
        if self.attention != "auto" and self.attention not in BACKENDS:
            raise ValueError(f"unknown attention backend {self.attention!r}; choose auto or one of {', '.join(BACKENDS)}")
        if not 0.0 <= self.tome_ratio <= 0.5:
            raise ValueError(f"tome_ratio must be in [0, 0.5] (the fraction of tokens merged), got {self.tome_ratio}")
        if self.precision not in DTYPES:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(DTYPES)}")
        if self.compile != "off" and self.compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {self.compile!r}; choose off or one of {', '.join(COMPILE_MODES)}")
        if self.int8 != "off" and self.int8 not in INT8_MODES:
            raise ValueError(f"unknown INT8 mode {self.int8!r}; choose off or one of {', '.join(INT8_MODES)}")

    def label(self) -> str:
        """Short name for tables: e.g. ``bf16+decomposed+compile`` or ``eager``."""
        parts = [self.precision] if self.precision != "fp32" else []
        parts += [self.attention] if self.attention not in ("auto", "sdpa") else []
        parts += [f"int8-{self.int8}"] if self.int8 != "off" else []
        parts += [f"tome{self.tome_ratio:g}"] if self.tome_ratio else []
        parts += ["compile" if self.compile == "default" else f"compile-{self.compile}"] if self.compile != "off" else []
        return "+".join(parts) or "eager"


def sample_synthetic(loaded: LoadedModel, clips: int, callback=None) -> None:
    """Run the checkpoint's own sampler on ``clips`` synthetic clips at its video size, so every
    step's real inputs pass through the denoiser: INT8 SmoothQuant observers record them, and a
    compiled denoiser compiles at exactly the shapes sampling uses. ``callback`` is the sampler's."""
    device = next(loaded.model.parameters()).device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in calibration_batch(loaded, clips).items()}
    with torch.no_grad():
        cond = condition_batch(loaded.model, batch)
        sample_from_metadata(loaded.model, cond, loaded.metadata, None, torch.Generator().manual_seed(0),
                             callback=callback)


def accelerate(loaded: LoadedModel, options: AccelerationOptions) -> LoadedModel:
    """A copy of ``loaded`` whose denoiser runs with ``options``."""
    require_pytorch_denoiser(loaded, "PVTT Accelerate")
    dtype = DTYPES[options.precision]
    transformer = copy.deepcopy(get_denoiser(loaded.model))
    if dtype != torch.float32:
        cast_transformer(transformer, dtype)
    choice = apply_attention_backend(transformer, options.attention, tome_ratio=options.tome_ratio)

    def wrapped(module):
        return DtypeAdapter(module, dtype) if dtype != torch.float32 else module

    quantized = 0
    if options.int8 != "off":
        quantized = quantize_int8(transformer, options.int8,
                                  lambda: sample_synthetic(with_denoiser(loaded, wrapped(transformer), {}),
                                                           options.calibration_clips))
    denoiser = wrapped(transformer)
    if options.compile != "off":
        denoiser = compile_denoiser(denoiser, options.compile)
    attention = f"tome+{choice.used}" if options.tome_ratio else choice.used
    record = {**asdict(options), "label": options.label(), "attention_used": attention,
              "attention_reason": choice.reason, "int8_layers": quantized, "compile_options": getattr(denoiser, "options", None),
              "runtime": "pytorch"}
    return with_denoiser(loaded, denoiser, record)
