"""The ground-truth loss: the student's x0 against the clip's own target, for data that has one.

Why: DMD matches the student to the teacher's distribution and the regression loss to the teacher's
samples, so a student distilled by them alone inherits the teacher's errors. PVTT's clips are paired
(template, mask and product photo in, the edited clip out): every synthetic clip, and every prepared
clip with a ``target.mp4``. A student can learn from that truth directly, as DMD2's GAN term on real
images lets its students pass their teachers; where the target is fixed by the conditioning, as in a
product swap, the x0 MSE against it is the most direct signal there is. It is off by default
(``--weight truth=W`` turns it on): a teacher's students stay pure distillation unless asked.

The student's x0 is the one DMD scores (its own few-step rollout), so the loss trains the sampler the
student ships with, not a single denoising step.

By default every pixel counts alike. ``--truth-region MASK,INTERIOR`` weighs them as a teacher's own loss does
(``region_weight.loss_weight``): a plain MSE spends a long run on the product's edges, which the gates' Fréchet
distance measures but the nodes replace by the photo at a designer's size, and lets the interior drift.
"""

from __future__ import annotations

import torch

from ..region_weight import loss_weight
from .config import UNIFORM_TRUTH


def truth_loss(x0: torch.Tensor, target: torch.Tensor, region: torch.Tensor | None = None,
               weights: tuple[float, float] = UNIFORM_TRUTH) -> torch.Tensor:
    """x0 MSE between the student's sample ``x0`` and the ground truth ``target`` in model space
    (``data.dataset.target_latents``), in float32 whatever the autocast; with ``weights`` (mask, interior)
    other than uniform, each pixel weighed by ``loss_weight`` over the edit ``region`` [B, 1, F, h, w] and the
    mean taken over the weights, so the loss keeps the plain MSE's scale."""
    error = (x0.float() - target.to(x0).float()).square()
    if tuple(weights) == UNIFORM_TRUTH:
        return error.mean()
    weight = loss_weight(region.float(), *weights).expand_as(error)
    return (error * weight).sum() / weight.sum()
