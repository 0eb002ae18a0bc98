"""One DMD2 distillation stage, single-process or under ``accelerate launch`` (DDP, or FSDP: ``sharding.py``).

Per optimizer step of the critic (an *iteration*) the student is rolled out by backward
simulation: the inference sampler runs to an exit step drawn from a generator shared by all
ranks, and only that step keeps its graph. Every ``critic_ratio``-th iteration the student first
takes a step on its stage's losses (TTUR, DMD2); the critic then takes its flow-matching step on
the detached sample (plus the discriminator loss when the adversarial loss is on). With gradient
accumulation each optimizer step, of student and critic alike, sums ``grad_accumulation``
micro-batches, so the critic ratio counts optimizer steps, not micro-batches.

A non-finite loss on any rank skips that optimizer step on every rank and is counted;
``max_nonfinite`` skipped student steps in a row abort the run. The full training state
(student, critic, discriminator, optimizers, EMA, every rank's RNG, data position and counters)
is saved atomically every ``save_every`` student steps and restored exactly by ``resume``.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .. import stop_signals
from ..data.dataset import EncodedDataset, condition_of, target_latents, training_stream
from ..data.synthetic import SyntheticConfig
from ..identity.loss import identity_loss
from ..models.checkpoint import LoadedModel, write_atomic
from ..models.schedule import FlowSchedule
from ..sampling.autoguidance import AutoGuided
from ..sampling.samplers import student_rollout
from .adversarial import (
    DiscriminatorHead,
    discriminator_loss,
    generator_adversarial_loss,
)
from .config import RunConfig, StageConfig
from .dmd import background_loss, critic_loss, dmd_loss
from .regression import TrajectoryCache, regression_loss
from .sharding import (
    Sharding,
    clip_grad_norm,
    ema_state,
    frozen_modules,
    frozen_teacher,
    half_dtype,
    load_ema_state,
    load_model_state,
    load_optimizer_state,
    model_bytes,
    model_state,
    optimizer_state,
    resident_bytes,
    shared_copy,
    unsharded,
)
from .signature import check_signature, run_signature, saved_signature
from .state import load_newest_state, rotate_states, save_state
from .temporal import FlowCache, temporal_loss
from .truth import truth_loss


#: What a resume reads from a training state; a state without all of them is set aside as damaged.
STATE_KEYS = ("student", "critic", "head", "opt_g", "opt_c", "opt_d", "ema", "rng", "sync_rng", "stream_position",
              "g_steps", "iteration", "skipped", "skipped_critic", "seconds")


class DistillationAborted(RuntimeError):
    """Raised when training cannot go on (e.g. the loss stays non-finite); says why."""


class Routed:
    """A model whose ``velocity`` calls go through its (possibly DDP-wrapped) ``forward``.

    Distributed wrappers synchronise gradients only for calls through ``forward``; everything
    else (``condition``, ``decode``, ``config``) is read from the inner module.
    """

    def __init__(self, wrapped, inner):
        self.wrapped, self.inner = wrapped, inner

    def velocity(self, x_t, sigma, cond, keep_reference=True):
        return self.wrapped(x_t, sigma, cond, keep_reference)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@dataclass
class StageInputs:
    """What a stage gets from the run: models to start from and the frozen helpers of its losses."""

    teacher: LoadedModel
    real: torch.nn.Module | AutoGuided  # the real score: the teacher (maybe autoguided), or the previous student
    real_cfg: float
    student_init: torch.nn.Module
    critic_init: torch.nn.Module
    data: SyntheticConfig | EncodedDataset  # synthetic clips, or a prepare-data dataset
    trajectories: TrajectoryCache | None = None
    identity: torch.nn.Module | None = None
    perceptual: torch.nn.Module | None = None


@dataclass
class StageResult:
    student: torch.nn.Module  # EMA weights
    critic: torch.nn.Module
    stats: dict


def student_schedule(teacher_schedule: FlowSchedule, stage: StageConfig) -> FlowSchedule:
    shift = stage.shift if stage.shift is not None else teacher_schedule.shift
    return FlowSchedule(shift=shift, num_train_timesteps=teacher_schedule.num_train_timesteps)


def _all_ranks(acc, flag: bool) -> bool:
    """True only if ``flag`` holds on every rank (so all ranks skip or step together)."""
    if acc.num_processes == 1:
        return flag
    return bool(acc.reduce(torch.tensor([0.0 if flag else 1.0], device=acc.device), "sum").item() == 0)


def _gathered_rng(acc, gen: torch.Generator) -> torch.Tensor:
    """Every rank's (torch, noise-generator) RNG state as rows of one uint8 tensor (collective)."""
    local = torch.cat([torch.get_rng_state(), gen.get_state()])[None]
    if acc.num_processes == 1:
        return local
    return acc.gather(local.to(acc.device)).cpu()


