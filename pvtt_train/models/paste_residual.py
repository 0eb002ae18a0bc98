"""Paste-residual prediction: the network draws only what the aligned paste gets wrong.

A tiny velocity model must learn to reproduce the whole clip, background and pasted product, before it
can improve on the paste; on clips unlike its training data it does neither well, and an upsampled
16x16 guess of the whole frame is far worse than the paste it was given (see issue 14's held-out table).
With paste-residual prediction the clean-clip estimate is

    x0 = base + F(x_t, sigma, features),    base = template outside the mask, aligned paste inside,

so a network that outputs zero reproduces the paste composite exactly, and training only has to learn
the correction (light, shading, edge blending, pose). ``base`` is read off the condition's own channels
(masked template + masked paste), so it is the paste at the working size, and a dropped reference
(classifier-free guidance's unconditional branch) leaves a neutral grey region there.

The samplers, distillation and gates all speak velocity, so the estimate is returned as the flow
velocity that produces it, ``v = (x_t - x0) / sigma`` (``x_t = (1 - sigma) x0 + sigma noise``).
``sigma`` is floored at ``MIN_SIGMA`` in that division: no sampler or training draw comes that close to
clean, and the floor keeps a stray sigma of 0 finite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI reads PREDICTIONS without importing torch
    import torch
    from torch import nn

PREDICTIONS = ("velocity", "paste_residual")
MIN_SIGMA = 1e-3


def paste_base(features: torch.Tensor) -> torch.Tensor:
    """The paste composite in model space from ``WanConcatPVTT`` features [B, 7, F, h, w]: channels 0-2 are
    the template zeroed inside the region, 4-6 the paste zeroed outside it."""
    return features[:, 0:3] + features[:, 4:7]


def velocity_from_residual(residual: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor,
                           features: torch.Tensor) -> torch.Tensor:
    """The velocity whose clean estimate is ``paste_base(features) + residual``; ``sigma`` is [B]."""
    x0 = paste_base(features) + residual
    return (x_t - x0) / sigma.clamp_min(MIN_SIGMA).view(-1, 1, 1, 1, 1)


def zero_output(backbone: "nn.Module") -> None:
    """Zero the backbone's last projection, so an untrained model predicts the paste composite itself."""
    from torch import nn

    nn.init.zeros_(backbone.proj_out.weight)
    nn.init.zeros_(backbone.proj_out.bias)
