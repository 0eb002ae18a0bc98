"""Pixel-space compositing: ``background_preserve`` (the one composite) and the mask tools' ``soft_mask``/``grow_mask``."""

import kornia
import pytest
import torch

from pvtt_train.errors import InputError
from pvtt_train.sampling.composite import (
    FRINGE_FLOOR,
    background_preserve,
    grow_mask,
    preserve_alpha,
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


def test_a_vanishing_feather_is_no_feather_instead_of_a_kornia_error():
    mask = torch.zeros(2, 8, 8)
    mask[:, 2:5, 2:5] = 1
    assert torch.equal(soft_mask(mask, 0, 1e-60), mask)


def test_grow_then_shrink_a_square_restores_it():
    mask = torch.zeros(1, 20, 20)
    mask[:, 8:12, 8:12] = 1
    grown = grow_mask(mask, 3)
    assert grown.sum() == 10 * 10 and torch.equal(grow_mask(grown, -3), mask)


# ---------------------------------------------------------------- background_preserve (the one composite)

RED, BLUE = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.2, 0.9])


def disk_mask(frames=3, size=48, radius=14.0, soft=True):
    """[F, H, W]: a disk whose edge is anti-aliased (coverage of each pixel, 0..1) or hard."""
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    dist = ((ys - size / 2) ** 2 + (xs - size / 2) ** 2).sqrt()
    cover = (radius + 0.5 - dist).clamp(0, 1) if soft else (dist <= radius).float()
    return cover.expand(frames, -1, -1).clone()


def scene(mask, seed=0):
    """A template with an old red product wherever the mask is non-zero (its rim too, as real footage
    has), and a generated clip with a new blue product, blurry and a little off everywhere."""
    g = torch.Generator().manual_seed(seed)
    background = 0.3 + 0.3 * torch.rand(*mask.shape, 3, generator=g) * torch.tensor([0.3, 1.0, 0.3])
    m = mask[..., None]
    template = m * RED + (1 - m) * background
    generated = (m * BLUE + (1 - m) * background + 0.05 * torch.rand(*mask.shape, 3, generator=g)).clamp(0, 1)
    return template, generated


def red_fraction(video, region):
    """Share of ``region``'s pixels that still look like the old red product."""
    r, gb = video[..., 0], video[..., 1:].amax(-1)
    red = (r - gb) > 0.3
    return float(red[region].float().mean())


def inner_band(mask, px=3):
    """Pixels of the product (mask >= 0.5) within ``px`` of its edge: where a halo of the old product would sit."""
    inside = (mask >= 0.5).float()
    return (inside > 0) & ~(grow_mask(inside, -px) > 0)


def earlier_inward_feather(mask, inset=2, feather=1.0):
    """The previous Background Preserve weights (``mask * blur(erode(mask))``), for contrast only."""
    hard = (mask > 0.5).float()
    core = kornia.filters.gaussian_blur2d(grow_mask(hard, -inset)[:, None], (5, 5), (feather, feather),
                                          border_type="replicate")[:, 0]
    return hard * core


@pytest.mark.parametrize("grow,feather", [(0, 0.0), (0, 2.0), (2, 1.0), (4, 2.0)])
def test_no_old_product_is_left_in_the_inner_band(grow, feather):
    mask = disk_mask()
    template, generated = scene(mask)
    band = inner_band(mask)
    assert band.sum() > 200  # a real band: 3 px of a 14 px disk, 3 frames
    assert red_fraction(template, band) == 1.0  # the test can see red
    out = background_preserve(template, generated, mask, grow, feather)
    assert red_fraction(out, band) == 0.0
    assert red_fraction(out, mask >= 0.5) == 0.0
    # The earlier inward feather (inset 2, feather 1) kept the old product in that band: the halo.
    old = template + earlier_inward_feather(mask)[..., None] * (generated - template)
    assert red_fraction(old, band) > 0.3


@pytest.mark.parametrize("soft", [True, False])
@pytest.mark.parametrize("grow,feather", [(0, 0.0), (0, 3.0), (1, 0.0), (3, 1.0), (6, 2.5), (2, 4.0)])
def test_outside_the_grown_mask_is_the_template_bit_for_bit(soft, grow, feather):
    mask = disk_mask(soft=soft)
    template, generated = scene(mask, seed=1)
    out, alpha = background_preserve(template, generated, mask, grow, feather, return_alpha=True)
    outside = grow_mask((mask > FRINGE_FLOOR).float(), grow) == 0
    assert outside.sum() > 1000
    assert torch.equal(out[outside], template[outside]) and (alpha[outside] == 0).all()
    inside = mask >= 0.5
    assert torch.equal(out[inside], generated[inside]) and (alpha[inside] == 1).all()
    assert out.dtype == template.dtype and out.shape == template.shape


