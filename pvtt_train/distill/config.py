"""Configuration of a progressive DMD distillation: stages, loss sets, gates and run mechanics.

The default path is 50 -> 16 -> 8 -> 4 steps (``PATHS["default"]``); ``PATHS["gentle"]`` goes
50 -> 25 -> 12 -> 6 -> 4. Each stage's student initialises the next. Stage roles fix the loss set
and the gate:

- ``first``: DMD + regression + temporal; gate: distance <= 1.15 x the teacher's.
- ``middle``: adds background + identity; gate: distance <= 1.10 x the previous stage's and raw
  background PSNR > 35 dB (or > the teacher's own less 0.5 dB where that is lower: ``gates.check_gate``).
- ``last``: every loss (adversarial and perceptual stay optional); gate: distance <= 1.15 x the
  teacher's, issue 14's bar for the 4-step student.

``truth`` (the x0 MSE against the clip's ground truth, ``truth.py``) joins every stage when ``--weight
truth=W`` gives it a weight; it is off by default.

Learning rates follow the recipe's (1e-4, 5e-5, 1e-5) for (first, middle, last), multiplied by
``lr_scale`` (0.4 for the 0.95 M-parameter default: its 150-step stages need a gentler student
step than the recipe's LoRA-sized one). Loss weights are ``(weight, warm-up generator steps)``;
the weight ramps linearly from 0 over the warm-up.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

PATHS: dict[str, tuple[int, ...]] = {"default": (16, 8, 4), "gentle": (25, 12, 6, 4)}

LOSSES = ("dmd", "regression", "temporal", "background", "identity", "adversarial", "perceptual", "truth")
OPTIONAL_LOSSES = ("adversarial", "perceptual")
#: Losses every stage of ``build_stages`` takes once ``--weight`` gives them a weight (default 0: off).
WEIGHTED_ON_DEMAND = ("truth",)
#: The truth loss's (mask, interior) pixel weights by default: every pixel alike (``truth.truth_loss``).
UNIFORM_TRUTH = (1.0, 0.0)

LOSS_SETS: dict[str, tuple[str, ...]] = {
    "first": ("dmd", "regression", "temporal"),
    "middle": ("dmd", "regression", "temporal", "background", "identity"),
    "last": ("dmd", "regression", "temporal", "background", "identity"),
}

#: (weight, warm-up in generator steps) of each loss.
DEFAULT_WEIGHTS: dict[str, tuple[float, int]] = {
    "dmd": (1.0, 0),
    "regression": (0.25, 0),
    "temporal": (0.1, 10),
    "background": (1.0, 0),
    "identity": (0.05, 10),
    "adversarial": (0.01, 20),
    "perceptual": (0.1, 0),
    "truth": (0.0, 0),  # the x0 MSE against the clip's ground truth (``truth.py``); off unless asked
}

RECIPE_LR: dict[str, float] = {"first": 1e-4, "middle": 5e-5, "last": 1e-5}
#: ``lr_scale``'s default: the recipe's rates suit LoRA-sized updates; the 0.95 M-parameter default model's short
#: stages need a gentler student step.
LR_SCALE = 0.4
#: Critic (fake score) updates per student update by default: DMD2's own ratio.
CRITIC_RATIO = 5
CRITIC_INIT = ("teacher", "keep")
REAL_SCORE = ("teacher", "previous")


@dataclass
class GateConfig:
    """Acceptance test after a stage: ``distance <= ratio x reference`` (+ a background floor)."""

    reference: str = "teacher"  # "teacher" or "previous" (the stage before)
    ratio: float = 1.15
    min_background_psnr: float | None = None


@dataclass
class StageConfig:
    name: str = "student_4step"
    role: str = "last"
    timesteps: tuple[int, ...] = (1000, 750, 500, 250)
    shift: float | None = None  # None = the teacher's schedule shift
    lr_student: float = 4e-6
    lr_critic: float = 1e-4
    lr_discriminator: float = 1e-4
    critic_betas: tuple[float, float] = (0.0, 0.999)
    critic_ratio: int = CRITIC_RATIO
    critic_init: str = "teacher"  # "teacher": fresh copy of the teacher; "keep": the previous stage's critic
    generator_steps: int = 150
    minutes: float = 0.0  # 0 = no wall-clock limit
    losses: tuple[str, ...] = LOSS_SETS["last"]
    weights: dict[str, tuple[float, int]] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    norm_floor: float = 1e-3
    r1_weight: float = 0.1  # approximate R1 of the discriminator (adversarial loss only)
    r1_sigma: float = 0.01
    teacher_cfg: float | None = None  # standard form; None = the teacher checkpoint's own CFG
    truth_region: tuple[float, float] = UNIFORM_TRUTH  # (mask, interior) pixel weights of the truth loss
    gate: GateConfig = field(default_factory=GateConfig)

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def weight(self, loss: str, g_step: int) -> float:
        """The loss's weight at generator step ``g_step`` (0 when the stage does not use it)."""
        if loss not in self.losses:
            return 0.0
        weight, warmup = self.weights[loss]
        return weight * min(1.0, (g_step + 1) / warmup) if warmup > 0 else weight


