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
"""

from __future__ import annotations

import torch


def truth_loss(x0: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """x0 MSE between the student's sample ``x0`` and the ground truth ``target`` in model space
    (``data.dataset.target_latents``), in float32 whatever the autocast."""
    return torch.nn.functional.mse_loss(x0.float(), target.to(x0).float())
