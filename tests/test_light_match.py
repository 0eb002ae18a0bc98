"""Clip-wide light gain read off the template's background (pvtt_train.light_match)."""

from __future__ import annotations

import torch

from pvtt_train.light_match import GAIN_RANGE, clip_light_gain


def _scene(gains, frames=5, size=32):
    g = torch.Generator().manual_seed(0)
    background = torch.rand(size, size, 3, generator=g) * 0.6 + 0.2
    template = background.expand(frames, -1, -1, -1).clone()
    mask = torch.zeros(frames, size, size)
    for f in range(frames):  # a bright product moving across the frame
        mask[f, 8:16, 2 + 4 * f: 10 + 4 * f] = 1
        template[f][mask[f] > 0.5] = 0.95
    return template * torch.tensor(gains).view(-1, 1, 1, 1), mask


def test_the_scene_light_is_read_back_frame_by_frame_while_the_product_moves():
    gains = [1.0, 1.1, 0.9, 1.25, 0.8]
    template, mask = _scene(gains)
    assert torch.allclose(clip_light_gain(template, mask), torch.tensor(gains), atol=1e-5)


def test_a_steady_light_reads_as_one_whatever_the_product_does():
    template, mask = _scene([1.0] * 5)
    assert torch.allclose(clip_light_gain(template, mask), torch.ones(5), atol=1e-6)


def test_the_gain_is_clamped_and_a_black_first_frame_reads_as_one():
    template, mask = _scene([1.0, 3.0, 0.1, 1.0, 1.0])
    gain = clip_light_gain(template, mask)
    assert gain[1] == GAIN_RANGE[1] and gain[2] == GAIN_RANGE[0]
    template[0] = 0
    assert torch.equal(clip_light_gain(template, mask), torch.ones(5))