@dataclass
class RunConfig:
    """Mechanics shared by every stage of one run."""

    batch_size: int = 4
    grad_accumulation: int = 1  # micro-batches per optimizer step (of student and critic alike)
    seed: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    max_nonfinite: int = 20
    log_every: int = 5
    save_every: int = 25  # generator steps between resumable training states
    keep_states: int = 2
    mixed_precision: str = "no"  # "no", "bf16" or "fp16" (accelerate)
    gradient_checkpointing: bool = False
    real_score: str = "teacher"  # "teacher", or "previous": the previous stage's student scores the next
    regression_pool: int = 64  # clips with cached teacher ODE trajectories
    eval_clips: int = 64  # held-out clips for the gates
    identity_encoder: str | None = None  # None = shipped; or a .safetensors / CLIP or DINOv2 folder
    video_encoder: str | None = None  # None = shipped; or an I3D .safetensors
    force: bool = False  # continue past a failed gate
    teacher_shift: float | None = None  # the flow shift the teacher is sampled at; None = its schedule's
    guide_weight: float | None = None  # autoguidance's weight; None = no guide (``teacher_sampling``)


def stage_role(index: int, count: int) -> str:
    if index == count - 1:
        return "last"
    return "first" if index == 0 else "middle"


def default_gate(role: str) -> GateConfig:
    if role == "first":
        return GateConfig("teacher", 1.15)
    if role == "middle":
        return GateConfig("previous", 1.10, min_background_psnr=35.0)
    return GateConfig("teacher", 1.15)


def build_stages(path: str | tuple[int, ...] = "default", generator_steps: int | tuple[int, ...] = 150,
                 lr_scale: float = LR_SCALE, adversarial: bool = False, perceptual: bool = False,
                 **overrides) -> list[StageConfig]:
    """The stage list of a path name (``default``/``gentle``) or an explicit step list, e.g. (8, 4)."""
    from ..models.schedule import (
        uniform_timesteps,  # torch: imported when stages are built, not when parsing
    )

    steps = PATHS[path] if isinstance(path, str) else tuple(path)
    if not steps or any(s < 1 for s in steps) or any(a <= b for a, b in itertools.pairwise(steps)):
        raise ValueError(f"a distillation path is a strictly decreasing list of step counts, e.g. 16,8,4 (each stage "
                         f"exports its own student file); got {steps}")
    budgets = generator_steps if isinstance(generator_steps, tuple) else (generator_steps,) * len(steps)
    if len(budgets) != len(steps):
        raise ValueError(f"{len(budgets)} generator-step budgets for {len(steps)} stages; give one or one per stage")
    stages = []
    for i, (n, budget) in enumerate(zip(steps, budgets)):
        role = stage_role(i, len(steps))
        losses = LOSS_SETS[role] + (("adversarial",) if adversarial and role == "last" else ()) \
            + (("perceptual",) if perceptual and role == "last" else ()) + WEIGHTED_ON_DEMAND
        stage = StageConfig(name=f"student_{n}step", role=role, timesteps=uniform_timesteps(n),
                            lr_student=RECIPE_LR[role] * lr_scale, generator_steps=budget, losses=losses,
                            gate=default_gate(role))
        stage = replace(stage, **overrides)
        # A loss weighted 0 is not computed at all: the pixel-space ones decode whole clips with gradients,
        # which is what `plan` counts, so --weight temporal=0 is how a big model's run leaves them out.
        stages.append(replace(stage, losses=tuple(k for k in stage.losses if stage.weights[k][0] > 0)))
    return stages


def losses_used(stages: list[StageConfig]) -> set[str]:
    """The losses some stage trains with (``build_stages`` drops a loss weighted 0 from its stage)."""
    return {loss for s in stages for loss in s.losses}


#: Losses that compare with the clip's ground truth, and the flag that turns each on.
GROUND_TRUTH_LOSSES = {"adversarial": "--adversarial", "truth": "--weight truth"}


def check_config(stages: list[StageConfig], run: RunConfig) -> None:
    """Reject inconsistent settings up front, with the fix in the message."""
    if run.real_score not in REAL_SCORE:
        raise ValueError(f"real_score must be one of {REAL_SCORE}, got {run.real_score!r}")
    if run.grad_accumulation < 1 or run.batch_size < 1:
        raise ValueError("batch_size and grad_accumulation must be at least 1")
    for s in stages:
        unknown = set(s.losses) - set(LOSSES)
        if unknown:
            raise ValueError(f"stage {s.name}: unknown losses {sorted(unknown)}; known: {', '.join(LOSSES)}")
        if "dmd" not in s.losses:
            raise ValueError(f"stage {s.name}: the DMD loss is the stage's core and cannot be left out")
        if s.critic_init not in CRITIC_INIT:
            raise ValueError(f"stage {s.name}: critic_init must be one of {CRITIC_INIT}, got {s.critic_init!r}")
        if s.critic_ratio < 1:
            raise ValueError(f"stage {s.name}: critic_ratio must be at least 1")
        if s.gate.reference not in ("teacher", "previous"):
            raise ValueError(f"stage {s.name}: gate reference must be 'teacher' or 'previous'")
