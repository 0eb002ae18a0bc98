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

``paste_residual_edm`` adds EDM's preconditioning (Karras et al. 2022, "Elucidating the design space"),
centred on the paste instead of on zero. Plain ``paste_residual`` asks the network for the whole correction
at every noise level, also near clean, where the logit-normal training draws almost never go (sigma < 0.05
in 0.2 % of draws): there a 3741-step ``--specular`` teacher's clean estimate was 50 times further from the
truth than the noisy input itself (x0 MSE 0.019 against 0.0004 at sigma 0.01), so an Euler sampler's last
steps replaced the detail it had drawn with a one-shot guess. With EDM's skip the estimate is

    x0 = base + c_skip (x_t / (1 - sigma) - base) + c_out F,

where ``x_t / (1 - sigma)`` is the clip plus noise of standard deviation ``sigma / (1 - sigma)`` (EDM's
sigma), ``c_skip = e^2 / (e^2 + sigma_edm^2)`` and ``c_out = sigma_edm e / sqrt(e^2 + sigma_edm^2)`` with ``e``
the spread of the correction (EDM's sigma_data, ``RESIDUAL_STD``): near clean the noisy input is kept
whatever the network says, at pure noise the estimate is the paste plus ``e F``, and ``F`` has unit scale
at every level. The velocity it implies is written without dividing by ``sigma`` or ``1 - sigma``, so it is
exact from pure noise to clean. Trained by the same command, it lowered the few-step sampler's and a 4-step
student's Fréchet distance but not the CFG-guided Euler sampler's (README, ``docs/sampler_eval/specular_edm``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI reads PREDICTIONS without importing torch
    import torch
    from torch import nn

MIN_SIGMA = 1e-3
#: EDM's sigma_data for ``paste_residual_edm``: the standard deviation of (clean clip - paste) inside the
#: mask in model space, measured 0.33 on the 64 gate clips of the --specular 0.6 training data.
RESIDUAL_STD = 0.33


def paste_base(features: torch.Tensor) -> torch.Tensor:
    """The paste composite in model space from ``WanConcatPVTT`` features [B, 7, F, h, w]: channels 0-2 are
    the template zeroed inside the region, 4-6 the paste zeroed outside it."""
    return features[:, 0:3] + features[:, 4:7]


def velocity_from_residual(residual: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor,
                           features: torch.Tensor) -> torch.Tensor:
    """The velocity whose clean estimate is ``paste_base(features) + residual``; ``sigma`` is [B]."""
    x0 = paste_base(features) + residual
    return (x_t - x0) / sigma.clamp_min(MIN_SIGMA).view(-1, 1, 1, 1, 1)


def velocity_from_edm_residual(out: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor,
                               features: torch.Tensor) -> torch.Tensor:
    """The velocity whose clean estimate is ``base + c_skip (x_t / (1 - sigma) - base) + c_out out``.

    With ``a = 1 - sigma`` and ``d = e^2 a^2 + sigma^2``: ``c_skip / a = e^2 a / d``, ``c_skip = e^2 a^2 / d``
    and ``c_out = sigma e / sqrt(d)``, so ``(x_t - x0) / sigma = ((sigma - e^2 a) x_t - sigma base) / d
    - e out / sqrt(d)``, finite at both ends (``d >= e^2 / (1 + e^2)`` > 0)."""
    e2 = RESIDUAL_STD ** 2
    s = sigma.view(-1, 1, 1, 1, 1)
    a = 1 - s
    d = e2 * a ** 2 + s ** 2
    return ((s - e2 * a) * x_t - s * paste_base(features)) / d - RESIDUAL_STD * out / d.sqrt()


#: The predictions whose network draws a correction of the paste (trained on the clean-clip estimate), each with
#: the function turning the network's output into the velocity it implies.
RESIDUAL_VELOCITY = {"paste_residual": velocity_from_residual, "paste_residual_edm": velocity_from_edm_residual}
RESIDUAL_PREDICTIONS = tuple(RESIDUAL_VELOCITY)
PREDICTIONS = ("velocity", *RESIDUAL_PREDICTIONS)


def zero_output(backbone: "nn.Module") -> None:
    """Zero the backbone's last projection, so an untrained model predicts the paste composite itself."""
    from torch import nn

    nn.init.zeros_(backbone.proj_out.weight)
    nn.init.zeros_(backbone.proj_out.bias)
