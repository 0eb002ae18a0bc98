"""How the template's light changes over a clip, read off its background: one gain per frame.

The embedded model works in windows of a few frames and was trained on clips whose product photo
matches the *first frame's* light (``data.synthetic``: the light drifts from a gain of 1). Inside one
window it can read the drift from the background it sees; across windows it cannot, because every window
looks to it like the start of a clip. So the pipeline scales the paste it gives each window by the light
of the window's first frame relative to the clip's first frame, measured here, and the model carries on
from there. Without it, every window after the first renders the product at the clip's opening light.

The gain of frame ``f`` is the ratio of the template's mean brightness in frames ``f`` and 0 over the
pixels outside the product in both (the mask grown by a margin, so the product's edge and shadow do not
count). Exposure drift and light changes multiply the whole scene, so a ratio of means measures them;
a camera that pans over a darker background will read as a light change, which is why the gain is
clamped to ``GAIN_RANGE``.
"""

from __future__ import annotations

import torch

from .sampling.composite import grow_mask

#: Pixels the product mask is grown by before the background is read, at 256 px (scaled with the frame).
MARGIN_AT_256 = 6
GAIN_RANGE = (0.5, 2.0)


def clip_light_gain(template: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[F] brightness of each frame's background relative to frame 0's (1 where nothing is left to compare).

    ``template`` [F,H,W,3] in 0..1, ``mask`` [F,H,W] (1 = the product)."""
    margin = max(1, round(MARGIN_AT_256 * min(template.shape[1:3]) / 256))
    product = grow_mask((mask > 0.5).float(), margin) > 0.5
    background = ~(product | product[:1])  # outside the product in this frame and in frame 0
    luma = template.float().mean(-1)
    weight = background.float()
    here = (luma * weight).flatten(1).sum(1)
    first = (luma[:1] * weight).flatten(1).sum(1)
    gain = torch.where(first > 1e-6, here / first.clamp_min(1e-6), torch.ones_like(here))
    return gain.clamp(*GAIN_RANGE)
