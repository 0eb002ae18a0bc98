"""Temporal-consistency loss: the student's frames must move the way the template moves.

The template's optical flow (OpenCV Farneback, backward: frame t+1 -> t) is computed once per clip
and kept in a ``FlowCache`` keyed by the clip's seed. The loss warps each student frame t with
that flow and compares it with frame t+1 inside the product region, where the student generates
(outside, the template is re-injected anyway). Pixels whose flow leaves the frame do not count.

The weight ``lambda(sigma) = max(0.1, 1 - sigma)`` is noise-aware: an x0 predicted from nearly
pure noise is a blurry average whose flicker says little, so high-noise exits count less.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from ..eval.metrics import template_flow


def noise_weight(sigma: torch.Tensor) -> torch.Tensor:
    return (1 - sigma).clamp_min(0.1)


class FlowCache:
    """Template flows [F-1,H,W,2] by clip seed, computed once; least recently used dropped first."""

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self._flows: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.computed = 0

    def flows(self, batch: dict) -> torch.Tensor:
        """Flows of a batch's templates, [B,F-1,H,W,2] in pixels."""
        out = []
        for seed, template in zip(batch["seed"].tolist(), batch["template"]):
            flow = self._flows.get(seed)
            if flow is None:
                flow = torch.from_numpy(template_flow(template.cpu().numpy().astype(np.float32)))
                self.computed += 1
                self._flows[seed] = flow
                if len(self._flows) > self.capacity:
                    self._flows.popitem(last=False)
            else:
                self._flows.move_to_end(seed)
            out.append(flow)
        return torch.stack(out)


def warp_previous(frames: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames t (``[N,C,H,W]``) warped to t+1 by backward flow ``[N,H,W,2]``; returns (warped, valid)."""
    h, w = frames.shape[-2:]
    gy, gx = torch.meshgrid(torch.arange(h, dtype=flow.dtype), torch.arange(w, dtype=flow.dtype), indexing="ij")
    x = gx + flow[..., 0]
    y = gy + flow[..., 1]
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], -1).to(frames)
    warped = F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=True)
    valid = ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).to(frames)[:, None]
    return warped, valid


def temporal_loss(video: torch.Tensor, flows: torch.Tensor, mask: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Noise-weighted flow-warp error of student frames.

    ``video`` [B,F,H,W,3] in 0..1 (decoded student x0), ``flows`` [B,F-1,H,W,2] (template flow at
    the video's resolution), ``mask`` [B,F,H,W] (1 = product), ``sigma`` [B] the input sigma of
    the step that produced ``video``.
    """
    b, f, h, w, c = video.shape
    frames = video.permute(0, 1, 4, 2, 3)  # [B,F,3,H,W]
    prev = frames[:, :-1].reshape(-1, c, h, w)
    nxt = frames[:, 1:].reshape(-1, c, h, w)
    warped, valid = warp_previous(prev, flows.reshape(-1, h, w, 2).to(video))
    region = torch.maximum(mask[:, :-1], mask[:, 1:]).reshape(-1, 1, h, w).to(video) * valid
    err = ((nxt - warped) ** 2 * region).flatten(1).sum(1) / (region.flatten(1).sum(1) * c).clamp_min(1)
    per_clip = err.view(b, f - 1).mean(1)
    return (noise_weight(sigma.to(video)) * per_clip).mean()
