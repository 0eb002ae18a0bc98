"""Overlapping frame windows: the plan covers every frame, and the cross-fade weights sum to 1."""

import itertools

import pytest
import torch

from pvtt_train.sampling.frame_windows import (
    default_overlap,
    frame_windows,
    window_weights,
)


@pytest.mark.parametrize("frames", range(1, 60))
@pytest.mark.parametrize("window,overlap", [(9, 0), (9, 3), (9, 4), (9, 8), (5, 2), (1, 0), (81, 8)])
def test_plan_covers_every_frame_and_weights_sum_to_one(frames, window, overlap):
    windows = frame_windows(frames, window, overlap)
    assert windows[0][0] == 0 and windows[-1][1] == frames
    assert all(end - start == min(window, frames) for start, end in windows)
    total = torch.zeros(frames)
    for (start, end), w in zip(windows, window_weights(windows)):
        assert w.shape == (end - start,) and (w > 0).all() and (w <= 1).all()
        total[start:end] += w
    assert torch.allclose(total, torch.ones(frames), atol=1e-6)
    if len(windows) > 1:  # consecutive windows share at least the asked-for overlap
        assert all(b[0] <= a[1] - overlap for a, b in itertools.pairwise(windows))


def test_33_frames_in_9_frame_windows_cross_fade_linearly():
    windows = frame_windows(33, 9, 3)
    assert windows == [(0, 9), (6, 15), (12, 21), (18, 27), (24, 33)]
    weights = window_weights(windows)
    assert torch.allclose(weights[0], torch.tensor([1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]))
    assert torch.allclose(weights[1][:3], torch.tensor([0.25, 0.5, 0.75]))


def test_without_overlap_windows_only_touch_as_before():
    assert frame_windows(33, 9) == [(0, 9), (9, 18), (18, 27), (24, 33)]
    assert all((w == 1).all() for w in window_weights([(0, 9), (9, 18)]))


def test_default_overlap_is_a_third_of_the_window_at_most_8():
    assert [default_overlap(w) for w in (1, 2, 9, 17, 81)] == [0, 0, 3, 5, 8]


@pytest.mark.parametrize("window,overlap", [(9, 9), (9, -1), (0, 0)])
def test_impossible_overlaps_raise(window, overlap):
    with pytest.raises(ValueError, match="overlap"):
        frame_windows(20, window, overlap)
