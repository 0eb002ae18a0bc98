"""Scores of one held-out clip: what a designer sees, measured against the ground truth and the template.

Clips are [F, H, W, 3] tensors in 0..1, masks [F, H, W] (1 = the product region).

- ``product_psnr`` / ``product_ssim`` (from ``metrics``): inside the mask, against the truth.
- ``detail_ratio``: high-frequency energy (squared Laplacian of the luminance) inside the mask eroded by
  ``DETAIL_ERODE_PX`` (so the silhouette's own edge does not count), output over truth. A blurred
  copy scores below 1; 1 keeps the truth's labels, text and texture.
- ``background_psnr``: outside the mask, against the *template* — the composite should leave it exact
  (the template itself scores ``metrics.MAX_PSNR``). ``background_psnr_truth`` is the same region against
  the truth, where the unchanged template's score is the ceiling (the product's anti-aliased rim lies
  just outside the mask).
- ``seam_flicker_ratio``: mean absolute frame-to-frame change inside the product region at the model's
  frame-window seams (the steps across each cross-faded overlap), over the same inside windows. About 1 for smooth motion; above 1 when the clip
  jumps where two windows meet.
"""

from __future__ import annotations

import itertools

import kornia
import torch

from ..sampling.composite import grow_mask
from ..sampling.frame_windows import default_overlap, frame_windows
from . import metrics

DETAIL_ERODE_PX = 2
LUMA = (0.299, 0.587, 0.114)


def _batch(*clips: torch.Tensor) -> list[torch.Tensor]:
    return [c[None].float() for c in clips]


def product_psnr(output: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    return metrics.product_psnr(*_batch(output, truth, mask))


def product_ssim(output: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    return metrics.product_ssim(*_batch(output, truth, mask))


def background_psnr(output: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR outside the mask against ``reference`` (the template, or the truth)."""
    return metrics.background_psnr(*_batch(output, reference, mask))


def laplacian_energy(video: torch.Tensor, region: torch.Tensor) -> float:
    """Mean squared Laplacian (3x3) of the luminance over the pixels where ``region`` is 1."""
    luma = (video.float() * torch.tensor(LUMA)).sum(-1, keepdim=True).permute(0, 3, 1, 2)
    lap = kornia.filters.laplacian(luma, kernel_size=3, border_type="replicate", normalized=False)[:, 0]
    weight = region.float()
    return float((lap ** 2 * weight).sum() / weight.sum().clamp_min(1))


def detail_ratio(output: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor,
                 erode_px: int = DETAIL_ERODE_PX) -> float:
    """High-frequency energy inside the eroded mask, output over truth (nan if the truth has none there)."""
    inner = grow_mask((mask > 0.5).float(), -erode_px) > 0.5
    truth_energy = laplacian_energy(truth, inner)
    return laplacian_energy(output, inner) / truth_energy if truth_energy > 0 else float("nan")


def seam_frames(frames: int, window: int, overlap: int | None = None) -> list[int]:
    """Frames ``t`` whose step in from frame ``t - 1`` crosses from one window to the next, as the
    pipeline splits a clip (``frame_windows`` with ``overlap``, default ``default_overlap``): with
    windows that only touch, the first frame of each new window; with a cross-faded overlap, every step
    from entering the overlap to leaving it."""
    overlap = default_overlap(window) if overlap is None else overlap
    windows = frame_windows(frames, window, overlap)
    seams: set[int] = set()
    for (_, prev_end), (next_start, _) in itertools.pairwise(windows):
        seams.update(range(next_start, min(prev_end, frames - 1) + 1))
    return sorted(seams)


def frame_changes(video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[F-1]: mean |frame t - frame t-1| over the pixels in either frame's product region."""
    region = ((mask[1:] > 0.5) | (mask[:-1] > 0.5)).float()
    diff = (video[1:].float() - video[:-1].float()).abs().mean(-1)
    return (diff * region).flatten(1).sum(1) / region.flatten(1).sum(1).clamp_min(1)


def seam_flicker_ratio(video: torch.Tensor, mask: torch.Tensor, window: int, overlap: int | None = None) -> float:
    """Frame change at window seams over frame change inside windows (nan when the clip has no seam)."""
    seams = seam_frames(video.shape[0], window, overlap)
    if not seams:
        return float("nan")
    changes = frame_changes(video, mask)  # changes[t - 1] is the step into frame t
    at_seam = torch.zeros_like(changes, dtype=torch.bool)
    at_seam[[t - 1 for t in seams]] = True
    inside = changes[~at_seam].mean()
    return float(changes[at_seam].mean() / inside) if inside > 0 else float("nan")


def clip_scores(output: torch.Tensor, clip: dict, window: int) -> dict[str, float]:
    """Every metric of one composited clip; ``clip`` holds template, mask and truth tensors."""
    template, mask, truth = clip["template"], clip["mask"], clip["truth"]
    return {
        "product_psnr": product_psnr(output, truth, mask),
        "product_ssim": product_ssim(output, truth, mask),
        "detail_ratio": detail_ratio(output, truth, mask),
        "background_psnr": background_psnr(output, template, mask),
        "background_psnr_truth": background_psnr(output, truth, mask),
        "seam_flicker_ratio": seam_flicker_ratio(output, mask, window),
    }
