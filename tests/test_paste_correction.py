"""A paste-channel model's output taken as a correction of its paste (pvtt_train.paste_correction)."""

from __future__ import annotations

import torch

from pvtt_train.media.resize import resize_video
from pvtt_train.detail_transfer import paste_composite
from pvtt_train.paste_correction import CorrectionSum, spread_from_interior


def _grow(clip):
    return resize_video(clip, 64, 64)


def _scene(frames=3):
    """A 64x64 clip whose product square covers working pixels 4..11 of 16 fully, plus a half-covered rim."""
    g = torch.Generator().manual_seed(0)
    template = torch.rand(frames, 64, 64, 3, generator=g)
    warp = torch.rand(frames, 64, 64, 3, generator=g) * 0.8
    inside = torch.zeros(frames, 64, 64)
    inside[:, 14:50, 14:50] = 1  # working pixels 3 and 12 are half covered
    coverage = resize_video(inside[..., None], 16, 16)[..., 0]
    return template, warp, inside, coverage


def test_spread_keeps_solid_pixels_and_fills_their_neighbours_with_their_mean():
    corr = torch.zeros(1, 5, 5, 1)
    solid = torch.zeros(1, 5, 5, dtype=torch.bool)
    corr[0, 2, 1], corr[0, 2, 3] = 1.0, 3.0
    solid[0, 2, 1] = solid[0, 2, 3] = True
    corr[0, 0, 0] = 100.0  # not solid: ignored
    out = spread_from_interior(corr, solid)[0, ..., 0]
    assert out[2, 1] == 1 and out[2, 3] == 3
    assert out[2, 2] == 2  # between the two
    assert out[2, 0] == 1 and out[2, 4] == 3
    assert torch.isfinite(out).all() and out.max() <= 3 and out.min() >= 1


def test_a_frame_without_solid_pixels_gets_no_correction():
    corr = torch.full((2, 4, 4, 3), 0.5)
    solid = torch.zeros(2, 4, 4, dtype=torch.bool)
    solid[0, 1, 1] = True
    out = spread_from_interior(corr, solid)
    assert torch.equal(out[1], torch.zeros(4, 4, 3))
    assert torch.allclose(out[0], torch.full((4, 4, 3), 0.5))


def test_a_model_that_draws_what_it_was_given_returns_the_full_size_paste_at_its_light():
    template, warp, inside, coverage = _scene()
    small_t, small_p = resize_video(template, 16, 16), resize_video(warp, 16, 16)
    msk = (coverage > 0.5).float()
    given = paste_composite(small_p, msk, small_t)
    total = CorrectionSum(3, 16, 16)
    total.add(0, torch.ones(3), given, given, torch.tensor([1.0, 0.9, 1.2]))
    generated = torch.rand(3, 64, 64, 3)
    out = total.apply(generated, warp, inside, coverage, _grow)
    lit = (warp * torch.tensor([1.0, 0.9, 1.2]).view(-1, 1, 1, 1)).clamp(0, 1)
    m = inside[..., None] > 0.5
    assert torch.equal(torch.where(m, out, 0), torch.where(m, lit, 0))  # the paste, to the pixel
    assert torch.equal(torch.where(m, 0, out), torch.where(m, 0, generated))  # the model's own pixels outside


def test_an_interior_correction_reaches_the_edge_and_edge_pixels_paint_no_halo():
    _, warp, inside, coverage = _scene(1)
    given = torch.rand(1, 16, 16, 3)
    drawn = given + 0.1  # a uniform light correction...
    drawn[:, 3] = drawn[:, 12] = drawn[:, :, 3] = drawn[:, :, 12] = 0.0  # ...and edge pixels dragged to black
    total = CorrectionSum(1, 16, 16)
    total.add(0, torch.ones(1), drawn, given, torch.ones(1))
    out = total.apply(torch.zeros(1, 64, 64, 3), warp, inside, coverage, _grow)
    m = inside[..., None].bool()
    assert torch.allclose(out[m.expand_as(out)], (warp + 0.1)[m.expand_as(out)], atol=1e-6)


def test_cross_faded_windows_light_the_paste_by_their_weighted_gain_and_sum_their_corrections():
    _, warp, inside, coverage = _scene(2)
    given = torch.full((2, 16, 16, 3), 0.3)
    total = CorrectionSum(2, 16, 16)
    total.add(0, torch.tensor([1.0, 0.25]), given + 0.04, given, torch.tensor([1.0, 1.0]))
    total.add(1, torch.tensor([0.75]), given[:1] + 0.08, given[:1], torch.tensor([0.8]))
    out = total.apply(torch.zeros(2, 64, 64, 3), warp, inside, coverage, _grow)
    centre = out[:, 32, 32]
    assert torch.allclose(centre[0], warp[0, 32, 32] + 0.04, atol=1e-6)
    # frame 1: light 0.25 * 1.0 + 0.75 * 0.8 = 0.85, correction 0.25 * 0.04 + 0.75 * 0.08 = 0.07
    assert torch.allclose(centre[1], warp[1, 32, 32] * 0.85 + 0.07, atol=1e-6)
