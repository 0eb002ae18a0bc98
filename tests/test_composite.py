"""Pixel-space compositing with a dilated, feathered mask."""

import pytest
import torch

from pvtt_train.sampling.composite import composite, grow_mask, soft_mask


def dot_mask(size=17, centre=8):
    m = torch.zeros(size, size)
    m[centre, centre] = 1
    return m


def chebyshev(size=17, centre=8):
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.maximum((ys - centre).abs(), (xs - centre).abs())


def test_soft_mask_plain_is_the_mask():
    m = (torch.rand(2, 9, 9) > 0.7).float()
    assert torch.equal(soft_mask(m, 0, 0), m)


def test_soft_mask_dilate_only_is_a_square_grow():
    d = chebyshev()
    assert torch.equal(soft_mask(dot_mask(), dilate_px=2, feather_px=0), (d <= 2).float())


def test_soft_mask_dilate_and_feather_spread():
    d = chebyshev()
    s = soft_mask(dot_mask(), dilate_px=1, feather_px=1.0)
    assert s[8, 8] == 1.0  # the mask itself stays fully opaque
    ring = s[(d >= 1) & (d <= 3)]
    assert (ring > 0).all() and (ring < 1).all()  # the dilated rim and the feather are partial
    assert s[8, 9] > s[8, 10] > s[8, 11] > 0  # falling off outwards
    assert (s[d >= 4] == 0).all()  # exactly 0 beyond dilate + 2 * feather


def test_soft_mask_is_one_on_a_large_mask_and_keeps_shape():
    m = torch.zeros(2, 3, 12, 12)
    m[..., 3:9, 2:10] = 1
    s = soft_mask(m, dilate_px=2, feather_px=1.5)
    assert s.shape == m.shape
    assert (s[m > 0.5] == 1).all()
    assert s.min() >= 0 and s.max() <= 1


@pytest.mark.parametrize("dilate,feather", [(-1, 1.0), (1, -0.5)])
def test_soft_mask_negative_parameters_raise(dilate, feather):
    with pytest.raises(ValueError, match=">= 0"):
        soft_mask(dot_mask(), dilate, feather)
    with pytest.raises(ValueError):
        composite(torch.zeros(1, 17, 17, 3), torch.zeros(1, 17, 17, 3), dot_mask()[None], dilate, feather)


@pytest.mark.parametrize("lead", [(), (2,)])
def test_composite_exact_far_from_and_on_the_mask(lead):
    g = torch.Generator().manual_seed(0)
    shape = (*lead, 3, 17, 17)
    generated = torch.rand(*shape, 3, generator=g)
    template = torch.rand(*shape, 3, generator=g)
    mask = torch.zeros(shape)
    mask[..., 6:10, 5:9] = 1
    out = composite(generated, template, mask, dilate_px=1, feather_px=1.0)
    assert out.shape == generated.shape
    on = (mask > 0.5)[..., None].expand_as(out)
    assert torch.equal(out[on], generated[on])
    far = torch.ones(shape, dtype=torch.bool)
    far[..., 6 - 4:10 + 4, 5 - 4:9 + 4] = False  # further than dilate + 2 * feather + 1 from the mask
    far = far[..., None].expand_as(out)
    assert torch.equal(out[far], template[far])
    between = ~on & ~far
    assert ((out[between] - template[between]).abs().sum() > 0)  # the seam is blended


def test_composite_is_a_convex_blend():
    generated, template = torch.ones(1, 9, 9, 3), torch.zeros(1, 9, 9, 3)
    mask = torch.zeros(1, 9, 9)
    mask[0, 4, 4] = 1
    out = composite(generated, template, mask, 1, 1.0)
    assert torch.allclose(out[..., 0], soft_mask(mask, 1, 1.0))
    assert out.min() >= 0 and out.max() <= 1


def test_a_vanishing_feather_is_no_feather_instead_of_a_kornia_error():
    mask = torch.zeros(2, 8, 8)
    mask[:, 2:5, 2:5] = 1
    assert torch.equal(soft_mask(mask, 0, 1e-60), mask)


def test_grow_then_shrink_a_square_restores_it():
    mask = torch.zeros(1, 20, 20)
    mask[:, 8:12, 8:12] = 1
    grown = grow_mask(mask, 3)
    assert grown.sum() == 10 * 10 and torch.equal(grow_mask(grown, -3), mask)
