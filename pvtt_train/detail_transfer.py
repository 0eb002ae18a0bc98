"""Fine detail from the product photo on top of a model that works at a small size.

A model that renders at its working size (16x16 for the embedded one) cannot draw a label, a texture
or a thin cap at a designer's 256x256 or 1080p: upsampled, its output is a soft blob of about the
right colour. What it can supply is what the photo cannot: light, shading, shadow, blending. The
photo, warped onto the mask at full resolution (``aligned_warp``), has the detail but none of that.

So the two are split by frequency, as in a Laplacian pyramid. The full-size *paste composite* ``P``
(the warped photo inside the mask, the template outside) goes through the same shrink-and-grow the
pipeline applies to the model (``round_trip``); what the round trip loses is the detail the model
cannot hold, and it is added back inside the mask:

    out = up(model) + inside * (P - round_trip(P)).

Inside the mask that is ``P + (up(model) - round_trip(P))``: the paste at full resolution, corrected by
what the model draws differently at its own resolution. The model is trained to draw the truth shrunk
to its size, edge pixels mixed with the background as a camera would; ``round_trip(P)`` mixes the
paste's edge in the same way, so a model that draws the truth adds exactly the truth's low frequencies
(light, shading) and its edge mixing cancels. (A low-pass of the photo alone, cut to the mask, would not
match the model's mixed edge pixels: every edge would take on the background's colour.)

A model with a paste channel (the embedded ``wan_concat``) is given the same full-size warp shrunk to
its working size (``working_size_paste``), as it was in training, rather than a paste it fits itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def paste_composite(warp: torch.Tensor, inside: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """The warped photo [F,H,W,3] inside the mask ``inside`` [F,H,W] (0..1), the template elsewhere."""
    m = inside.clamp(0, 1)[..., None]
    return m * warp + (1 - m) * template


def working_size_paste(warp: torch.Tensor, inside: torch.Tensor,
                       shrink: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The full-size warp [F,H,W,3] at the working size, ``shrink`` (the pipeline's own resampling) normalised
    by the mask's coverage, so the zeros outside the mask do not darken the product's edge pixels."""
    m = inside.clamp(0, 1)[..., None]
    coverage = shrink(m)
    return torch.where(coverage > 1e-3, shrink(warp * m) / coverage.clamp_min(1e-3), torch.zeros(()))


def add_photo_detail(generated: torch.Tensor, paste: torch.Tensor, inside: torch.Tensor,
                     round_trip: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``generated`` [F,H,W,3] (the model's output grown to full size) plus, inside the mask [F,H,W], the
    detail of the paste composite ``paste`` that ``round_trip`` (the pipeline's resampling through the
    working size and back) removes; unchanged outside the mask; clamped to 0..1."""
    if generated.shape != paste.shape or inside.shape != paste.shape[:3]:
        raise ValueError(f"generated {tuple(generated.shape)}, paste {tuple(paste.shape)} and mask "
                         f"{tuple(inside.shape)} must share frames and size")
    return (generated + inside.clamp(0, 1)[..., None] * (paste - round_trip(paste))).clamp(0, 1)
