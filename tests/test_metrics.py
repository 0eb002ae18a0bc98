"""Evaluation metrics on hand-built clips with known answers."""

import math

import cv2
import numpy as np
import pytest
import torch

from pvtt_train.eval.metrics import (MAX_PSNR, all_metrics, background_psnr, product_psnr, product_ssim,
                                     warp_error)


def clips(b=2, f=3, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, f, h, w, 3, generator=g)
    mask = torch.zeros(b, f, h, w)
    mask[..., 4:10, 5:12] = 1
    return target, mask


def test_psnr_of_identical_is_the_cap():
    target, mask = clips()
    assert product_psnr(target, target, mask) == MAX_PSNR == 100.0
    assert background_psnr(target, target.clone(), mask) == 100.0


@pytest.mark.parametrize("delta,expected", [(0.1, 20.0), (0.01, 40.0), (0.5, 10 * math.log10(4))])
def test_psnr_of_known_mse(delta, expected):
    target, mask = clips()
    pred = target + delta  # MSE = delta ** 2
    assert product_psnr(pred, target, mask) == pytest.approx(expected, abs=1e-3)
    assert background_psnr(pred, target, mask) == pytest.approx(expected, abs=1e-3)


def test_product_and_background_psnr_look_at_their_own_pixels():
    target, mask = clips()
    inside = target + 0.1 * mask[..., None]  # error only on the product
    assert product_psnr(inside, target, mask) == pytest.approx(20.0, abs=1e-3)
    assert background_psnr(inside, target, mask) == 100.0
    outside = target + 0.01 * (1 - mask[..., None])  # error only on the background
    assert product_psnr(outside, target, mask) == 100.0
    assert background_psnr(outside, target, mask) == pytest.approx(40.0, abs=1e-3)


def test_psnr_averages_per_clip():
    target, mask = clips(b=2)
    pred = target.clone()
    pred[0] += 0.1 * mask[0, ..., None]  # clip 0: 20 dB, clip 1: identical, capped at 100
    assert product_psnr(pred, target, mask) == pytest.approx(60.0, abs=1e-3)


def test_ssim_identical_is_one_and_lower_with_noise():
    target, mask = clips()
    assert product_ssim(target, target, mask) == pytest.approx(1.0, abs=1e-5)
    g = torch.Generator().manual_seed(1)
    slight = (target + 0.02 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    heavy = (target + 0.3 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    s_slight, s_heavy = product_ssim(slight, target, mask), product_ssim(heavy, target, mask)
    assert 1.0 > s_slight > 0.9
    assert s_heavy < 0.8 and s_heavy < s_slight - 0.2


def smooth_texture(h, w, seed, blur=3.0):
    rng = np.random.default_rng(seed)
    img = rng.uniform(0, 1, (h, w, 3)).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), blur)
    img = (img - img.min()) / (img.max() - img.min())
    return img


def panning(texture, frames, step=1, size=32):
    """Frames of a window sliding right over a larger texture by ``step`` px a frame."""
    return np.stack([texture[:size, f * step:f * step + size] for f in range(frames)])


def test_warp_error_static_clip_is_zero():
    clip = torch.from_numpy(np.repeat(smooth_texture(32, 32, 0)[None], 4, axis=0))[None]
    assert warp_error(clip, clip) < 2e-3  # Farneback finds sub-pixel flow near the borders


def test_warp_error_rewards_following_the_template_motion():
    template = panning(smooth_texture(32, 48, 0), 5)
    follower = panning(smooth_texture(32, 48, 1), 5)  # other content, same camera motion
    rng = np.random.default_rng(2)
    flicker = np.clip(follower + rng.normal(0, 0.1, follower.shape).astype(np.float32), 0, 1)
    t = torch.from_numpy(template)[None]
    e_self = warp_error(t, t)
    e_follow = warp_error(torch.from_numpy(follower)[None], t)
    e_flicker = warp_error(torch.from_numpy(flicker)[None], t)
    e_still = warp_error(torch.from_numpy(np.repeat(follower[:1], 5, axis=0))[None], t)  # ignores the motion
    assert e_self < 0.01 and e_follow < 0.01  # measured about 0.005 each
    assert e_flicker > 5 * e_follow  # about 0.11
    assert e_still > 2 * e_follow  # about 0.02


def test_all_metrics_keys_and_values():
    target, mask = clips(b=1, f=3, h=16, w=16)
    batch = {"target": target, "mask": mask, "template": target}
    m = all_metrics(target, target, batch)
    assert set(m) == {"product_psnr", "product_ssim", "background_psnr_raw", "background_psnr_composited",
                      "warp_error"}
    assert m["product_psnr"] == 100.0 and m["background_psnr_composited"] == 100.0
    assert m["product_ssim"] == pytest.approx(1.0, abs=1e-5)
