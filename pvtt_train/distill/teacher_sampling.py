"""How a distillation samples its teacher: at a flow shift and under autoguidance
(``distill --teacher-shift``, ``--guide-model``, ``--guide-weight``).

A run distils a *sampler*, not only weights: the teacher's ODE trajectories are the regression targets, its
samples are the gates' and the report's reference, and its velocity is DMD's real score. Measured on the
shipped paste-residual teacher, sampling it at Wan's flow shift 5 and guiding it by its own 500-step copy
made its 50-step sampler its best, and better than its plain one (README, *Shifted like Wan's own
sampler?*), so a run may distil that sampler instead:

- the shift moves where the teacher's Euler sampler spends its steps (trajectories, gates, report); it does
  not move the sigmas DMD and the critic draw, which follow the student's schedule as before;
- the guide makes every teacher call ``v_guide + w (v_teacher - v_guide)``: the real score, the trajectories
  and the reference samples alike (two calls where there was one, like CFG);
- the student and the critic still start from the plain teacher's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.prepare import encoder_identity
from ..errors import CheckpointError
from ..models.checkpoint import LoadedModel
from ..models.loading import load_model
from ..sampling.autoguidance import GUIDE_WEIGHT, autoguided, check_guide
from ..sampling.flow_shift import sampled_at_shift
from .signature import teacher_fingerprint


@dataclass(frozen=True)
class TeacherSampling:
    """The teacher's sampling shift (None: its schedule's) and its autoguidance (guide None: none)."""

    shift: float | None = None
    guide: LoadedModel | None = None
    weight: float | None = None
    guide_sha256: str | None = None  # hashed once: a 14B guide's file takes minutes to hash

    def apply(self, teacher: LoadedModel) -> LoadedModel:
        """The teacher as this run samples it; the weights are shared and ``teacher`` is left unchanged."""
        sampled = sampled_at_shift(teacher, self.shift) if self.shift is not None else teacher
        return autoguided(sampled, self.guide, self.weight) if self.guide is not None else sampled

    def record(self) -> dict | None:
        """What the caches' keys and the students' provenance record of it; None for the plain teacher, so
        that runs without it keep the keys they always had."""
        if self.shift is None and self.guide is None:
            return None
        record = {"shift": self.shift}
        if self.guide is not None:
            record.update(guide=self.guide.path.name, guide_sha256=self.guide_sha256, guide_weight=self.weight)
        return record


def teacher_sampling(teacher: LoadedModel, shift: float | None, guide_path: Path | None,
                     weight: float | None, guide_sha256: str | None = None) -> TeacherSampling:
    """The run's teacher sampling, its guide loaded and checked against the teacher it guides; ``guide_sha256``:
    the guide's fingerprint when the run already took it (not hashed again)."""
    if guide_path is None:
        if weight is not None:
            raise ValueError(f"a guide weight ({weight}) without a guide model")
        return TeacherSampling(shift=shift)
    guide = load_model(guide_path)
    check_guide(teacher.metadata, guide.metadata, Path(guide_path).name)
    if encoder_identity(guide.model) != encoder_identity(teacher.model):
        raise CheckpointError(
            f"--guide-model {Path(guide_path).name}: its VAE (or conditioning layout) is not the teacher's, so its "
            f"velocities live in another latent space; a guide is the teacher's own recipe, with the teacher's VAE, "
            f"trained for less time")
    return TeacherSampling(shift=shift, guide=guide, weight=GUIDE_WEIGHT if weight is None else weight,
                           guide_sha256=guide_sha256 or teacher_fingerprint(guide_path))
