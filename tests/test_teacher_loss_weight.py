"""The teacher loss: its per-pixel weight (background, region and the region's interior) and its input."""

from __future__ import annotations

import pytest
import torch

from pvtt_train.models.pvtt_model import WanConcatPVTT
from pvtt_train.models.schedule import FlowSchedule
from pvtt_train.train.teacher import flow_matching_loss, interior_of, loss_weight
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
