"""Per-pixel loss weights over a clip's edit region: the teacher's training loss and, on demand, the students'
ground-truth loss (``distill --truth-region``) weigh the product's pixels, and its interior most."""

from __future__ import annotations

import torch

from .sampling.composite import grow_mask


def interior_of(region: torch.Tensor) -> torch.Tensor:
    """The region's pixels whose 8 neighbours are all in it too (``region`` [B, 1, F, h, w] in 0..1): the
    region shrunk by one pixel, frame by frame, with the composite's own ``grow_mask``."""
    return grow_mask(region, -1)


def loss_weight(region: torch.Tensor, mask_weight: float, interior_weight: float = 0.0) -> torch.Tensor:
    """Per-pixel loss weight: 1 on the background, ``mask_weight`` in the region, plus ``interior_weight``
    at its interior pixels.

    Why the interior gets its own weight: at a designer's size the pipeline keeps only the correction a
    paste-residual model draws at the region's interior pixels (``paste_correction``); an edge pixel mixes
    the product with its surroundings. On the teacher's own clips the edge and the ring around it carry
    about 20 times the interior's share of a region-weighted loss, so the model learns its edges and
    leaves the interior, which needs a correction of a few hundredths, less precise than the paste it
    was given."""
    weight = 1 + (mask_weight - 1) * region
    if interior_weight:
        weight = weight + interior_weight * interior_of(region)
    return weight
