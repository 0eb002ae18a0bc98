"""A teacher sampled under another flow shift than its schedule's.

A flow model is trained on every sigma in (0, 1), so where a sampler spends its steps is the sampler's
choice, not the network's. Wan 2.1 samples shifted (diffusers' ``WanPipeline``: ``flow_shift`` 3.0 at
480p, 5.0 at 720p), which puts most steps at high noise and few near clean. PVTT's embedded teachers were
trained and sampled at shift 1; there the Euler ODE spends 15 of its 50 steps below sigma 0.3, where the
tiny teacher drifts on its own inputs (README, *Where does the Euler ODE go wrong?*); at shift 5, 4 of them.
``sampler-eval --shift`` scores every undistilled sample of the teacher so shifted; students keep the shift
they were distilled at. Measured at shift 5, it makes the shipped paste-residual teacher's 50 steps its best
sampler, but not the default teacher's nor a specular one's (README, *Shifted like Wan's own sampler?*).
"""

from __future__ import annotations

import dataclasses

from ..models.checkpoint import LoadedModel


def sampled_at_shift(model: LoadedModel, shift: float) -> LoadedModel:
    """``model`` whose samplers warp their sigmas by ``shift`` (``s' = shift s / (1 + (shift - 1) s)``);
    the weights are shared and ``model`` itself is left unchanged."""
    if not shift > 0:
        raise ValueError(f"a flow shift is a positive number, got {shift}")
    meta = dict(model.metadata)
    meta["schedule"] = {**meta["schedule"], "shift": float(shift)}
    return dataclasses.replace(model, metadata=meta)
