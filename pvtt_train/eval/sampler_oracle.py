"""What a perfect sampler and a perfect regressor score on the gate clips: the floor under sampler-eval's bars.

A synthetic clip's conditioning (template, mask, product photo) fixes most of its ground truth. What it
leaves open (``SyntheticConfig.specular``: where the new product's highlight sits and how bright it is;
with ``specular_scenes`` only where, since the template shows whether the scene has the light and how
bright; ``SyntheticConfig.sheen``: which side of the new product is bright, and how much;
``SyntheticConfig.grain``: the new product's fine texture) a sampler has to draw. Redrawing only that
(``SyntheticVideoGenerator.example(seed, draw)``) gives what a sampler with the true distribution returns;
the mean of many redraws is what a perfect one-shot regressor returns (the posterior mean: right on
average, blurred where the conditioning leaves things open). Scored exactly like the samples, the two say
whether the Fréchet distance can reward sampling on this data at all, and how far the teacher's own errors
lie above that floor.

Data whose conditioning leaves nothing open (``specular``, ``sheen`` and ``grain`` 0) has no oracle rows:
there a perfect sampler and a perfect regressor both return the truth.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.batches import to_torch
from ..data.synthetic import SyntheticConfig, SyntheticVideoGenerator
from ..distill.gates import GateEvaluator
from ..errors import InputError


def leaves_open(data: SyntheticConfig) -> bool:
    """True when the data has something its conditioning does not fix, so a sampler has something to draw."""
    return data.specular > 0 or data.sheen > 0 or data.grain > 0


def redrawn_targets(data: SyntheticConfig, seeds, draw: int) -> torch.Tensor:
    """Ground truths [N,F,H,W,3] of clips ``seeds`` with what their conditioning leaves open redrawn (``draw``)."""
    return to_torch(SyntheticVideoGenerator(data).batch(seeds, draw))["target"]


def oracle_rows(evaluator: GateEvaluator, data: SyntheticConfig, draws: int = 8) -> list[dict]:
    """Rows (``kind`` "oracle") for a perfect sampler (its scores averaged over ``draws`` redraws, with the
    Fréchet distances' range) and a perfect regressor (the mean of the same redraws), scored as samples are."""
    if draws < 2:
        raise InputError(f"oracle draws must be at least 2 (a mean of one draw is no regressor), got {draws}")
    seeds = [int(s) for s in evaluator.batch["seed"]]
    redrawn = [redrawn_targets(data, seeds, d) for d in range(1, draws + 1)]
    per_draw = [evaluator.score_clips(clips) for clips in redrawn]
    sampler = {k: float(np.mean([s[k] for s in per_draw])) for k in per_draw[0]}
    distances = [s["frechet_distance"] for s in per_draw]
    sampler["frechet_range"] = [min(distances), max(distances)]
    regressor = evaluator.score_clips(torch.stack(redrawn).mean(0))
    return [{"name": f"perfect sampler (what the conditioning leaves open redrawn; mean of {draws} draws)",
             "kind": "oracle", "sampler": "oracle", "steps": 0, "scores": sampler},
            {"name": f"perfect regressor (mean of the {draws} draws)", "kind": "oracle", "sampler": "oracle",
             "steps": 0, "scores": regressor}]
