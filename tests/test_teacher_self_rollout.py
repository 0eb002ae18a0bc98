"""Self-rollout teacher inputs (``train/self_rollout.py``): where the model's own Euler steps take the truth."""

from __future__ import annotations

import torch

from pvtt_train.models.pvtt_model import WanConcatPVTT
from pvtt_train.models.schedule import FlowSchedule
from pvtt_train.region_weight import loss_weight
from pvtt_train.train.self_rollout import rollout_input
from pvtt_train.train.teacher import flow_matching_loss
from tests._tiny import SMALL_BACKBONE, paste_batch


class _ExactVelocity:
    """A model that knows the truth and the noise: its velocity is the exact ``noise - x0`` at any input."""

    def __init__(self, x0, noise):
        self.x0, self.noise = x0, noise

    def velocity(self, x_t, sigma, cond, keep_reference=None):
        return self.noise - self.x0


def _setup():
    torch.manual_seed(0)
    model, batch = WanConcatPVTT(SMALL_BACKBONE), paste_batch()
    cond = model.condition_from_paste(batch["template"], batch["mask"], batch["paste"])
    x0 = model.encode(batch["target"])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    return model, cond, x0, noise


def test_an_exact_models_rollout_ends_on_the_true_noisy_clip():
    """With nothing to drift, K Euler steps from the truth noised higher land on the truth noised at sigma
    inside the mask; outside it the template is put back as the sampler does."""
    _, cond, x0, noise = _setup()
    sigma = torch.tensor([0.3, 0.95])  # the second starts at 1 (clamped): it walks a shorter way
    x = rollout_input(_ExactVelocity(x0, noise), x0, noise, sigma, cond, torch.ones(2), steps=3, spacing=0.1)
    s = sigma.view(-1, 1, 1, 1, 1)
    inside = (1 - s) * x0 + s * noise
    outside = (1 - s) * cond.background + s * noise
    assert torch.allclose(x, cond.region * inside + (1 - cond.region) * outside, atol=1e-5)


def test_a_real_models_rollout_moves_the_input_and_the_loss_keeps_the_clean_target():
    model, cond, x0, noise = _setup()
    sigma = torch.tensor([0.3, 0.6])
    x = rollout_input(model, x0, noise, sigma, cond, torch.ones(2), steps=2, spacing=0.1)
    true_input = FlowSchedule.noise(x0, noise, sigma)
    assert (cond.region * (x - true_input)).abs().max() > 1e-3  # an untrained model drifts inside the mask
    assert not x.requires_grad  # the walk costs no backward

    seen = []
    velocity = model.velocity
    model.velocity = lambda x_t, sig, c, **kw: seen.append((x_t, sig, velocity(x_t, sig, c, **kw))) or seen[-1][2]
    batch = paste_batch()
    loss = flow_matching_loss(model, batch, FlowSchedule(), 4.0, 0.0, torch.Generator().manual_seed(7),
                              rollout=(2, 0.1))
    assert len(seen) == 3  # two walking steps, then the trained call
    x_in, sig, v = seen[-1]
    s = sig.view(-1, 1, 1, 1, 1)
    x0_batch = model.encode(batch["target"])
    target = (x_in - x0_batch) / s  # the velocity whose clean clip is the truth
    weight = loss_weight(model.condition_from_paste(batch["template"], batch["mask"], batch["paste"]).region, 4.0)
    assert torch.allclose(loss, (weight * (v - target) ** 2).mean() / weight.mean(), rtol=1e-5)
    assert v.requires_grad
