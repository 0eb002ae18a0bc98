"""Autoguidance: a teacher guided by a weaker version of itself (Karras et al. 2024, "Guiding a diffusion
model with a bad version of itself").

Classifier-free guidance extrapolates away from the branch without the product photo. On PVTT's data that
branch knows nothing of the product, so every guidance scale tried moved the samples away from the data
(README, *Does fine texture make the 50 steps pay?*). Autoguidance keeps the conditioning in both branches and
extrapolates away from a *guide*: the same model trained for less time on the same data, whose errors are
the teacher's own, made larger. Each model call becomes

    v = v_guide + w (v_teacher - v_guide),

two calls per step like CFG, so a 50-step autoguided teacher makes the 100 calls a 4-step student
replaces. ``AutoGuided`` wraps the teacher so that every sampler (Euler, Euler ancestral, the few-step
sampler) and CFG on top of it run unchanged. Measured on the shipped paste-residual and a grain teacher, it
lowers every Euler distance but leaves fewer steps ahead of 50 (README, *Guided by a weaker copy of itself?*).
"""

from __future__ import annotations

import dataclasses

from ..data.batches import synthetic_config
from ..errors import CheckpointError
from ..models.checkpoint import LoadedModel

#: Autoguidance's weight when none is given: within the paper's 1.5-3, and the weight of the README's figures.
GUIDE_WEIGHT = 2.0
#: Metadata a guide must share with its teacher: the same network kind and output, noise schedule, clip size,
#: conditioning and training data, so that both velocities answer the same question.
SHARED = (("model", "arch"), ("model", "prediction"), ("schedule",), ("video",), ("conditioning",),
          ("provenance", "data"))


class AutoGuided:
    """``model`` whose velocity is pushed away from ``guide``'s by ``weight`` (1 = the model alone); every
    other attribute (conditioning, decoding) is the model's own."""

    def __init__(self, model, guide, weight: float):
        self.model, self.guide, self.weight = model, guide, weight

    def velocity(self, x, sigma, cond, **kwargs):
        v_guide = self.guide.velocity(x, sigma, cond, **kwargs)
        return v_guide + self.weight * (self.model.velocity(x, sigma, cond, **kwargs) - v_guide)

    def eval(self) -> AutoGuided:
        """Both networks in eval mode; returns the wrapper, so ``model = guided.eval()`` keeps the guide."""
        self.model.eval()
        self.guide.eval()
        return self

    def __getattr__(self, name):
        if name in ("model", "guide", "weight"):  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)


def _field(metadata: dict, keys: tuple[str, ...]):
    """The value at ``keys``; recorded training data as the fields of its config, so that fields one file
    predates read as their defaults; a Wan folder's conditioning without its text encoder's folder, which says
    where the encoder is read from, not what it is (the guided teacher encodes prompts with its own)."""
    value = metadata
    for key in keys:
        value = (value or {}).get(key)
    if keys == ("provenance", "data") and value:
        return dataclasses.asdict(synthetic_config(value))
    if keys == ("conditioning",) and isinstance((value or {}).get("text_encoder"), dict):
        return {**value, "text_encoder": {k: v for k, v in value["text_encoder"].items() if k != "folder"}}
    return value


def check_guide(teacher_meta: dict, guide_meta: dict, guide_name: str) -> None:
    """Refuse a guide that does not answer the teacher's question, naming the first field that differs."""
    for keys in SHARED:
        theirs, ours = _field(guide_meta, keys), _field(teacher_meta, keys)
        if theirs == ours:
            continue
        field = ".".join(keys)
        if isinstance(theirs, dict) and isinstance(ours, dict):  # name only what differs
            field += " " + ", ".join(k for k in sorted({*theirs, *ours}) if theirs.get(k) != ours.get(k))
            theirs, ours = ({k: v for k, v in d.items() if theirs.get(k) != ours.get(k)} for d in (theirs, ours))
        raise CheckpointError(
            f"--guide-model {guide_name}: its {field} ({theirs!r}) is not the teacher's ({ours!r}); a guide is the "
            f"teacher's own recipe trained for less time: train it with the teacher's command and a lower "
            f"--max-steps")


def autoguided(teacher: LoadedModel, guide: LoadedModel, weight: float) -> LoadedModel:
    """The teacher sampled under autoguidance from ``guide`` at ``weight``; the teacher is left unchanged."""
    return dataclasses.replace(teacher, model=AutoGuided(teacher.model, guide.model, weight))
