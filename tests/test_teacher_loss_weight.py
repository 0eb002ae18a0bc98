"""The teacher loss: its per-pixel weight (background, region and the region's interior) and its input."""

from __future__ import annotations

import pytest
import torch

from pvtt_train.models.pvtt_model import WanConcatPVTT
from pvtt_train.models.schedule import FlowSchedule
from pvtt_train.region_weight import interior_of, loss_weight
from pvtt_train.train.teacher import flow_matching_loss
from tests._tiny import SMALL_BACKBONE, paste_batch


def _square_region(size: int = 9, lo: int = 2, hi: int = 7) -> torch.Tensor:
    region = torch.zeros(1, 1, 2, size, size)
    region[..., lo:hi, lo:hi] = 1.0
    return region


def test_the_interior_keeps_only_pixels_whose_eight_neighbours_are_in_the_region():
    interior = interior_of(_square_region())
    expected = torch.zeros(9, 9)
    expected[3:6, 3:6] = 1.0
    assert torch.equal(interior[0, 0, 0], expected)
    assert torch.equal(interior[0, 0, 1], expected)  # every frame on its own


def test_a_one_pixel_wide_region_has_no_interior():
    region = torch.zeros(1, 1, 1, 7, 7)
    region[..., 3, 1:6] = 1.0
    assert interior_of(region).sum() == 0


def test_the_interior_weight_is_added_at_interior_pixels_only():
    region = _square_region()
    weight = loss_weight(region, mask_weight=4.0, interior_weight=36.0)[0, 0, 0]
    assert weight[0, 0] == 1.0  # background
    assert weight[2, 2] == 4.0  # the region's edge
    assert weight[4, 4] == 40.0  # its interior
    assert torch.equal(loss_weight(region, 4.0), 1 + 3 * region)  # no interior weight: the region weight alone


@pytest.mark.parametrize("gamma", [0.0, 0.1])
def test_input_perturbation_noises_the_input_but_not_the_target(gamma):
    """Ning et al.'s input perturbation: the network sees noise + gamma * extra, the target keeps the noise; at
    0 nothing extra is drawn, so earlier recipes train exactly as before."""
    torch.manual_seed(0)
    model, batch = WanConcatPVTT(SMALL_BACKBONE), paste_batch()
    seen = {}
    velocity = model.velocity
    model.velocity = lambda x_t, sigma, cond, **kw: seen.setdefault("v", velocity(seen.setdefault("x_t", x_t), sigma,
                                                                                   cond, **kw))
    drawn = torch.Generator().manual_seed(7)
    loss = flow_matching_loss(model, batch, FlowSchedule(), 4.0, 0.0, drawn, input_perturbation=gamma)
    replay = torch.Generator().manual_seed(7)  # the loss's draws, in its order
    x0 = model.encode(batch["target"])
    sigma = torch.sigmoid(torch.randn(2, generator=replay)).view(-1, 1, 1, 1, 1)
    noise = torch.randn(x0.shape, generator=replay)
    extra = torch.randn(x0.shape, generator=replay) if gamma else torch.zeros_like(x0)
    torch.rand(2, generator=replay)  # the reference dropout's draw
    assert torch.equal(drawn.get_state(), replay.get_state())
    assert torch.allclose(seen["x_t"], (1 - sigma) * x0 + sigma * (noise + gamma * extra), atol=1e-6)
    weight = loss_weight(model.condition_from_paste(batch["template"], batch["mask"], batch["paste"]).region, 4.0)
    expected = (weight * (seen["v"] - (noise - x0)) ** 2).mean() / weight.mean()
    assert torch.allclose(loss, expected, rtol=1e-5)


def test_dream_moves_the_input_towards_the_models_own_estimate_and_keeps_the_clean_target():
    """DREAM at power p: the network is trained at x_t + sigma**p (1 - sigma)(x0_hat - x0), where x0_hat is its
    own clean estimate of the true noisy clip, and the velocity target moves with it so that the clean clip
    it implies is still the truth."""
    torch.manual_seed(0)
    model, batch = WanConcatPVTT(SMALL_BACKBONE), paste_batch()
    calls = []
    velocity = model.velocity
    model.velocity = lambda x_t, sig, cond, **kw: calls.append((x_t, velocity(x_t, sig, cond, **kw))) or calls[-1][1]
    drawn = torch.Generator().manual_seed(7)
    loss = flow_matching_loss(model, batch, FlowSchedule(), 4.0, 0.0, drawn, dream=1.0)
    replay = torch.Generator().manual_seed(7)
    x0 = model.encode(batch["target"])
    sigma = torch.sigmoid(torch.randn(2, generator=replay)).view(-1, 1, 1, 1, 1)
    noise = torch.randn(x0.shape, generator=replay)
    x_t = (1 - sigma) * x0 + sigma * noise
    assert len(calls) == 2 and torch.allclose(calls[0][0], x_t, atol=1e-6)  # first the estimate on the true clip
    x0_hat = x_t - sigma * calls[0][1]
    assert not torch.allclose(x0_hat, x0, atol=1e-3)  # an untrained model's estimate is off, so the input moves
    shifted = x_t + sigma * (1 - sigma) * (x0_hat - x0)
    assert torch.allclose(calls[1][0], shifted, atol=1e-6)
    implied_x0 = shifted - sigma * ((noise - x0) + sigma * (1 - sigma) * (x0_hat - x0) / sigma)
    assert torch.allclose(implied_x0, x0, atol=1e-5)  # the target's clean clip is the truth
    weight = loss_weight(model.condition_from_paste(batch["template"], batch["mask"], batch["paste"]).region, 4.0)
    target = (noise - x0) + (1 - sigma) * (x0_hat - x0)
    expected = (weight * (calls[1][1] - target) ** 2).mean() / weight.mean()
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert calls[1][1].requires_grad and not calls[0][1].requires_grad  # the estimate costs no backward
