"""A paste-channel model's output, taken as a correction of the paste it was given and applied at full size.

The embedded model is given the product photo already placed (the full-size warp shrunk to its working
size, lit to the template's light: ``detail_transfer.working_size_paste``, ``light_match``) and draws the
clip at 16x16. What it adds to that paste, its *correction*, is all a 16x16 model can know: light,
shading, colour. So the full-size output is

    inside the mask:  P + grow(correction),   correction = model - given,

where ``P`` is the full-size paste composite lit exactly as the model's paste was and ``given`` is the
composite the model was handed (template outside its mask, the lit paste inside). A model that changes
nothing returns ``P`` itself, to the pixel, at full resolution.

Only the product's *interior* pixels at the working size count: an edge pixel mixes the product with
the old one's surroundings, so what the model draws there (the old product's colour bleeding in, its own
anti-aliasing) is no correction of the product, and grown 16x it would paint a halo a whole model pixel
wide around the edge. ``P`` already has the exact edge at full resolution; the interior's correction is
carried out to the edge pixels by ``spread_from_interior``.

Each frame window is given its own paste light (``pipeline.transfer``), so the correction and the light
are accumulated per window with the windows' cross-fade weights: ``CorrectionSum``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

#: A working-size pixel is the product's interior when the full-size mask covers at least this much of it.
SOLID_COVERAGE = 0.98


def spread_from_interior(correction: torch.Tensor, solid: torch.Tensor) -> torch.Tensor:
    """``correction`` [F,h,w,C] where ``solid`` [F,h,w] is true, carried outward ring by ring: each empty
    pixel takes the mean of its filled 3x3 neighbours. A frame with no solid pixel gets no correction."""
    x = correction.permute(0, 3, 1, 2) * solid[:, None]
    have = solid[:, None].float()
    for _ in range(max(correction.shape[1:3])):
        if bool(have.all()):
            break
        total = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        count = F.avg_pool2d(have, 3, 1, 1, count_include_pad=False)
        fill = (have == 0) & (count > 0)
        x = torch.where(fill, total / count.clamp_min(1e-6), x)
        have = torch.where(fill, torch.ones_like(have), have)
    return x.permute(0, 2, 3, 1)


class CorrectionSum:
    """The cross-faded sum, over frame windows, of the model's correction and of the paste light it was given."""

    def __init__(self, frames: int, height: int, width: int):
        self.correction = torch.zeros(frames, height, width, 3)
        self.gain = torch.zeros(frames)

    def add(self, start: int, weight: torch.Tensor, drawn: torch.Tensor, given: torch.Tensor,
            gain: torch.Tensor) -> None:
        """One window from frame ``start``: its cross-fade ``weight`` [n], what the model ``drawn`` [n,h,w,3]
        from the composite it was ``given`` [n,h,w,3], and the paste light ``gain`` [n] in it."""
        n = len(weight)
        self.correction[start: start + n] += weight.view(-1, 1, 1, 1) * (drawn - given)
        self.gain[start: start + n] += weight * gain

    def apply(self, generated: torch.Tensor, warp: torch.Tensor, inside: torch.Tensor, coverage: torch.Tensor,
              grow: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The full-size result [F,H,W,3]: ``generated`` (the model's output grown) outside the mask ``inside``
        [F,H,W]; inside it the full-size ``warp`` [F,H,W,3] at the light the model was given, plus the
        interior's correction grown by ``grow`` (working size -> full size). ``coverage`` [F,h,w] is how
        much of each working-size pixel the full-size mask covers."""
        spread = spread_from_interior(self.correction, coverage >= SOLID_COVERAGE)
        m = inside.clamp(0, 1)[..., None]
        lit = warp * self.gain.view(-1, 1, 1, 1)
        return ((1 - m) * generated + m * (lit + grow(spread))).clamp(0, 1)
