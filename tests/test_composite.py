"""Pixel-space compositing: the outward grow-and-feather (mask tools, evaluation) and the inward feather (Background Preserve)."""

import pytest
import torch

from pvtt_train.sampling.composite import (
    composite,
    composite_inside,
    grow_mask,
    inward_alpha,
    soft_mask,
)


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


# ---------------------------------------------------------------- inward feather (Background Preserve)

def square_mask(size=24, lo=6, hi=18):
    m = torch.zeros(1, size, size)
    m[:, lo:hi, lo:hi] = 1
    return m


@pytest.mark.parametrize("inset,feather", [(0, 0.0), (2, 1.0), (2, 2.0), (5, 3.0), (64, 32.0)])
def test_inward_alpha_is_zero_outside_the_mask_and_at_most_the_mask(inset, feather):
    mask = square_mask()
    alpha = inward_alpha(mask, inset, feather)
    assert alpha.shape == mask.shape
    assert (alpha[mask == 0] == 0).all()
    assert alpha.min() >= 0 and (alpha <= mask).all()


def test_inward_alpha_rises_from_the_edge_to_one_inside():
    alpha = inward_alpha(square_mask(), inset_px=2, feather_px=1.0)[0, 12]  # a row through the middle
    assert alpha[5] == 0 and 0 < alpha[6] < 0.1  # just outside: nothing; first inside pixel: nearly nothing
    assert (alpha[6:11].diff() > 0).all() and (alpha[6:13].diff() >= 0).all()  # rising towards the centre
    assert alpha[9] > 0.9 and alpha[10] == 1.0  # fully generated 4 pixels in


def test_inward_alpha_without_inset_or_feather_is_the_hard_mask():
    mask = (torch.rand(2, 9, 9, generator=torch.Generator().manual_seed(0)) > 0.6).float()
    assert torch.equal(inward_alpha(mask, 0, 0.0), mask)


def test_inward_alpha_negative_parameters_raise():
    with pytest.raises(ValueError, match=">= 0"):
        inward_alpha(square_mask(), -1, 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        inward_alpha(square_mask(), 1, -1.0)


@pytest.mark.parametrize("inset,feather", [(2, 1.0), (2, 2.0), (0, 4.0)])
def test_composite_inside_is_the_template_bit_for_bit_outside_the_mask(inset, feather):
    g = torch.Generator().manual_seed(1)
    generated, template = torch.rand(3, 40, 40, 3, generator=g), torch.rand(3, 40, 40, 3, generator=g)
    mask = square_mask(40, 6, 34).expand(3, -1, -1)
    out = composite_inside(generated, template, mask, inset, feather)
    outside = (mask == 0)[..., None].expand_as(out)
    assert torch.equal(out[outside], template[outside])
    assert torch.allclose(out[:, 18:22, 18:22], generated[:, 18:22, 18:22], atol=1e-6)  # the middle: generated
    # The old grow-and-feather composite changes the template outside the mask: what this replaces.
    old = composite(generated, template, mask, 2, 2.0)
    assert not torch.equal(old[outside], template[outside])