def test_without_grow_the_mask_zero_pixels_are_exact_and_nothing_generated_leaks():
    mask = disk_mask()
    template, generated = scene(mask, seed=2)
    out = background_preserve(template, generated, mask)
    zero = mask == 0
    assert torch.equal(out[zero], template[zero])
    assert torch.equal(background_preserve(template, generated, mask, 0, 3.0), out)  # feather needs grow


def test_the_fringe_ramp_is_monotone_and_continuous():
    m = torch.linspace(0, 1, 101).expand(1, 4, -1).clone()  # every mask value along a row
    template, generated = torch.zeros(1, 4, 101, 3), torch.ones(1, 4, 101, 3)
    out, alpha = background_preserve(template, generated, m, return_alpha=True)
    row = alpha[0, 0]
    assert (row.diff() >= 0).all()  # monotone in the mask value
    assert (row[m[0, 0] <= FRINGE_FLOOR] == 0).all() and (row[m[0, 0] >= 0.5] == 1).all()
    assert row.diff().abs().max() <= 0.01 / (0.5 - FRINGE_FLOOR) + 1e-6  # no step anywhere: continuous
    fringe = (m[0, 0] > FRINGE_FLOOR) & (m[0, 0] < 0.5)
    assert ((row[fringe] > 0) & (row[fringe] < 1)).all()  # the fringe is blended
    assert torch.equal(out[..., 0], alpha)  # a plain convex blend


def test_codec_noise_in_a_mask_leaves_the_background_exact():
    mask = disk_mask(soft=False)
    noise = torch.rand(mask.shape, generator=torch.Generator().manual_seed(3)) * FRINGE_FLOOR
    noisy = torch.where(mask > 0, mask, noise)  # an MP4 mask's background: small non-zero values
    template, generated = scene(mask, seed=3)
    out = background_preserve(template, generated, noisy)
    assert torch.equal(out[mask == 0], template[mask == 0])


def test_feather_fades_the_grown_band_from_the_mask_out_to_the_background():
    mask = torch.zeros(1, 40, 40)
    mask[:, 10:30, 10:30] = 1
    alpha = preserve_alpha(mask, grow=6, feather=1.5)[0, 20]  # a row through the middle
    assert (alpha[10:30] == 1).all()  # the mask itself: fully generated
    assert (alpha[:4] == 0).all() and (alpha[36:] == 0).all()  # beyond the 6 px band: the template
    band = alpha[30:36]
    assert (band.diff() < 0).all() and band[-1] < 0.05 and band[0] > 0.5  # falling to ~0 at the band's edge
    assert torch.equal(preserve_alpha(mask, grow=6)[0, 20, 4:36], torch.ones(32))  # grow alone: all generated


@pytest.mark.parametrize("lead", [(), (2,)])
def test_leading_dims_and_one_mask_frame_for_every_frame(lead):
    mask = disk_mask(frames=1)
    template, generated = scene(disk_mask(frames=3).expand(*lead, 3, -1, -1).contiguous())
    one = mask.expand(*lead, 1, -1, -1) if lead else mask
    out, alpha = background_preserve(template, generated, one, return_alpha=True)
    assert out.shape == template.shape and alpha.shape == template.shape[:-1]
    full = background_preserve(template, generated, disk_mask(frames=3).expand(*lead, 3, -1, -1))
    assert torch.equal(out, full)


def test_bad_inputs_give_one_clear_error():
    mask = disk_mask()
    template, generated = scene(mask)
    cases = {
        "must be clips of the same shape": dict(generated=generated[:, :40]),
        "does not fit the clips": dict(mask=mask[:, :40]),
        "does not fit the clips ": dict(mask=mask[:2]),
        "outside 0..1": dict(mask=mask * 255),
        "outside 0..1 ": dict(mask=mask - 0.5),
        "not finite": dict(mask=torch.where(mask > 0.5, torch.nan, mask)),
        "grow must be a whole number": dict(grow=-1),
        "grow must be a whole number ": dict(grow=1.5),
        "feather must be a finite number": dict(feather=-0.5),
        "feather must be a finite number ": dict(feather=float("inf")),
    }
    for match, override in cases.items():
        args = {"template": template, "generated": generated, "mask": mask, **override}
        with pytest.raises(InputError, match=match.strip()):
            background_preserve(**args)
    assert issubclass(InputError, ValueError)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_exact_at_both_ends_in_every_float_dtype(dtype):
    mask = disk_mask()
    template, generated = (c.to(dtype) for c in scene(mask, seed=4))
    out = background_preserve(template, generated, mask, 2, 1.0)
    assert out.dtype == dtype
    beyond = grow_mask(mask, 2) == 0
    assert beyond.sum() > 1000 and torch.equal(out[beyond], template[beyond])
    assert torch.equal(out[mask >= 0.5], generated[mask >= 0.5])
