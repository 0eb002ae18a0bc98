"""The training paste rendered as the pipeline renders it (pvtt_train.data.warp_paste)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pvtt_train.data.batches import make_batch
from pvtt_train.data.synthetic import SyntheticConfig, SyntheticVideoGenerator
from pvtt_train.data.warp_paste import supersampled_warp_paste
from pvtt_train.media.resize import resize_video


def _region_psnr(batch) -> float:
    m = batch["mask"][..., None]
    base = batch["template"] * (1 - m) + batch["paste"]
    mse = (((base - batch["target"]) ** 2) * m).sum() / (m.sum() * 3)
    return float(-10 * torch.log10(mse))


def test_the_default_config_keeps_every_example_and_paste_as_before():
    old = make_batch(SyntheticVideoGenerator(SyntheticConfig()), range(3))
    new = make_batch(SyntheticVideoGenerator(SyntheticConfig(paste="supersampled_warp")), range(3))
    for key in ("template", "mask", "reference", "target"):
        assert torch.equal(old[key], new[key])
    assert not torch.equal(old["paste"], new["paste"])


def test_the_supersampled_warp_paste_is_closer_to_the_truth_than_the_working_size_fit():
    seeds = range(16)
    old = make_batch(SyntheticVideoGenerator(SyntheticConfig()), seeds)
    new = make_batch(SyntheticVideoGenerator(SyntheticConfig(paste="supersampled_warp")), seeds)
    assert _region_psnr(new) > _region_psnr(old) + 1.5  # 21.6 against 19.1 dB on these seeds


def test_a_flat_product_gives_its_colour_in_every_mask_pixel_edges_included():
    photo = np.full((64, 64, 3), 0.95, np.float32)
    photo[16:48, 20:44] = (0.7, 0.2, 0.1)  # a flat product on a light backdrop
    cover = np.zeros((2, 64, 64), np.float32)
    cover[:, 10:42, 14:38] = 1.0  # edges off the 4-pixel grid: the shrunk edge pixels are partly covered
    mask = (resize_video(torch.from_numpy(cover)[..., None], 16, 16)[..., 0] >= 0.5).float().numpy()
    paste = supersampled_warp_paste(photo, cover, mask)
    assert np.abs(paste[mask > 0.5] - (0.7, 0.2, 0.1)).max() < 0.02
    assert np.all(paste[mask < 0.5] == 0)


def test_an_unknown_paste_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="paste must be one of.*supersampled_warp"):
        SyntheticVideoGenerator(SyntheticConfig(paste="photo"))


def test_a_lit_paste_is_the_paste_at_each_frames_measured_light():
    from pvtt_train.light_match import clip_light_gain

    seeds = range(2)
    plain = make_batch(SyntheticVideoGenerator(SyntheticConfig(paste="supersampled_warp")), seeds)
    lit = make_batch(SyntheticVideoGenerator(SyntheticConfig(paste="supersampled_warp_lit")), seeds)
    for b in range(2):
        gain = clip_light_gain(lit["template"][b], lit["mask"][b])
        assert not torch.allclose(gain, torch.ones_like(gain))  # the synthetic light drifts
        assert torch.allclose(lit["paste"][b], (plain["paste"][b] * gain.view(-1, 1, 1, 1)).clamp(0, 1), atol=1e-6)
