"""Token merging (ToMe) for the video transformer's self-attention: fewer keys, same queries.

ToMe (Bolya et al., 2023) merges similar tokens by bipartite soft matching. Here the merge is
applied to the keys and values of self-attention only: every query stays, so no "unmerge" is
needed and the block's output keeps its shape, while the score matrix (the CPU cost at Wan's
head sizes) shrinks from N×N to N×(N−r). Tokens alternate between the two sides of the matching
(even = destinations, odd = sources); each source is matched to its most similar destination by
the cosine similarity of its key across all heads, the r best-matched sources are averaged into
their destinations, and proportional attention (log of each merged token's size added to the
logits) keeps the softmax mass of a merged group equal to that of its members.

It is an approximation: the benchmark reports its speed and its PSNR against exact attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .wan_processor import DECOMPOSED_MAX_TOKENS


def merge_plan(key: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(kept sources, merged sources, their destinations) for ``key`` [B, N, H, D]; None if r = 0."""
    tokens = key.shape[1]
    sources = tokens // 2
    r = min(int(tokens * ratio), sources)
    if r <= 0:
        return None
    metric = F.normalize(key.flatten(2).float(), dim=-1)
    similarity = metric[:, 1::2] @ metric[:, ::2].transpose(1, 2)  # [B, sources, destinations]
    best, best_dst = similarity.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    merged = order[:, :r]
    return order[:, r:], merged, best_dst.gather(1, merged)


def merge_tokens(x: torch.Tensor, plan) -> torch.Tensor:
    """[B, N, C] -> [B, N - r, C]: kept sources, then destinations averaged with what merged into them."""
    kept, merged, dst = plan
    channels = x.shape[-1]
    src, dest = x[:, 1::2], x[:, ::2]
    take = lambda idx: src.gather(1, idx[..., None].expand(-1, -1, channels))
    dest = dest.scatter_reduce(1, dst[..., None].expand(-1, -1, channels), take(merged), reduce="mean",
                               include_self=True)
    return torch.cat([take(kept), dest], dim=1)


def tome_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, ratio: float) -> torch.Tensor:
    """Self-attention over merged keys/values with proportional attention; [B, N, H, D] in and out."""
    plan = merge_plan(key, ratio)
    batch, tokens, heads, dim = key.shape
    if plan is None:
        k, v, bias = key, value, None
    else:
        k = merge_tokens(key.flatten(2), plan).unflatten(2, (heads, dim))
        v = merge_tokens(value.flatten(2), plan).unflatten(2, (heads, dim))
        kept, _, dst = plan
        members = torch.ones(batch, (tokens + 1) // 2, device=key.device).scatter_add(
            1, dst, torch.ones(dst.shape, device=key.device))  # a destination counts itself and its sources
        size = torch.cat([torch.ones(kept.shape, device=key.device), members], dim=1)
        bias = size.log().to(query.dtype)[:, None, None, :]  # [B, 1, 1, N - r]
    q, k, v = (t.transpose(1, 2) for t in (query, k, v))
    if query.dtype == torch.float32 or tokens > DECOMPOSED_MAX_TOKENS:
        # PyTorch's fused kernel takes the bias as a float mask and never holds the score matrix
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2)
    scores = torch.matmul(q * dim ** -0.5, k.transpose(-1, -2))  # short half-precision: see decomposed_attention
    if bias is not None:
        scores = scores + bias
    return torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