def _set_rng(row: torch.Tensor, gen: torch.Generator) -> None:
    n = torch.get_rng_state().numel()
    torch.set_rng_state(row[:n].clone())
    gen.set_state(row[n:].clone())


def _stop_signal(acc) -> int:
    """The stop signal (``stop_signals``) any rank received, 0 if none, the same on every rank: all
    ranks save the same step and stop together (a save is collective)."""
    signum = stop_signals.pending()
    if acc.num_processes == 1:
        return signum
    return int(acc.gather(torch.tensor([signum], device=acc.device)).max().item())


def _rank_spread(acc, model: torch.nn.Module) -> float:
    """Largest difference between ranks of per-tensor weight checksums (0 in a healthy DDP run)."""
    if acc.num_processes == 1:
        return 0.0
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])[None].to(acc.device)
    rows = acc.gather(sums)
    return float((rows - rows[:1]).abs().max() / rows.abs().max().clamp_min(1e-12))


def _trim_log(log_path: Path, g_steps: int) -> None:
    """On resume, keep only the log rows of steps the restored state includes: a killed run may have
    logged steps after its last save (they are trained, and logged, again) and half a row."""
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("g_step", 0) <= g_steps:
            kept.append(line + "\n")
    write_atomic(log_path, lambda tmp: Path(tmp).write_text("".join(kept)))


def trainable_copy(model: torch.nn.Module, device) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """A training copy of ``model`` (on ``device``; None: where ``model`` is) and the parameters training may
    update (``model.trainable_parameters()``).

    Everything else (a Wan VAE, a fixed prompt context) is frozen: ``requires_grad`` False, so it
    is in no optimizer, EMA or gradient clip, and pixel-space losses backpropagate through the
    decoder without updating it. Frozen modules (the VAE) are not copied: the copy uses ``model``'s own
    (``sharding.shared_copy``), kept in eval mode.
    """
    copy_ = shared_copy(model)
    if device is not None:
        copy_.to(device)
    copy_.train().requires_grad_(False)
    for module in frozen_modules(copy_).values():
        module.eval()
    params = list(copy_.trainable_parameters())
    for p in params:
        p.requires_grad_(True)
    return copy_, params


def frozen_real_score(real, device, dtype: torch.dtype | None, sharding: Sharding | None):
    """The frozen real score (``sharding.frozen_teacher``); an autoguided teacher's guide is frozen, cast and
    sharded as the teacher is, since it is called as often."""
    if isinstance(real, AutoGuided):
        return AutoGuided(frozen_teacher(real.model, device, dtype, sharding),
                          frozen_teacher(real.guide, device, dtype, sharding), real.weight)
    return frozen_teacher(real, device, dtype, sharding)


def _make_discriminator(critic, stage: StageConfig):
    if "adversarial" not in stage.losses:
        return None, None
    head = DiscriminatorHead.for_critic(critic)
    return head, torch.optim.AdamW(head.parameters(), lr=stage.lr_discriminator, betas=stage.critic_betas)


