"""Train the tiny PVTT teacher with rectified flow on freshly generated synthetic clips.

Objective: ``x_s = (1 - s) * target + s * noise``, predict ``v = noise - target`` with sigma drawn
logit-normal. The loss weights the product region ``mask_weight`` times more than the background
(which is mostly copied from the condition) so capacity goes where the edit happens, and can add
``interior_weight`` at the region's interior pixels (see ``loss_weight``). The product
reference is dropped for ``cfg_dropout`` of the samples, which trains the unconditional branch
used by classifier-free guidance. The EMA weights are what gets saved.

``input_perturbation`` (Ning et al. 2023, "Input Perturbation Reduces Exposure Bias in Diffusion Models")
noises the network's input with ``noise + gamma * extra`` while the target keeps ``noise``: the network
learns to correct inputs a little off the true noisy clip, as a sampler's own earlier estimates leave them.
An Euler sampler walks the teacher's own estimates, and off the training inputs a tiny teacher drifts (on
the ``--specular`` data its clean estimate along its own path stays near the truth's distribution down to
sigma 0.3 and adds detail that is not there below it). At the paper's 0.1 it moved a 750-step teacher's
figures by 2-3 % only (README, issue 14 section); larger values are untested. ``dream`` (``dream.py``) and
``rollout_steps`` (``self_rollout.py``) show the network its own one-step and several-step errors instead;
what they did to the same teacher is in the README too.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..data.batches import TrainingStream
from ..data.synthetic import SyntheticConfig
from ..models.checkpoint import save_checkpoint
from ..models.paste_residual import RESIDUAL_PREDICTIONS, zero_output
from ..models.pvtt_model import TINY_BACKBONE, WanConcatPVTT
from ..models.schedule import FlowSchedule, per_sample
from ..region_weight import loss_weight
from .dream import dream_shift
from .self_rollout import rollout_input


@dataclass
class TeacherConfig:
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1
    mask_weight: float = 4.0
    interior_weight: float = 0.0
    input_perturbation: float = 0.0
    dream: float = 0.0  # DREAM's power p (dream.py); 0 = off
    rollout_steps: int = 0  # self_rollout.py; 0 = off
    rollout_spacing: float = 0.04
    minutes: float = 25.0
    max_steps: int = 0  # 0 = limited by minutes only
    seed: int = 0
    shift: float = 1.0
    sample_steps: int = 50
    sample_cfg: float = 1.0
    prediction: str = "velocity"  # or "paste_residual" / "paste_residual_edm" (models.paste_residual)
    save_every: int = 500
    data: SyntheticConfig = field(default_factory=SyntheticConfig)
    backbone: dict = field(default_factory=lambda: dict(TINY_BACKBONE))


def lr_factor(step: int, cfg: TeacherConfig) -> float:
    """Linear warm-up, then (with a step budget) cosine decay to 10 % of the peak."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if not cfg.max_steps:
        return warm
    progress = min(1.0, step / cfg.max_steps)
    return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def flow_matching_loss(model, batch: dict, schedule: FlowSchedule, mask_weight: float, cfg_dropout: float,
                       generator: torch.Generator, interior_weight: float = 0.0,
                       input_perturbation: float = 0.0, dream: float = 0.0,
                       rollout: tuple[int, float] = (0, 0.0)) -> torch.Tensor:
    """Mask-weighted velocity MSE on one batch, with reference dropout for CFG; with ``input_perturbation``
    the input is noised with extra noise of that scale that the target does not have; with ``dream`` (> 0,
    its power ``p``) the input moves towards the model's own clean estimate and the target keeps the clean
    clip (``dream.py``); with ``rollout`` (steps, spacing) the input is where the model's own Euler steps
    take the truth noised higher, the target still the clean clip (``self_rollout.py``).

    A paste-residual model is scored on its clean-clip estimate instead (the velocity error times sigma):
    its network outputs that estimate, and the velocity's 1 / sigma would weight the nearly clean draws
    hundreds of times over the rest."""
    cond = model.condition_from_paste(batch["template"], batch["mask"], batch["paste"])
    x0 = model.encode(batch["target"])
    b = x0.shape[0]
    sigma = torch.sigmoid(torch.randn(b, generator=generator))
    sigma = schedule.warp(sigma)
    noise = torch.randn(x0.shape, generator=generator)
    seen = noise + input_perturbation * torch.randn(x0.shape, generator=generator) if input_perturbation else noise
    x_t = schedule.noise(x0, seen, sigma)
    keep = (torch.rand(b, generator=generator) >= cfg_dropout).float()
    target = noise - x0
    if rollout[0]:
        x_t = rollout_input(model, x0, seen, sigma, cond, keep, *rollout)
        target = (x_t - x0) / per_sample(sigma, x_t)
    if dream:
        shift = dream_shift(model, x_t, x0, sigma, cond, keep, dream)
        x_t = x_t + shift
        target = target + shift / per_sample(sigma, x_t)
    v = model.velocity(x_t, sigma, cond, keep_reference=keep)
    error = v - target
    if getattr(model, "prediction", "velocity") in RESIDUAL_PREDICTIONS:
        error = error * per_sample(sigma, error)
    weight = loss_weight(cond.region, mask_weight, interior_weight)
    return (weight * error ** 2).mean() / weight.mean()


