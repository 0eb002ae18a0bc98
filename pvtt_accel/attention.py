"""Attention backend selection for PVTT's diffusers transformers.

Backends go through diffusers' attention dispatcher (``ModelMixin.set_attention_backend``):

- ``sdpa``: PyTorch scaled-dot-product attention, which picks its own kernel; the default on CPU;
- ``sdpa_flash``: PyTorch SDPA restricted to its FlashAttention-2 kernel (CUDA only);
- ``flash``: the flash-attn package (FA2); ``flash3``: FlashAttention 3 (Hopper, flash-attn 3);
- ``sage``: SageAttention (CUDA only);
- ``math``: PyTorch's reference math attention (slow; used for parity checks);
- ``decomposed``: two GEMMs around a softmax, through PVTT's own Wan processor
  (``wan_processor.py``); in bf16 on CPUs with AVX512-BF16 it is twice as fast as PyTorch's flash
  kernel;
- ``auto``: the fastest one that can run here (on CPU: ``decomposed`` for bf16/fp16 weights,
  ``sdpa`` for fp32, where the two are equal and ``sdpa`` is exact to the reference).

Token merging (``tome_ratio`` > 0, see ``tome.py``) also goes through PVTT's processor.

A backend that cannot run here (no CUDA, package missing) falls back to ``sdpa`` with a warning
that says what to install; ``strict=True`` raises instead.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from functools import partial

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from .tome import tome_attention
from .wan_processor import KernelWanAttnProcessor, decomposed_attention

logger = logging.getLogger("PVTT")

#: PVTT backend name -> diffusers AttentionBackendName value.
DIFFUSERS_NAMES = {
    "sdpa": "native",
    "sdpa_flash": "_native_flash",
    "math": "_native_math",
    "flash": "flash",
    "flash3": "_flash_3",
    "sage": "sage",
}
#: Backends that run through PVTT's processor instead of diffusers' dispatcher.
PROCESSOR_KERNELS = {"decomposed": decomposed_attention}
BACKENDS = (*DIFFUSERS_NAMES, *PROCESSOR_KERNELS)
#: Preference order of ``auto`` on CUDA.
AUTO_ORDER_CUDA = ("flash3", "flash", "sdpa_flash", "sdpa")
INSTALL_HINTS = {
    "flash": "pip install flash-attn --no-build-isolation (needs CUDA and nvcc; see requirements-gpu.txt)",
    "flash3": "build FlashAttention 3 from the flash-attn repository's hopper/ folder (H100/H200 only)",
    "sage": "pip install sageattention (CUDA only)",
}


class BackendUnavailable(RuntimeError):
    """The requested attention backend cannot run on this machine; the message says why and how to fix it."""


@dataclass(frozen=True)
class BackendChoice:
    requested: str
    used: str
    reason: str


def _module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def why_unavailable(name: str, device: torch.device) -> str | None:
    """None if ``name`` can run on ``device``, else the reason it cannot."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
    if name in ("sdpa", "math", "decomposed"):
        return None
    if device.type != "cuda":
        return f"{name} needs a CUDA GPU, and the model is on {device.type}"
    if name in ("flash", "flash3") and not _module_available("flash_attn" if name == "flash" else "flash_attn_interface"):
        return f"{name} needs the flash-attn package: {INSTALL_HINTS[name]}"
    if name == "flash3" and torch.cuda.get_device_capability(device)[0] < 9:
        return "FlashAttention 3 needs a Hopper (sm90) or newer GPU"
    if name == "sage" and not _module_available("sageattention"):
        return f"sage needs the sageattention package: {INSTALL_HINTS['sage']}"
    return None


def choose_backend(requested: str, device: torch.device, strict: bool = False,
                   dtype: torch.dtype = torch.float32) -> BackendChoice:
    """Resolve ``requested`` (or ``auto``) to a backend that runs on ``device`` with ``dtype`` weights."""
    device = torch.device(device)
    if requested == "auto":
        half = dtype in (torch.bfloat16, torch.float16)
        if device.type == "cuda":  # flash kernels take fp16/bf16 only
            candidates = AUTO_ORDER_CUDA if half else ("sdpa",)
        else:
            candidates = ("decomposed",) if half else ("sdpa",)
        for name in candidates:
            if why_unavailable(name, device) is None:
                return BackendChoice("auto", name, f"fastest available on {device.type}")
    reason = why_unavailable(requested, device)
    if reason is None:
        return BackendChoice(requested, requested, "as requested")
    if strict:
        raise BackendUnavailable(reason)
    logger.warning("[PVTT] attention backend %s unavailable (%s); falling back to sdpa", requested, reason)
    return BackendChoice(requested, "sdpa", f"fallback: {reason}")


def apply_attention_backend(transformer, requested: str = "auto", strict: bool = False,
                            tome_ratio: float = 0.0) -> BackendChoice:
    """Set the attention backend of a diffusers Wan transformer; returns what was chosen and why.

    The compute dtype is that of the attention projections (``blocks.0.attn1.to_q``).
    ``tome_ratio`` > 0 merges that fraction of self-attention's keys/values (``tome.py``).
    """
    probe = transformer.blocks[0].attn1.to_q.weight
    choice = choose_backend(requested, probe.device, strict, probe.dtype)
    if not 0.0 <= tome_ratio <= 0.5:
        raise ValueError(f"tome_ratio must be in [0, 0.5] (the fraction of tokens merged), got {tome_ratio}")
    if choice.used in PROCESSOR_KERNELS or tome_ratio > 0:
        kernel = PROCESSOR_KERNELS.get(choice.used) or partial(_dispatched, backend=DIFFUSERS_NAMES[choice.used])
        if tome_ratio > 0:
            kernel = partial(_tome_or_base, base=kernel, ratio=tome_ratio)
        transformer.set_attn_processor(KernelWanAttnProcessor(kernel, choice.used))
        return choice
    transformer.set_attn_processor(WanAttnProcessor())  # fresh processors: diffusers' default is native SDPA
    if choice.used != "sdpa":
        transformer.set_attention_backend(DIFFUSERS_NAMES[choice.used])
    return choice


def _dispatched(query, key, value, is_self, backend):
    """A diffusers dispatcher backend as a PVTT processor kernel (cross-attention under ToMe)."""
    return dispatch_attention_fn(query, key, value, backend=backend)


def _tome_or_base(query, key, value, is_self, base, ratio):
    """Token merging for self-attention; cross-attention (few context tokens) keeps the chosen kernel."""
    return tome_attention(query, key, value, ratio) if is_self else base(query, key, value, is_self)