def train_stage(acc, inputs: StageInputs, stage: StageConfig, run: RunConfig, state_dir: Path | None,
                resume: bool, log_path: Path, progress: bool = True, signature: dict | None = None) -> StageResult:
    """Train one stage; returns the EMA student, the critic and the stage's statistics.

    ``signature`` (``signature.run_signature``; by default this stage's and run's settings) is saved in
    every training state, and a resumed state must carry the same one. A first Ctrl-C or SIGTERM under
    the CLI (``stop_signals``) ends the stage at the next step boundary with its state saved."""
    rank, world = acc.process_index, acc.num_processes
    torch.manual_seed(run.seed * 1009 + rank)
    gen = torch.Generator().manual_seed(run.seed * 1009 + 17 + rank)
    sync_gen = torch.Generator().manual_seed(run.seed + 7)  # identical on every rank: exit steps
    schedule = inputs.teacher.schedule
    s_schedule = student_schedule(schedule, stage)
    sigmas = s_schedule.student_sigmas(stage.timesteps)

    # Under FSDP (``sharding``) the copies stay where their source is until ``fully_shard`` moves them to
    # the device one transformer block at a time.
    sharding = Sharding.of(acc)
    student, student_params = trainable_copy(inputs.student_init, acc.device if sharding is None else None)
    critic, critic_params = trainable_copy(inputs.critic_init, acc.device if sharding is None else None)
    if run.gradient_checkpointing:
        student.enable_gradient_checkpointing()
        critic.enable_gradient_checkpointing()
    if sharding is not None:
        sharding.shard_trainable(student)
        sharding.shard_trainable(critic)
        # fully_shard replaces the parameters with sharded ones: the optimizers take those.
        student_params = [p for p in student.parameters() if p.requires_grad]
        critic_params = [p for p in critic.parameters() if p.requires_grad]
    head, opt_d = _make_discriminator(critic, stage)
    opt_g = torch.optim.AdamW(student_params, lr=stage.lr_student, weight_decay=0.0)
    opt_c = torch.optim.AdamW(critic_params, lr=stage.lr_critic, betas=stage.critic_betas, weight_decay=0.0)
    # The discriminator head is small and used through the critic's hooked features, so it is not
    # DDP-wrapped; its gradients are averaged across ranks by hand before each step.
    if sharding is None:
        student_w, critic_w, opt_g, opt_c = acc.prepare(student, critic, opt_g, opt_c)
    else:
        student_w, critic_w = student, critic
        opt_g, opt_c = acc.prepare(opt_g, opt_c)
    # A sharding wrapper may replace parameter objects; what clipping and EMA see is re-read from the module.
    student_params = [p for p in student.parameters() if p.requires_grad]
    critic_params = [p for p in critic.parameters() if p.requires_grad]
    # Made after sharding, the EMA copies each rank's own shards (under DDP, the whole student as before).
    ema = EMAModel(student_params, decay=run.ema_decay) if run.ema_decay > 0 else None
    if head is not None:
        head.to(acc.device)
    routed_student, routed_critic = Routed(student_w, student), Routed(critic_w, critic)
    # The frozen real score: in the half dtype under mixed precision, sharded under FSDP (``frozen_teacher``).
    real = frozen_real_score(inputs.real, acc.device, half_dtype(acc), sharding)
    # What this rank holds of each copy (shards only, under FSDP), for the stage's statistics.
    guided = isinstance(real, AutoGuided)
    resident = {"teacher": model_bytes(real.model if guided else real), "student": model_bytes(student),
                "critic": model_bytes(critic), "ema": resident_bytes(ema.shadow_params) if ema is not None else 0,
                **({"guide": model_bytes(real.guide)} if guided else {})}
    stream = training_stream(inputs.data, run.batch_size, seed=(run.seed + 1) * 1009 + rank)
    flows = FlowCache()
    if signature is None:
        signature = run_signature([stage], run, None, world)

    g_steps, iteration, nonfinite_run, skipped, skipped_critic, elapsed_before = 0, 0, 0, 0, 0, 0.0
    newest = load_newest_state(state_dir, set_aside=acc.is_main_process, required=STATE_KEYS) \
        if (resume and state_dir is not None) else None
    saved = newest is not None
    if saved:
        saved_path, state = newest
        check_signature(saved_signature(state.get("signature")), signature, f"training state {saved_path}")
        load_model_state(student, state["student"], sharding)
        load_model_state(critic, state["critic"], sharding)
        load_optimizer_state(student, opt_g, state["opt_g"], sharding)
        load_optimizer_state(critic, opt_c, state["opt_c"], sharding)
        if head is not None:
            head.load_state_dict(state["head"])
            opt_d.load_state_dict(state["opt_d"])
        if ema is not None:
            load_ema_state(ema, state["ema"], student_params, sharding)
        _set_rng(state["rng"][rank], gen)
        sync_gen.set_state(state["sync_rng"])
        stream.position = state["stream_position"]
        g_steps, iteration, skipped, skipped_critic, elapsed_before = (
            state["g_steps"], state["iteration"], state["skipped"], state["skipped_critic"], state["seconds"])
    start = time.monotonic() - elapsed_before
    deadline = start + stage.minutes * 60 if stage.minutes else float("inf")

    def save_state_now():
        rng = _gathered_rng(acc, gen)
        # Sharded, gathering the whole state is collective: every rank takes part, the main process saves it.
        models = {}
        if acc.is_main_process or sharding is not None:
            models = {"student": model_state(student, sharding), "critic": model_state(critic, sharding),
                      "opt_g": optimizer_state(student, opt_g, sharding),
                      "opt_c": optimizer_state(critic, opt_c, sharding),
                      "ema": ema_state(ema, sharding, acc.is_main_process) if ema is not None else None}
        if acc.is_main_process:
            save_state(state_dir, g_steps, {
                "signature": json.dumps(signature, sort_keys=True), **models,
                "head": head.state_dict() if head is not None else None,
                "opt_d": opt_d.state_dict() if opt_d is not None else None,
                "rng": rng, "sync_rng": sync_gen.get_state(),
                "stream_position": stream.position, "g_steps": g_steps, "iteration": iteration,
                "skipped": skipped, "skipped_critic": skipped_critic, "seconds": time.monotonic() - start,
            }, keep=run.keep_states)
        acc.wait_for_everyone()

    def generator_losses(x0, cond, batch, exit_step) -> tuple[dict, dict]:
        terms, info = {}, {}
        out = dmd_loss(x0, cond, real, critic, schedule, inputs.real_cfg, gen, stage.norm_floor)
        terms["dmd"] = out.loss
        info.update(dmd_grad_norm=out.grad_norm, nonfinite_samples=out.nonfinite_samples, score_sigma=out.sigma_mean,
                    real_x0_mean=out.real_x0[0], real_x0_std=out.real_x0[1], fake_x0_mean=out.fake_x0[0],
                    fake_x0_std=out.fake_x0[1])
        if "temporal" in stage.losses or "identity" in stage.losses:
            video = student.decode(x0)
            if "temporal" in stage.losses:
                sigma = torch.full((x0.shape[0],), sigmas[exit_step])
                terms["temporal"] = temporal_loss(video, flows.flows(batch), batch["mask"].to(video), sigma)
            if "identity" in stage.losses:
                terms["identity"] = identity_loss(inputs.identity, video, batch["mask"].to(video),
                                                  batch["reference"].to(video))
        if "background" in stage.losses:
            terms["background"] = background_loss(x0, cond)
        if "regression" in stage.losses or "perceptual" in stage.losses:
            reg = inputs.trajectories.sample(x0.shape[0], sigmas, gen)
            reg_cond = condition_of(student, {k: v.to(acc.device) for k, v in reg.items()}, inputs.data)
            terms["regression"], x0_reg = regression_loss(routed_student, reg, reg_cond, s_schedule)
            if "perceptual" in stage.losses:
                # Compared as decoded video in -1..1 ([B,3,F,H,W]): LPIPS needs pixels, and the
                # latent alternative re-encodes them with the model's own encoder. The teacher's
                # side needs no gradient, so it is decoded without one.
                with torch.no_grad():
                    target = student.decode(reg["x0_teacher"].to(x0_reg))
                pixels = [v.permute(0, 4, 1, 2, 3) * 2 - 1 for v in (student.decode(x0_reg), target)]
                terms["perceptual"] = inputs.perceptual(*pixels)
        if "truth" in stage.losses:
            with torch.no_grad():  # the target is data, not a path for gradients into the VAE
                target = target_latents(student, batch)
            terms["truth"] = truth_loss(x0, target, cond.region, stage.truth_region)
        if "adversarial" in stage.losses:
            terms["adversarial"] = generator_adversarial_loss(head, critic, x0, cond, schedule, gen)
        return terms, info

    def sync_context(last_micro: bool):
        if last_micro or world == 1:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for m in (student_w, critic_w):
            stack.enter_context(acc.no_sync(m))
        return stack

    bar = tqdm(total=stage.generator_steps, initial=g_steps, desc=f"distill {stage.name}", unit="G-step",
               disable=not (progress and acc.is_main_process))
    if saved and acc.is_main_process:
        _trim_log(Path(log_path), g_steps)
        rotate_states(state_dir, run.keep_states)  # a kill may have come between a save and its rotation
    log = open(log_path, "a" if saved else "w") if acc.is_main_process else None
    last: dict = {}
    deferred_stop = stop_signals.DeferredStop()  # from here a first Ctrl-C/SIGTERM stops at a step boundary, saved
    try:
        while g_steps < stage.generator_steps and time.monotonic() < deadline:
            step_start = time.monotonic()
            generator_turn = (iteration + 1) % stage.critic_ratio == 0
            finite_g = finite_c = True
            terms: dict = {}
            for micro in range(run.grad_accumulation):
                # Losses under autocast, backward outside it (PyTorch's advice; recomputation for
                # gradient checkpointing breaks on autocast's weight cache otherwise).
                with sync_context(micro == run.grad_accumulation - 1):
                    with acc.autocast():
                        batch = {k: v.to(acc.device) for k, v in stream.next().items()}
                        cond = condition_of(student, batch, inputs.data)
                        exit_step = int(torch.randint(len(sigmas), (1,), generator=sync_gen))
                        x0 = student_rollout(routed_student, cond, s_schedule, sigmas, exit_step, gen,
                                             grad_at_exit=generator_turn)
                        if generator_turn:
                            terms, info = generator_losses(x0, cond, batch, exit_step)
                            total = sum(stage.weight(k, g_steps) * v for k, v in terms.items())
                    if generator_turn:
                        finite_g &= bool(torch.isfinite(total))
                        acc.backward(total / run.grad_accumulation)
                    with acc.autocast():
                        loss_c = critic_loss(routed_critic, x0, cond, schedule, gen)
                        if head is not None:
                            real_x0 = target_latents(student, batch)
                            loss_d, d_info = discriminator_loss(head, critic, real_x0, x0.detach(), cond, schedule,
                                                                gen, stage.r1_weight, stage.r1_sigma)
                            loss_c = loss_c + loss_d
                    finite_c &= bool(torch.isfinite(loss_c))
                    acc.backward(loss_c / run.grad_accumulation)
            finite_g, finite_c = _all_ranks(acc, finite_g), _all_ranks(acc, finite_c)
            if generator_turn:
                if finite_g:
                    g_norm = clip_grad_norm(acc, student_params, run.grad_clip, sharding)
                    opt_g.step()
                    if ema is not None:
                        ema.step(student_params)
                    nonfinite_run = 0
                    g_steps += 1
                    bar.update(1)
                    last = {"g_step": g_steps, **{f"loss_{k}": v.item() for k, v in terms.items()},
                            **{f"weighted_{k}": stage.weight(k, g_steps - 1) * v.item() for k, v in terms.items()},
                            **info, "student_grad_norm": float(g_norm), "exit_step": exit_step,
                            "x0_mean": x0.mean().item(), "x0_std": x0.std().item(),
                            "lr_student": opt_g.param_groups[0]["lr"], "lr_critic": opt_c.param_groups[0]["lr"]}
                else:
                    nonfinite_run += 1
                    skipped += 1
                    if nonfinite_run >= run.max_nonfinite:
                        raise DistillationAborted(
                            f"stage {stage.name}: the student loss was NaN/Inf {nonfinite_run} times in a row "
                            f"(at generator step {g_steps}; {skipped} student steps skipped in all, limit "
                            f"{run.max_nonfinite} in a row). Lower the student learning rate (--lr-student or "
                            f"--lr-scale) or the teacher CFG (--teacher-cfg), or check the teacher checkpoint; "
                            f"then start again without --resume or in a fresh --run-dir (saved states hold the "
                            f"old settings).")
                opt_g.zero_grad(set_to_none=True)
            if head is not None and world > 1:
                for p in head.parameters():
                    if p.grad is not None:
                        p.grad = acc.reduce(p.grad, "mean")
            if finite_c:
                c_norm = clip_grad_norm(acc, critic_params, run.grad_clip, sharding)
                opt_c.step()
                if opt_d is not None:
                    opt_d.step()
            else:
                skipped_critic += 1
            opt_c.zero_grad(set_to_none=True)
            if opt_d is not None:
                opt_d.zero_grad(set_to_none=True)
            iteration += 1
            if generator_turn and finite_g and g_steps % run.log_every == 0:
                last.update(loss_critic=loss_c.item(), critic_grad_norm=float(c_norm) if finite_c else float("nan"),
                            step_seconds=round(time.monotonic() - step_start, 3),
                            seconds=round(time.monotonic() - start, 1), skipped_steps=skipped,
                            skipped_critic_steps=skipped_critic)
                if head is not None:
                    last.update(d_info)
                if log is not None:
                    log.write(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in last.items()})
                              + "\n")
                    log.flush()
                acc.log({f"{stage.name}/{k}": v for k, v in last.items() if isinstance(v, (int, float))},
                        step=g_steps)
                bar.set_postfix(dmd=f"{last['loss_dmd']:.4f}", critic=f"{last['loss_critic']:.4f}")
            stop = _stop_signal(acc)
            if state_dir is not None and (stop or generator_turn and finite_g and g_steps % run.save_every == 0):
                save_state_now()
            if stop:
                if acc.is_main_process:
                    tqdm.write(f"stopping: stage {stage.name} " + (f"saved at generator step {g_steps} (iteration "
                               f"{iteration}) in {state_dir}" if state_dir is not None else "has no state folder"))
                raise stop_signals.interruption(stop)
        if state_dir is not None and g_steps % run.save_every != 0:
            save_state_now()  # the stage's end, so a resume never retrains it
    finally:
        deferred_stop.release()
        bar.close()
        if log is not None:
            log.close()
    deferred_stop.raise_if_pending()  # a signal after the last step's check: the stage's end is saved
    if ema is not None:
        ema.copy_to(student_params)
    if sharding is not None:  # what a stage hands on (export, gates, the next stage): whole models, on CPU
        student, critic = unsharded(student, inputs.student_init), unsharded(critic, inputs.critic_init)
    spread = _rank_spread(acc, student)
    if spread > 1e-5:
        raise DistillationAborted(f"stage {stage.name}: the student's weights differ across the {world} processes "
                                  f"(max checksum spread {spread:.3g}); gradients were not synchronised.")
    stats = {"rank_weight_spread": spread, "generator_steps": g_steps, "iterations": iteration, "skipped_steps": skipped,
             "skipped_critic_steps": skipped_critic, "train_seconds": round(time.monotonic() - start, 1),
             "real_cfg": inputs.real_cfg, "processes": world, "sharded": sharding is not None,
             "resident_bytes": resident}
    return StageResult(student=student.eval(), critic=critic, stats=stats)
