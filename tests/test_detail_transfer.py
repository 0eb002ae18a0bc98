"""The photo's fine detail on top of a small-size model (pvtt_train.detail_transfer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pvtt_train.detail_transfer import add_photo_detail, paste_composite, working_size_paste


def _round_trip(video, h=16, w=16):
    """What the pipeline does to a model's output: shrink to the working size (area), grow back."""
    x = F.interpolate(video.permute(0, 3, 1, 2), size=(h, w), mode="area")
    return F.interpolate(x, size=video.shape[1:3], mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


def _shrink(video, h=16, w=16):
    return F.interpolate(video.permute(0, 3, 1, 2), size=(h, w), mode="area").permute(0, 2, 3, 1)


def _scene(seed=0):
    g = torch.Generator().manual_seed(seed)
    template = torch.rand(2, 64, 64, 3, generator=g)
    warp = torch.rand(2, 64, 64, 3, generator=g)
    inside = torch.zeros(2, 64, 64)
    inside[:, 18:46, 12:40] = 1.0
    return template, warp, inside


def test_a_model_that_keeps_the_working_size_paste_returns_the_full_size_paste_edges_included():
    template, warp, inside = _scene()
    paste = paste_composite(warp, inside, template)
    out = add_photo_detail(_round_trip(paste), paste, inside, _round_trip)
    m = inside[..., None] > 0.5
    assert (out - paste).abs()[m.expand_as(out)].max() < 1e-5
    # A low-pass of the photo cut to the mask (the earlier design) misses the background the model's edge
    # pixels mix in: the same model output then lands far from the paste along the mask's edge.
    cov = inside[..., None]
    low = _round_trip(warp * cov) / _round_trip(cov).clamp_min(1e-3)
    earlier = (_round_trip(paste) + cov * (warp - low)).clamp(0, 1)
    assert (earlier - paste).abs()[m.expand_as(out)].max() > 0.1


def test_the_models_low_frequency_change_carries_through_and_the_photo_keeps_its_detail():
    """A truth that is the paste relit (a smooth gain) is rebuilt far better than by the paste."""
    template, warp, inside = _scene(1)
    ys = torch.linspace(0.8, 1.2, 64)
    light = ys.view(1, 64, 1, 1).expand(2, 64, 64, 1)
    truth = paste_composite(warp * light, inside, template)
    out = add_photo_detail(_round_trip(truth), paste_composite(warp, inside, template), inside, _round_trip)
    m = (inside[..., None] > 0.5).expand_as(out)
    paste = paste_composite(warp, inside, template)
    err_out = ((out - truth.clamp(0, 1)) ** 2)[m].mean()
    err_paste = ((paste - truth.clamp(0, 1)) ** 2)[m].mean()
    assert err_out < 0.5 * err_paste  # the photo's own detail stays unlit: not all of the error goes
    assert ((_round_trip(truth) - truth) ** 2)[m].mean() > 10 * err_out  # the model alone: a blur


def test_nothing_changes_outside_the_mask():
    template, warp, inside = _scene(2)
    generated = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    out = add_photo_detail(generated, paste_composite(warp, inside, template), inside, _round_trip)
    outside = (inside < 0.5)[..., None].expand_as(out)
    assert torch.equal(out[outside], generated[outside])


def test_a_lossless_round_trip_has_no_detail_to_add():
    template, warp, inside = _scene(3)
    generated = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(4))
    paste = paste_composite(warp, inside, template)
    assert torch.equal(add_photo_detail(generated, paste, inside, lambda clip: clip), generated)


def test_the_working_size_paste_is_not_darkened_by_the_zeros_outside_the_mask():
    inside = torch.zeros(1, 64, 64)
    inside[:, 13:47, 9:43] = 1.0  # edges that do not fall on the 4-pixel grid
    warp = torch.tensor([0.8, 0.3, 0.2]).expand(1, 64, 64, 3) * inside[..., None]
    small = working_size_paste(warp, inside, _shrink)
    covered = small.abs().sum(-1) > 0
    assert (small[covered] - torch.tensor([0.8, 0.3, 0.2])).abs().max() < 1e-5
    assert covered.sum() > (inside[:, ::4, ::4] > 0).sum() - 1  # every partly covered pixel gets the colour


def test_mismatched_shapes_are_refused_with_every_shape_named():
    template, warp, inside = _scene(4)
    try:
        add_photo_detail(warp[:, :32], warp, inside, _round_trip)
    except ValueError as exc:
        assert "generated (2, 32, 64, 3)" in str(exc) and "mask (2, 64, 64)" in str(exc)
    else:
        raise AssertionError("no error for a generated clip of the wrong size")
