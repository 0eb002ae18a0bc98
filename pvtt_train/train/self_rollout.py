"""Self-rollout inputs: train the teacher where its own Euler steps take it (scheduled sampling for flow matching).

Why: on the ``--specular`` data a tiny teacher's clean estimates have the truth's detail on true noisy clips at
every sigma, but its 50-step Euler sampler ends with more high-frequency energy than the truth, built up over
the whole path (README, issue 14). One-step remedies (input perturbation, DREAM: ``dream.py``) show the network
a single step's error; this shows it several of its own steps'. The truth is noised to a higher sigma
``sigma + steps * spacing`` (at most 1), the model walks it down to ``sigma`` in ``steps`` Euler steps without
gradients (the template put back outside the mask at each step, as the sampler does), and the network is
trained on where that walk ends, with the truth as its clean target. The target is what the sampler needs
there: the best clean estimate from the input its own steps made. On the 750-step specular EDM recipe a walk
of 0.6 took Euler 50 from 6.489 to 5.316 but the few-step sampler from 2.623 to 4.281 at its best (README),
so the 50-step sampler was still not the teacher's best.
"""

from __future__ import annotations

import torch

from ..models.schedule import FlowSchedule, per_sample
from ..sampling.samplers import reinject_background


def rollout_input(model, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, cond, keep: torch.Tensor,
                  steps: int, spacing: float) -> torch.Tensor:
    """The input at ``sigma`` ([B]) after ``steps`` of the model's own Euler steps from the truth noised higher."""
    start = (sigma + steps * spacing).clamp(max=1.0)
    x = FlowSchedule.noise(x0, noise, start)
    with torch.no_grad():
        for k in range(steps):
            s_from = start + (sigma - start) * (k / steps)
            s_to = start + (sigma - start) * ((k + 1) / steps)
            v = model.velocity(x, s_from, cond, keep_reference=keep)
            x = x + per_sample(s_to - s_from, x) * v
            x = reinject_background(x, cond, s_to, noise)
    return x
