"""DREAM (Zhou et al. 2024, "Diffusion Rectification and Estimation-Adaptive Models") for rectified flow.

Why: an Euler sampler feeds the network inputs built from its own earlier clean estimates, never the true
noisy clip it was trained on. On the ``--specular`` data a tiny teacher's 50-step Euler sampler drifts there
and ends worse than its 4-step samplers (README, issue 14). DREAM trains on the input a sampler would have
made: one extra forward pass without gradients gives the model's clean estimate ``x0_hat`` of the true noisy
clip ``x_t``, and the network is then trained at

    x_t' = x_t + lam * (1 - sigma) * (x0_hat - x0),    lam = sigma ** p,

which is the truth moved ``lam`` of the way towards the model's own estimate and noised with the same noise,
while the clean-clip target stays the truth. In velocity terms the target noise moves by the same shift over
sigma, so the implied clean clip is unchanged. This is the rectified-flow form of diffusers'
``training_utils.compute_dream_and_update_latents`` (written for an epsilon-predicting UNet, so it cannot
be called on this model); ``p`` is its ``dream_detail_preservation`` (1 in the paper), with sigma in place
of ``sqrt(1 - alpha_bar)``. On the 750-step specular EDM recipe it moved Euler 50 by 5 % at most (README).
"""

from __future__ import annotations

import torch

from ..models.schedule import FlowSchedule, per_sample


def dream_shift(model, x_t: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, cond, keep: torch.Tensor,
                power: float) -> torch.Tensor:
    """The shift DREAM adds to ``x_t`` (``sigma`` [B]): ``lam * (1 - sigma) * (x0_hat - x0)``, no gradient."""
    with torch.no_grad():
        x0_hat = FlowSchedule.x0_from_velocity(x_t, model.velocity(x_t, sigma, cond, keep_reference=keep), sigma)
    s = per_sample(sigma, x_t)
    return (s ** power) * (1 - s) * (x0_hat - x0)
