"""DMD distillation of a few-step PVTT student from a teacher checkpoint.

One ``StageConfig`` describes one distillation stage (its timestep list, learning rates, critic
ratio, loss weights and budget); the progressive 50 -> 16 -> 8 -> 4 path is a list of stages
whose students initialise each other. Per iteration the critic takes one flow-matching step on a
fresh, detached student sample; every ``critic_ratio``-th iteration the student first takes a
DMD + background step (TTUR, as in DMD2), so each student update follows ``critic_ratio - 1``
critic-only iterations. The student is trained by backward simulation: the
inference sampler runs to a random exit step and only that step keeps its graph.

Non-finite losses skip the update and are counted; ``max_nonfinite`` in a row aborts the run.
The exported file holds the student's EMA weights and metadata that rebuild its sampler.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..data.batches import TrainingStream, training_data_config
from ..models.checkpoint import LoadedModel, file_sha256, save_checkpoint
from ..models.schedule import DEFAULT_STUDENT_TIMESTEPS
from ..sampling.samplers import student_rollout
from .dmd import background_loss, critic_loss, dmd_loss
from .state import load_state, save_state, state_files


class DistillationAborted(RuntimeError):
    """Raised when training cannot go on (e.g. the loss stays non-finite); says why."""


@dataclass
class StageConfig:
    name: str = "student_4step"
    timesteps: tuple[int, ...] = DEFAULT_STUDENT_TIMESTEPS
    teacher_cfg: float | None = None  # standard form; None = the teacher checkpoint's own CFG
    lr_student: float = 2e-5
    lr_critic: float = 1e-4
    critic_betas: tuple[float, float] = (0.0, 0.999)
    critic_ratio: int = 5
    generator_steps: int = 150
    minutes: float = 0.0  # 0 = no time limit
    weight_dmd: float = 1.0
    weight_background: float = 1.0
    norm_floor: float = 1e-3


@dataclass
class DistillConfig:
    batch_size: int = 4
    seed: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    max_nonfinite: int = 20
    log_every: int = 5
    save_every: int = 25  # generator steps between resumable training states
    keep_states: int = 2
    stage: StageConfig = field(default_factory=StageConfig)


def student_metadata(teacher: LoadedModel, cfg: DistillConfig, stats: dict) -> dict:
    stage = cfg.stage
    return {
        "stage": stage.name,
        "schedule": teacher.metadata["schedule"],
        "sampler": {"kind": "few_step", "steps": len(stage.timesteps), "timesteps": list(stage.timesteps)},
        "video": teacher.metadata["video"],
        "conditioning": teacher.metadata.get("conditioning", {}),
        "provenance": {
            "trainer": "pvtt_train distill (DMD2)",
            "teacher": teacher.path.name,
            "teacher_sha256": file_sha256(teacher.path),
            "data": teacher.metadata.get("provenance", {}).get("data"),
            "config": asdict(cfg),
            **stats,
        },
    }


def distill(teacher: LoadedModel, cfg: DistillConfig, out: Path, log_path: Path | None = None,
            progress: bool = True, init_student: torch.nn.Module | None = None,
            state_dir: Path | None = None, resume: bool = False) -> Path:
    """Distil ``teacher`` into a few-step student written to ``out``; returns ``out``.

    With ``state_dir``, the full training state is saved every ``cfg.save_every`` generator steps;
    ``resume`` continues from the newest one exactly (same weights as an uninterrupted run).
    """
    stage = cfg.stage
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    real = teacher.model.eval().requires_grad_(False)
    student = copy.deepcopy(init_student if init_student is not None else real).train().requires_grad_(True)
    critic = copy.deepcopy(real).train().requires_grad_(True)
    schedule = teacher.schedule
    sigmas = schedule.student_sigmas(stage.timesteps)
    teacher_cfg = stage.teacher_cfg if stage.teacher_cfg is not None else teacher.sampler.get("cfg", 1.0)
    opt_g = torch.optim.AdamW(student.parameters(), lr=stage.lr_student, weight_decay=0.0)
    opt_c = torch.optim.AdamW(critic.parameters(), lr=stage.lr_critic, betas=stage.critic_betas, weight_decay=0.0)
    ema = EMAModel(student.parameters(), decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
    stream = TrainingStream(training_data_config(teacher), cfg.batch_size, seed=cfg.seed + 1)

    log_path = log_path or out.with_suffix(".log.jsonl")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    g_steps, iteration, nonfinite_run, skipped, elapsed_before = 0, 0, 0, 0, 0.0
    saved = state_files(state_dir) if (resume and state_dir is not None) else []
    if saved:
        state = load_state(saved[-1])
        if json.dumps(state["config"], sort_keys=True) != json.dumps(asdict(cfg), sort_keys=True):
            raise DistillationAborted(f"{saved[-1]} was written with another configuration; resume with the same "
                                      f"options, or start a fresh run in another --state-dir.")
        student.load_state_dict(state["student"])
        critic.load_state_dict(state["critic"])
        opt_g.load_state_dict(state["opt_g"])
        opt_c.load_state_dict(state["opt_c"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        gen.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        stream.position = state["stream_position"]
        g_steps, iteration, skipped, elapsed_before = (state["g_steps"], state["iteration"], state["skipped"],
                                                       state["seconds"])
    start = time.monotonic() - elapsed_before
    deadline = start + stage.minutes * 60 if stage.minutes else float("inf")
    last: dict = {}

    def save_state_now():
        save_state(state_dir, g_steps, {
            "config": asdict(cfg), "student": student.state_dict(), "critic": critic.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_c": opt_c.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "rng": gen.get_state(),
            "torch_rng": torch.get_rng_state(), "stream_position": stream.position, "g_steps": g_steps,
            "iteration": iteration, "skipped": skipped, "seconds": time.monotonic() - start,
        }, keep=cfg.keep_states)

    bar = tqdm(total=stage.generator_steps, initial=g_steps, desc=f"distill {stage.name}", disable=not progress,
               unit="G-step")
    with open(log_path, "a" if saved else "w") as log:
        while g_steps < stage.generator_steps and time.monotonic() < deadline:
            batch = stream.next()
            cond = student.condition(batch["template"], batch["mask"], batch["reference"])
            exit_step = int(torch.randint(len(sigmas), (1,), generator=gen))
            generator_turn = (iteration + 1) % stage.critic_ratio == 0
            x0 = student_rollout(student, cond, schedule, sigmas, exit_step, gen, grad_at_exit=generator_turn)

            if generator_turn:
                out_dmd = dmd_loss(x0, cond, real, critic, schedule, teacher_cfg, gen, stage.norm_floor)
                loss_bg = background_loss(x0, cond)
                loss = stage.weight_dmd * out_dmd.loss + stage.weight_background * loss_bg
                if torch.isfinite(loss):
                    opt_g.zero_grad(set_to_none=True)
                    loss.backward()
                    g_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
                    opt_g.step()
                    if ema is not None:
                        ema.step(student.parameters())
                    nonfinite_run = 0
                    g_steps += 1
                    bar.update(1)
                    last = {"g_step": g_steps, "loss_dmd": out_dmd.loss.item(), "loss_background": loss_bg.item(),
                            "dmd_grad_norm": out_dmd.grad_norm, "student_grad_norm": float(g_norm),
                            "nonfinite_samples": out_dmd.nonfinite_samples, "score_sigma": out_dmd.sigma_mean,
                            "exit_step": exit_step, "x0_mean": x0.mean().item(), "x0_std": x0.std().item()}
                else:
                    nonfinite_run += 1
                    skipped += 1
                    if nonfinite_run >= cfg.max_nonfinite:
                        raise DistillationAborted(
                            f"the student loss was NaN/Inf {nonfinite_run} times in a row (generator step "
                            f"{g_steps}); lower --lr-student or --teacher-cfg, or check the teacher checkpoint.")

            loss_c = critic_loss(critic, x0, cond, schedule, gen)
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.grad_clip)
            opt_c.step()
            iteration += 1
            if generator_turn and last and g_steps % cfg.log_every == 0:
                last.update(loss_critic=loss_c.item(), seconds=round(time.monotonic() - start, 1),
                            skipped_steps=skipped)
                log.write(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in last.items()})
                          + "\n")
                log.flush()
                bar.set_postfix(dmd=f"{last['loss_dmd']:.4f}", bg=f"{last['loss_background']:.4f}",
                                critic=f"{loss_c.item():.4f}")
            if state_dir is not None and generator_turn and g_steps % cfg.save_every == 0:
                save_state_now()
    bar.close()
    if ema is not None:
        ema.copy_to(student.parameters())
    stats = {"teacher_cfg": teacher_cfg, "generator_steps": g_steps, "iterations": iteration, "skipped_steps": skipped,
             "train_seconds": round(time.monotonic() - start, 1)}
    save_checkpoint(out, student.eval(), student_metadata(teacher, cfg, stats))
    return out
