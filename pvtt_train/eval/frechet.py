"""Fréchet distance between feature distributions (the FID / FVD statistic) and a cached scorer.

``FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)``: the 2-Wasserstein
distance between Gaussians fitted to the two feature sets. It is computed in float64 with two
symmetric eigendecompositions instead of scipy's general ``sqrtm``: both matrices under a root are
symmetric positive semi-definite, so their roots are real and the tiny negative eigenvalues that
rounding produces are clamped to zero (``sqrtm`` returns complex noise there). The result is
deterministic for given features and never negative.

Covariances use ``N - 1`` (as FID/FVD do). With N samples the estimate is biased upwards by about
``tr(S) * D / N``-sized terms, so gates must compare distances computed with the same N and the
same reference clips; that is why the default encoder has only 32 features (see video_encoder).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch

from ..errors import InputError
from .video_encoder import load_video_encoder


def _as_features(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"{name}: features must be a 2-D array [N, D], got shape {x.shape}")
    if x.shape[0] < 2:
        raise InputError(f"{name}: a covariance needs at least 2 samples, got {x.shape[0]}; score more clips")
    if not np.isfinite(x).all():
        raise InputError(f"{name}: features contain NaN or inf; check the videos for NaN values")
    return x


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix; eigenvalues below zero (rounding) count as zero."""
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a, b) -> float:
    """Fréchet distance between the Gaussians fitted to features ``a`` [N, D] and ``b`` [M, D]."""
    a, b = _as_features(a, "a"), _as_features(b, "b")
    if a.shape[1] != b.shape[1]:
        raise InputError(f"feature dimensions differ ({a.shape[1]} vs {b.shape[1]}): both sets must come from "
                         f"the same encoder")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrt_psd(cov_a)
    cross = root_a @ cov_b @ root_a
    cross_eigs = np.linalg.eigvalsh((cross + cross.T) / 2)
    trace_root = np.sqrt(np.clip(cross_eigs, 0.0, None)).sum()
    fd = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root
    return float(max(fd, 0.0))


def _digest(videos) -> str:
    """Content hash of a video batch: equal pixels give equal keys, whatever object holds them."""
    if isinstance(videos, torch.Tensor):
        videos = videos.detach().cpu().numpy()
    arr = np.ascontiguousarray(videos)
    h = hashlib.sha256(f"{arr.dtype}{arr.shape}".encode())
    h.update(arr.data)
    return h.hexdigest()


class FrechetScorer:
    """Fréchet distances in the feature space of a frozen video encoder.

    Features are cached by the *content* of the video batch (a SHA-256 of its pixels), so the ground
    truth and the teacher's outputs are encoded once per run however many gates compare against
    them, and an edited tensor is never served stale features. The cache keeps the most recent
    ``cache_size`` batches.
    """

    def __init__(self, encoder: torch.nn.Module | None = None, cache_size: int = 8):
        encoder = load_video_encoder() if encoder is None else encoder
        self.encoder = encoder.eval().requires_grad_(False)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def features(self, videos, batch: int = 32) -> np.ndarray:
        """Encoder features of ``videos`` [N,F,H,W,3] in 0..1, as float64 [N, D]."""
        if batch < 1:
            raise InputError(f"batch must be >= 1, got {batch}")
        key = _digest(videos)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if len(videos) == 0:
            raise InputError("no videos to score")
        feats = np.concatenate([self.encoder.features(videos[i:i + batch]).to("cpu", torch.float64).numpy()
                                for i in range(0, len(videos), batch)])
        feats.flags.writeable = False  # shared through the cache
        self._cache[key] = feats
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return feats

    def distance(self, videos, reference_videos) -> float:
        """Fréchet distance between the feature distributions of ``videos`` and ``reference_videos``."""
        return frechet_distance(self.features(videos), self.features(reference_videos))
