"""Identity-preservation loss: does every frame's product look like the product in the photo?"""

from __future__ import annotations

import torch
from torch import nn

from .crops import product_crops, reference_crops


def identity_loss(encoder: nn.Module, frames: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean over frames with a product of 1 - cos(embed(frame's product crop), embed(photo's product crop)).

    ``frames`` [B,F,H,W,3] and ``reference`` [B,H,W,3] in 0..1, ``mask`` [B,F,H,W] (where the product
    is in each frame). Differentiable with respect to ``frames`` (and ``reference``); the encoder is
    meant to be frozen (``load_identity_encoder`` returns it so). Frames with an empty mask do not
    count; with none left the loss is a zero that still belongs to the graph.
    """
    size = encoder.crop_size
    crops, weight = product_crops(frames, mask, size)
    b, f = frames.shape[:2]
    emb = encoder(crops).view(b, f, -1)
    ref = encoder(reference_crops(reference, size))
    cos = (emb * ref[:, None]).sum(-1).flatten()
    weight = weight.to(cos.dtype)
    return ((1 - cos) * weight).sum() / weight.sum().clamp_min(1)
