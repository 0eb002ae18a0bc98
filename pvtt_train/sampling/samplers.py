"""Teacher and student samplers, with mask-based background preservation.

- Teacher: diffusers' Euler flow-matching scheduler, N steps, classifier-free guidance in the
  standard form ``v = v_uncond + cfg * (v_cond - v_uncond)`` (cfg 1 = no guidance, one call/step).
  With ``eta`` > 0 (a sampler's optional ``eta``) the same sigmas are walked by Euler ancestral, ComfyUI's
  ``euler_ancestral`` for rectified flow (diffusers' ``LTXEulerAncestralRFScheduler``): each step lands
  below the next sigma and fresh noise brings it back, so errors of earlier steps are partly forgotten.
  Every CFG in PVTT (samplers, DMD's real score, regression trajectories) is ``guided_velocity``.
- Student: the few-step sampler of the DMD anchors: predict x0 at each listed sigma, then re-noise
  that x0 with fresh noise to the next sigma; the last prediction is the output.

Background preservation: before every model call, the region outside the mask is replaced by
the template noised to the current sigma, so the model always sees the true background at the
right noise level. The final prediction is left raw; compositing is a separate pixel-space step.

``callback(i, total, x0_preview)`` is called after every step; raising from it (ComfyUI's Cancel)
stops sampling at once.

``sample_from_metadata`` checks what it returns: a damaged checkpoint (or one whose schedule slipped
past the checks) yields NaN or Inf, which clamping would hide or keep, so it is an error naming the
checkpoint rather than a clip.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import LTXEulerAncestralRFScheduler

from ..errors import CheckpointError, InputError
from ..models.pvtt_model import Condition
from ..models.schedule import FlowSchedule

StepCallback = Callable[[int, int, torch.Tensor], None]


def reinject_background(x: torch.Tensor, cond: Condition, sigma: float | torch.Tensor,
                        noise: torch.Tensor) -> torch.Tensor:
    """Keep x inside the mask; outside it, put the template noised to ``sigma``."""
    background = FlowSchedule.noise(cond.background, noise, torch.as_tensor(sigma))
    return cond.region * x + (1 - cond.region) * background


def guided_velocity(model, x: torch.Tensor, sigma: float | torch.Tensor, cond: Condition,
                    cfg: float) -> torch.Tensor:
    """Velocity with standard-form CFG; one batched call for both branches when cfg != 1.

    The unconditional branch is the negative prompt, with the reference, control and mask kept,
    when the condition carries a ``negative_context`` (as ``WanVACEPipeline`` guides); otherwise it
    is the same prompt without the product reference (the embedded model's guidance).
    ``sigma`` is one value for the batch or a [B] tensor (DMD scores each sample at its own sigma).
    """
    sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
    if cfg == 1.0:
        return model.velocity(x, sig, cond)
    x2, sig2 = torch.cat([x, x]), torch.cat([sig, sig])
    if cond.negative_context is not None:
        v_cond, v_uncond = model.velocity(x2, sig2, cond.prompt_pair()).chunk(2)
    else:
        keep = torch.cat([torch.ones(x.shape[0]), torch.zeros(x.shape[0])]).to(x)
        v_cond, v_uncond = model.velocity(x2, sig2, cond.repeat(2), keep_reference=keep).chunk(2)
    return v_uncond + cfg * (v_cond - v_uncond)


def initial_noise(model, cond: Condition, generator: torch.Generator | None) -> torch.Tensor:
    shape = cond.background.shape
    return torch.randn(shape, generator=generator, dtype=cond.background.dtype).to(cond.background.device)


@torch.no_grad()
def sample_teacher(model, cond: Condition, schedule: FlowSchedule, steps: int = 50, cfg: float = 1.0,
                   generator: torch.Generator | None = None, preserve_background: bool = True,
                   callback: StepCallback | None = None) -> torch.Tensor:
    """Euler flow-matching sampling from pure noise; returns x0 in model space."""
    scheduler = schedule.euler_scheduler()
    scheduler.set_timesteps(steps, device=cond.background.device)
    noise = initial_noise(model, cond, generator)
    x = noise
    sigmas = scheduler.sigmas
    for i, t in enumerate(scheduler.timesteps):
        sigma = float(sigmas[i])
        if preserve_background:
            x = reinject_background(x, cond, sigma, noise)
        v = guided_velocity(model, x, sigma, cond, cfg)
        x = scheduler.step(v, t, x, return_dict=False)[0]
        if callback is not None:
            callback(i + 1, steps, schedule.x0_from_velocity(x, v, float(sigmas[i + 1])))
    return x


@torch.no_grad()
def sample_teacher_ancestral(model, cond: Condition, schedule: FlowSchedule, steps: int = 50, cfg: float = 1.0,
                             eta: float = 1.0, generator: torch.Generator | None = None,
                             preserve_background: bool = True, callback: StepCallback | None = None) -> torch.Tensor:
    """Euler ancestral flow-matching sampling from pure noise at the Euler sampler's sigmas; returns x0.

    Background preservation: until the last step, outside the mask the model's velocity is replaced by the
    template's exact one, so the background walks the same stochastic path as the product (same noise
    draws) and the model always sees the template noised to the current sigma, as the Euler sampler's
    re-injection keeps it. The last step returns the model's own x0 everywhere, raw like Euler's."""
    euler = schedule.euler_scheduler()
    euler.set_timesteps(steps, device=cond.background.device)
    scheduler = LTXEulerAncestralRFScheduler(num_train_timesteps=schedule.num_train_timesteps, eta=eta)
    scheduler.set_timesteps(sigmas=euler.sigmas, device=cond.background.device)
    sigmas = [float(s) for s in scheduler.sigmas]
    x = initial_noise(model, cond, generator)
    if preserve_background:
        x = reinject_background(x, cond, sigmas[0], x)
    for i, t in enumerate(scheduler.timesteps[:-1]):
        v = guided_velocity(model, x, sigmas[i], cond, cfg)
        x0 = schedule.x0_from_velocity(x, v, sigmas[i])
        if preserve_background and i < steps - 1:
            v = cond.region * v + (1 - cond.region) * (x - cond.background) / sigmas[i]
        x = scheduler.step(v, t, x, generator=generator, return_dict=False)[0]
        if callback is not None:
            callback(i + 1, steps, x0)
    return x


def student_rollout(model, cond: Condition, schedule: FlowSchedule, sigmas: list[float], exit_step: int,
                    generator: torch.Generator | None = None, preserve_background: bool = True, cfg: float = 1.0,
                    grad_at_exit: bool = False, callback: StepCallback | None = None) -> torch.Tensor:
    """The few-step sampler up to ``exit_step``; returns that step's x0.

    Inference runs it to the last step without gradients. Distillation (backward simulation) exits
    at a random step and keeps the graph of the exit step only, so the student is trained on
    exactly the inputs it sees at inference.
    """
    noise = initial_noise(model, cond, generator)
    x = noise
    for i, sigma in enumerate(sigmas[: exit_step + 1]):
        if preserve_background:
            x = reinject_background(x, cond, sigma, noise)
        with torch.set_grad_enabled(grad_at_exit and i == exit_step):
            v = guided_velocity(model, x, sigma, cond, cfg)
            x0 = schedule.x0_from_velocity(x, v, sigma)
        if callback is not None:
            callback(i + 1, len(sigmas), x0)
        if i < exit_step:
            noise = initial_noise(model, cond, generator)
            x = FlowSchedule.noise(x0, noise, torch.tensor(sigmas[i + 1]))
    return x0


@torch.no_grad()
def sample_student(model, cond: Condition, schedule: FlowSchedule, sigmas: list[float],
                   generator: torch.Generator | None = None, preserve_background: bool = True,
                   cfg: float = 1.0, callback: StepCallback | None = None) -> torch.Tensor:
    """Few-step x0-prediction sampling with fresh-noise re-noising between the listed sigmas."""
    return student_rollout(model, cond, schedule, sigmas, len(sigmas) - 1, generator, preserve_background, cfg,
                           callback=callback)


def sample_from_metadata(model, cond: Condition, metadata: dict, steps: int | None = None,
                         generator: torch.Generator | None = None, preserve_background: bool = True,
                         callback: StepCallback | None = None, guidance: float | None = None,
                         source: str | Path = "the checkpoint") -> torch.Tensor:
    """Sample the way a checkpoint says it should be sampled (teacher Euler+CFG or student list).

    ``steps`` overrides the checkpoint's step count; ``guidance`` the teacher's CFG scale (None: the
    checkpoint's; a distilled student has guidance built in and samples without CFG); ``source``
    names the checkpoint in the error raised when the result is not finite."""
    if steps is not None and steps < 1:
        raise InputError(f"steps must be at least 1 (got {steps}); use 0 in PVTT Template Transfer for the "
                         f"checkpoint's own step count")
    schedule = FlowSchedule(**metadata["schedule"])
    sampler = metadata["sampler"]
    if sampler["kind"] == "euler_cfg":
        cfg = sampler.get("cfg", 1.0) if guidance is None else guidance
        if sampler.get("eta", 0.0) > 0:
            x0 = sample_teacher_ancestral(model, cond, schedule, steps or sampler["steps"], cfg, sampler["eta"],
                                          generator, preserve_background, callback)
        else:
            x0 = sample_teacher(model, cond, schedule, steps or sampler["steps"], cfg, generator, preserve_background,
                                callback)
    elif sampler["kind"] == "few_step":
        from ..models.schedule import uniform_timesteps

        timesteps = sampler["timesteps"] if steps in (None, sampler["steps"]) else \
            uniform_timesteps(steps, schedule.num_train_timesteps)
        x0 = sample_student(model, cond, schedule, schedule.student_sigmas(timesteps), generator,
                            preserve_background, 1.0, callback)
    else:
        raise ValueError(f"unknown sampler kind {sampler['kind']!r} in checkpoint metadata")
    require_finite(x0, source, "values")
    return x0


def require_finite(x: torch.Tensor, source: str | Path, unit: str = "values") -> torch.Tensor:
    """``x`` unchanged if every value is finite; otherwise a ``CheckpointError`` naming the checkpoint
    and how much of the output is NaN/Inf (``unit``: "values", or "pixels" for a [..., 3] clip)."""
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return x
    if unit == "pixels":
        finite = finite.all(dim=-1)
    name = source.name if isinstance(source, Path) else source
    raise CheckpointError(f"{name} produced NaN/Inf values ({int((~finite).sum())} of {finite.numel()} {unit}); "
                          f"the checkpoint is damaged or its schedule is invalid, so no clip was returned. Re-export "
                          f"it with pvtt_train (or use an intact copy).")
