"""Run a denoiser in bf16 or fp16 while the sampler around it stays in fp32.

Weights are cast except the modules diffusers keeps in fp32 for Wan (``_keep_in_fp32_modules``:
RoPE, time embedder, modulation tables, norms), as ``from_pretrained(torch_dtype=...)`` would.
``DtypeAdapter`` casts the float inputs in and the prediction back out, so samplers, background
re-injection and x0 arithmetic keep full precision and only the network runs in half precision.
"""

from __future__ import annotations

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cast_transformer(transformer: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast float parameters and buffers in place, except those under a ``_keep_in_fp32_modules``
    name (a module or a parameter such as ``scale_shift_table``); returns the transformer."""
    keep = set(getattr(transformer, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*transformer.named_parameters(), *transformer.named_buffers()]:
        if tensor.is_floating_point() and not keep.intersection(name.split(".")):
            tensor.data = tensor.data.to(dtype)
    return transformer


class DtypeAdapter(nn.Module):
    """Calls ``inner`` with float inputs cast to ``compute_dtype``; returns fp32 (the caller's dtype)."""

    def __init__(self, inner: nn.Module, compute_dtype: torch.dtype):
        super().__init__()
        self.inner = inner
        self.compute_dtype = compute_dtype

    @property
    def dtype(self) -> torch.dtype:
        """What callers should feed: fp32; the cast happens here."""
        return torch.float32

    def forward(self, timestep: torch.Tensor, return_dict: bool = False, **inputs: torch.Tensor):
        out_dtype = inputs["hidden_states"].dtype
        cast = {k: v.to(self.compute_dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        out = self.inner(timestep=timestep, return_dict=False, **cast)[0]
        return (out.to(out_dtype),)
