"""The teacher loss's per-pixel weight: background, region and the region's interior."""

from __future__ import annotations

import torch

from pvtt_train.train.teacher import interior_of, loss_weight


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
