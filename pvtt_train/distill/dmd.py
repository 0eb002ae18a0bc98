"""Distribution Matching Distillation (DMD2) losses for a conditioned video flow model.

- ``dmd_loss``: the DMD2 estimator. The student's x0 is noised to a random sigma; the frozen
  teacher *with CFG* (the real score) and the online critic (the fake score, no CFG) each predict
  x0; their difference, divided by a per-sample normaliser ``mean|x0_student - x0_real|`` (with a
  floor), is the gradient pushed into the student through ``0.5 * ||x0 - stopgrad(x0 - grad)||^2``.
  Samples whose gradient is not finite are zeroed one by one, never the whole batch.
- ``critic_loss``: flow matching on *detached* student samples, so the critic tracks the
  student's distribution.
- ``background_loss``: masked L2 between the student's x0 and the template outside the mask.

CFG is the standard form (``v_u + g * (v_c - v_u)``; 1 = off). DMD2/CausVid configs write it as
``cond + s * (cond - uncond)``: convert with ``cfg_from_dmd2_form``.
All x0 / velocity arithmetic of the estimator runs in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.pvtt_model import Condition
from ..models.schedule import FlowSchedule
from ..sampling.samplers import guided_velocity


def cfg_from_dmd2_form(scale: float) -> float:
    """DMD2-form guidance ``s`` (cond + s*(cond-uncond)) to the standard-form weight ``s + 1``."""
    return scale + 1.0


@dataclass
class DMDOutput:
    loss: torch.Tensor
    grad_norm: float
    nonfinite_samples: int
    sigma_mean: float
    real_x0: tuple[float, float]  # mean, std of the teacher's x0 prediction (the saturation signal)
    fake_x0: tuple[float, float]  # mean, std of the critic's


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1).view(-1, *([1] * (x.ndim - 1)))


def sample_score_sigma(batch: int, schedule: FlowSchedule, generator: torch.Generator,
                       low: float = 0.02, high: float = 0.98) -> torch.Tensor:
    """Sigma for scoring: uniform in [low, high], warped by the schedule's shift, then clamped."""
    u = low + (high - low) * torch.rand(batch, generator=generator)
    return torch.as_tensor(schedule.warp(u)).clamp(low, high)


def dmd_loss(x0_student: torch.Tensor, cond: Condition, teacher, critic, schedule: FlowSchedule, cfg: float,
             generator: torch.Generator, norm_floor: float = 1e-3) -> DMDOutput:
    """The DMD2 distribution-matching loss on a batch of student x0 (model space, with grad)."""
    b = x0_student.shape[0]
    sigma = sample_score_sigma(b, schedule, generator).to(x0_student)
    with torch.no_grad():
        x0 = x0_student.detach()
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        x_t = schedule.noise(x0, noise, sigma)
        v_real = guided_velocity(teacher, x_t, sigma, cond, cfg)
        v_fake = critic.velocity(x_t, sigma, cond)
        x_t64, s64 = x_t.double(), sigma.double()
        x0_real = schedule.x0_from_velocity(x_t64, v_real.double(), s64)
        x0_fake = schedule.x0_from_velocity(x_t64, v_fake.double(), s64)
        normaliser = _per_sample_mean((x0.double() - x0_real).abs()).clamp_min(norm_floor)
        grad = (x0_fake - x0_real) / normaliser
        finite = torch.isfinite(grad).flatten(1).all(1)
        grad = torch.where(finite.view(-1, *([1] * (grad.ndim - 1))), grad, torch.zeros_like(grad))
        target = (x0.double() - grad).to(x0_student.dtype)
    loss = 0.5 * torch.nn.functional.mse_loss(x0_student, target)
    return DMDOutput(loss=loss, grad_norm=float(grad.float().norm() / max(1, b)),
                     nonfinite_samples=int((~finite).sum()), sigma_mean=float(sigma.mean()),
                     real_x0=_stats(x0_real), fake_x0=_stats(x0_fake))


def _stats(x: torch.Tensor) -> tuple[float, float]:
    finite = x[torch.isfinite(x)]
    return (float(finite.mean()), float(finite.std())) if finite.numel() > 1 else (float("nan"), float("nan"))


def critic_loss(critic, x0_student: torch.Tensor, cond: Condition, schedule: FlowSchedule,
                generator: torch.Generator) -> torch.Tensor:
    """Flow-matching loss of the critic on detached student samples (sigma logit-normal, shifted)."""
    x0 = x0_student.detach()
    b = x0.shape[0]
    sigma = torch.as_tensor(schedule.warp(torch.sigmoid(torch.randn(b, generator=generator)))).to(x0)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    x_t = schedule.noise(x0, noise, sigma)
    v = critic.velocity(x_t, sigma, cond)
    return torch.nn.functional.mse_loss(v.float(), (noise - x0).float())


def background_loss(x0_student: torch.Tensor, cond: Condition) -> torch.Tensor:
    """Mean squared error to the template outside the mask (the part the edit must not touch)."""
    outside = 1 - cond.region
    err = (x0_student - cond.background) ** 2 * outside
    return err.sum() / (outside.sum() * x0_student.shape[1]).clamp_min(1)