def teacher_metadata(cfg: TeacherConfig, steps_done: int, seconds: float) -> dict:
    schedule = FlowSchedule(shift=cfg.shift)
    return {
        "stage": "teacher",
        "schedule": schedule.to_dict(),
        "sampler": {"kind": "euler_cfg", "steps": cfg.sample_steps, "cfg": cfg.sample_cfg},
        "video": {"frames": cfg.data.frames, "height": cfg.data.height, "width": cfg.data.width},
        "conditioning": {"reference": "aligned_paste", "uncond": "zero_reference"},
        "provenance": {
            "trainer": "pvtt_train teacher",
            "steps": steps_done,
            "train_seconds": round(seconds, 1),
            "data": cfg.data.to_dict(),
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("data",)},
        },
    }


def train_teacher(cfg: TeacherConfig, out: Path, log_path: Path | None = None, progress: bool = True) -> Path:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = WanConcatPVTT(cfg.backbone, prediction=cfg.prediction)
    if cfg.prediction in RESIDUAL_PREDICTIONS:
        zero_output(model.backbone)  # start from the paste composite itself
    model.train()
    schedule = FlowSchedule(shift=cfg.shift)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay)
    stream = TrainingStream(cfg.data, cfg.batch_size, seed=cfg.seed)
    log_path = log_path or out.with_suffix(".log.jsonl")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    start = time.monotonic()
    deadline = start + cfg.minutes * 60
    step, running = 0, None
    bar = tqdm(total=cfg.max_steps or None, desc="teacher", disable=not progress, unit="step")

    def save():
        backup = [p.detach().clone() for p in model.parameters()]
        ema.copy_to(model.parameters())
        save_checkpoint(out, model, teacher_metadata(cfg, step, time.monotonic() - start))
        for p, b in zip(model.parameters(), backup):
            p.data.copy_(b)

    while time.monotonic() < deadline and (not cfg.max_steps or step < cfg.max_steps):
        batch = stream.next()
        loss = flow_matching_loss(model, batch, schedule, cfg.mask_weight, cfg.cfg_dropout, gen, cfg.interior_weight,
                                  cfg.input_perturbation, cfg.dream, (cfg.rollout_steps, cfg.rollout_spacing))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        ema.step(model.parameters())
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if step % 25 == 0:
            log.write(json.dumps({"step": step, "loss": round(loss.item(), 5), "loss_ema": round(running, 5),
                                  "grad_norm": round(float(grad_norm), 4), "lr": sched.get_last_lr()[0],
                                  "seconds": round(time.monotonic() - start, 1)}) + "\n")
            log.flush()
        if cfg.save_every and step % cfg.save_every == 0:
            save()
    bar.close()
    save()
    log.close()
    return out
