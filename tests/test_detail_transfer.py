"""The photo's fine detail on top of a small-size model (pvtt_train.detail_transfer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pvtt_train.detail_transfer import add_photo_detail, photo_detail


def _grown(video, h, w):
    """What the pipeline does to a model's output: shrink to the working size (area), grow back."""
    x = F.interpolate(video.permute(0, 3, 1, 2), size=(h, w), mode="area")
    return F.interpolate(x, size=video.shape[1:3], mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


def test_a_perfect_small_model_plus_the_photo_detail_rebuilds_the_full_size_frame():
    truth = torch.rand(3, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    out = add_photo_detail(_grown(truth, 16, 16), truth, torch.ones(3, 64, 64), (16, 16))
    assert (out - truth).abs().max() < 1e-5
    assert (_grown(truth, 16, 16) - truth).abs().max() > 0.3  # without the detail layer: a blur


def test_a_flat_photo_has_no_detail_and_its_cut_out_edge_adds_no_ring():
    coverage = torch.zeros(1, 64, 64)
    coverage[:, 20:44, 12:40] = 1.0
    warp = torch.tensor([0.8, 0.3, 0.2]).expand(1, 64, 64, 3) * coverage[..., None]
    detail = photo_detail(warp, coverage, (16, 16))
    assert detail.abs().max() < 1e-5  # normalised by coverage: the backdrop does not darken the edge
    plain = warp - _grown(warp, 16, 16)  # an unnormalised low-pass would leave a ring along the cut
    assert (plain * coverage[..., None]).abs().max() > 0.1


def test_detail_is_only_added_where_the_photo_covers_the_mask():
    g = torch.Generator().manual_seed(1)
    warp, generated = torch.rand(2, 32, 32, 3, generator=g), torch.rand(2, 32, 32, 3, generator=g) * 0.5
    coverage = torch.zeros(2, 32, 32)
    coverage[:, 8:24, 8:24] = 1.0
    out = add_photo_detail(generated, warp, coverage, (8, 8))
    assert torch.equal(out[:, :8], generated[:, :8].clamp(0, 1))
    assert (out[:, 10:22, 10:22] - generated[:, 10:22, 10:22]).abs().mean() > 0.05


def test_at_the_working_size_there_is_nothing_to_add():
    warp = torch.rand(1, 16, 16, 3)
    assert torch.equal(photo_detail(warp, torch.ones(1, 16, 16), (16, 16)), torch.zeros_like(warp))
