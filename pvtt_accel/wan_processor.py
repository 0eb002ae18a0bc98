"""A Wan attention processor with a pluggable attention kernel, for kernels diffusers' dispatcher lacks.

diffusers' ``WanAttnProcessor`` routes attention through its dispatcher, whose backends are a fixed
enum. PVTT's bf16 CPU kernel (``decomposed``: two bf16 GEMMs around a softmax; on CPUs with
AVX512-BF16 twice as fast as PyTorch's CPU flash kernel in bf16 at Wan's head sizes) and token
merging need their own kernel, so this processor repeats the stock projection, QK-norm and RoPE
steps and calls ``kernel`` instead. Image-to-video attention (``add_k_proj``) is left to the stock processor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.models.transformers.transformer_wan import (
    WanAttnProcessor,
    _get_qkv_projections,
)

#: Above this many keys the explicit score matrix of the decomposed form costs too much memory
#: (Wan 1.3B at 480p, 81 frames: 32760 tokens, ~13 GB per call in bf16); the fused kernel is used instead.
DECOMPOSED_MAX_TOKENS = 4096

#: kernel(query, key, value, is_self_attention) -> output; tensors are [batch, tokens, heads, head_dim].
AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], torch.Tensor]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding (as in diffusers' processor)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.type_as(x)


class KernelWanAttnProcessor:
    """``WanAttnProcessor`` with ``kernel`` in place of ``dispatch_attention_fn``."""

    def __init__(self, kernel: AttentionKernel, name: str):
        self.kernel = kernel
        self.name = name
        self._stock = WanAttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if attn.add_k_proj is not None or attention_mask is not None:
            return self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        is_self = encoder_hidden_states is None
        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = apply_rotary(query, *rotary_emb)
            key = apply_rotary(key, *rotary_emb)
        out = self.kernel(query, key, value, is_self).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def decomposed_attention(query, key, value, is_self=True):
    """softmax(Q Kᵀ / √d) V as two batched GEMMs and a softmax, in the inputs' dtype.

    On CPUs with AVX512-BF16 the bf16 GEMMs run ~4× faster than fp32 and PyTorch's CPU flash kernel
    gains nothing from bf16; this form is ~2× faster than it at 576 tokens, head_dim 32. With a
    single key (the tiny model's one context token) the softmax is exactly 1, so the query side
    is skipped, and torch.compile then drops the unused query projection too. Long sequences go
    to the fused kernel (``DECOMPOSED_MAX_TOKENS``).
    """
    if key.shape[1] == 1:  # one context token: softmax over a single logit is 1, the output is its value
        return value.expand(-1, query.shape[1], -1, -1)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, H, N, D]
    if key.shape[1] > DECOMPOSED_MAX_TOKENS:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
    return torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
