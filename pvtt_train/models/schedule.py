"""The rectified-flow schedule shared by teacher, student, critic and sampler.

Convention (the diffusers / Wan one): ``x_sigma = (1 - sigma) * x0 + sigma * noise`` and the network
predicts the velocity ``v = noise - x0``; the transformer's timestep input is ``sigma * 1000``.
Shift warps a uniform sigma towards the noisy end: ``s' = shift * s / (1 + (shift - 1) * s)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

DEFAULT_STUDENT_TIMESTEPS = (1000, 750, 500, 250)


@dataclass(frozen=True)
class FlowSchedule:
    shift: float = 1.0
    num_train_timesteps: int = 1000

    def to_dict(self) -> dict:
        return asdict(self)

    def warp(self, s: torch.Tensor | float) -> torch.Tensor | float:
        """Apply the schedule's shift to a uniform sigma in [0, 1]."""
        return self.shift * s / (1 + (self.shift - 1) * s)

    @staticmethod
    def noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = per_sample(sigma, x0)
        return (1 - s) * x0 + s * noise

    @staticmethod
    def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x_t - per_sample(sigma, x_t) * v

    def student_sigmas(self, timesteps) -> list[float]:
        """Sigmas of a few-step student from its timestep list (e.g. 1000/750/500/250), shifted."""
        return [float(self.warp(t / self.num_train_timesteps)) for t in timesteps]

    def euler_scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        """diffusers' Euler flow-matching scheduler with this shift, used for teacher sampling."""
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.num_train_timesteps, shift=self.shift)


def per_sample(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``sigma`` (a scalar, or one value per sample [B]) shaped to broadcast over ``like`` [B, ...]."""
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma.ndim == 0:
        return sigma
    return sigma.view(-1, *([1] * (like.ndim - 1)))


def uniform_timesteps(steps: int, num_train_timesteps: int = 1000) -> tuple[int, ...]:
    """Evenly spaced timestep list from pure noise down, e.g. 4 -> (1000, 750, 500, 250)."""
    if steps < 1:
        raise ValueError(f"a sampler needs at least 1 step, got {steps}")
    return tuple(int(round(num_train_timesteps * (1 - i / steps))) for i in range(steps))
