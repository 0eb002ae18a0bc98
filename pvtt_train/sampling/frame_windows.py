"""Which frames each sampling window covers, and how overlapping windows are cross-faded.

A model samples a fixed number of frames at once (its trained window), so a longer clip is cut into
windows that are sampled one after another. Windows that merely touch meet with a visible jump: each
is sampled from its own noise. Consecutive windows therefore overlap by a few frames, and in the
overlap the output fades linearly from the earlier window to the later one, so a jump is spread over
the overlap instead of landing between two frames.
"""

from __future__ import annotations

import torch

#: Longest default overlap: enough frames to hide a jump without sampling most frames twice.
MAX_DEFAULT_OVERLAP = 8


def default_overlap(window: int) -> int:
    """Frames shared by consecutive windows unless the caller says otherwise: a third of the window."""
    return min(window // 3, MAX_DEFAULT_OVERLAP)


def frame_windows(frames: int, window: int, overlap: int = 0) -> list[tuple[int, int]]:
    """[start, end) windows of ``window`` frames covering ``frames``, each starting ``window - overlap``
    after the previous one; the last is end-aligned (so it may overlap its neighbour by more)."""
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 1 and 0 <= overlap < window, got window {window} and overlap {overlap}")
    if frames <= window:
        return [(0, frames)]
    starts = list(range(0, frames - window + 1, window - overlap))
    if starts[-1] + window < frames:
        starts.append(frames - window)
    return [(s, s + window) for s in starts]


def window_weights(windows: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Per-frame weights [end - start] of each window; at every frame they sum to 1.

    Each window ramps linearly up across its overlap with the previous window and down across its
    overlap with the next, so two overlapping windows cross-fade linearly. Where an end-aligned last
    window overlaps more than one earlier window, the ramps are normalised to sum to 1.
    """
    frames = windows[-1][1]
    raw = []
    for i, (start, end) in enumerate(windows):
        f = torch.arange(start, end, dtype=torch.float64)
        w = torch.ones(end - start, dtype=torch.float64)
        if i > 0 and windows[i - 1][1] > start:
            lead = windows[i - 1][1] - start
            w = torch.minimum(w, (f - start + 1) / (lead + 1))
        if i + 1 < len(windows) and windows[i + 1][0] < end:
            trail = end - windows[i + 1][0]
            w = torch.minimum(w, (end - f) / (trail + 1))
        raw.append(w)
    total = torch.zeros(frames, dtype=torch.float64)
    for (start, end), w in zip(windows, raw):
        total[start:end] += w
    return [(w / total[start:end]).float() for (start, end), w in zip(windows, raw)]
