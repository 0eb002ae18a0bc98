"""INT8 quantisation of a denoiser's transformer blocks with torchao.

- ``w8a16``: weight-only INT8 (per-channel scales); activations stay in the compute dtype.
- ``w8a8``: INT8 weights and dynamically quantised INT8 activations, with SmoothQuant: a
  calibration pass over real sampling calls records each linear layer's activation ranges, and a
  per-channel factor (alpha 0.5) moves activation outliers into the weights before quantising.

Only the linear layers inside transformer blocks are quantised; the patch embedding, time and
condition embedders and the output head stay in float (they are small and most sensitive).
Quality is checked by the benchmark as PSNR of sampled frames against the unquantised model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .optional import require

MODES = ("w8a16", "w8a8")


def is_block_linear(module: nn.Module, name: str) -> bool:
    """A linear layer inside a transformer block (``blocks.N…`` or VACE's ``vace_blocks.N…``)."""
    return isinstance(module, nn.Linear) and "blocks." in name


def quantize_int8(transformer: nn.Module, mode: str, calibrate: Callable[[], None] | None = None,
                  alpha: float = 0.5) -> int:
    """Quantise ``transformer`` in place; ``calibrate()`` must run it on real inputs (w8a8 only).

    Returns the number of linear layers whose weight is now a torchao quantised tensor.
    """
    if mode not in MODES:
        raise ValueError(f"unknown INT8 mode {mode!r}; choose one of {', '.join(MODES)}")
    require("INT8 quantisation", "torchao",
            alternative="Without it, set int8 to off or auto (auto tries INT8 only where torchao is installed).")
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    if mode == "w8a16":
        quantize_(transformer, Int8WeightOnlyConfig(), filter_fn=is_block_linear)
        return quantized_linears(transformer)
    if calibrate is None:
        raise ValueError("w8a8 needs a calibration pass: pass calibrate=<function running the model on real inputs>")
    from torchao.prototype.smoothquant import SmoothQuantConfig
    from torchao.quantization.quantize_.common.quantization_step import QuantizationStep

    config = SmoothQuantConfig(base_config=Int8DynamicActivationInt8WeightConfig(), step=QuantizationStep.PREPARE,
                               alpha=alpha)
    quantize_(transformer, config, filter_fn=is_block_linear)
    calibrate()
    config.step = QuantizationStep.CONVERT
    quantize_(transformer, config, filter_fn=lambda m, n: hasattr(m, "obs"))
    return quantized_linears(transformer)


def quantized_linears(transformer: nn.Module) -> int:
    """Linear layers whose weight is a quantised tensor subclass rather than a plain tensor."""
    return sum(isinstance(m, nn.Linear) and type(m.weight.data) is not torch.Tensor
               for m in transformer.modules())
