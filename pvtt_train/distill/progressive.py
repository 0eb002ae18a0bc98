"""The gated progressive path: 50 -> 16 -> 8 -> 4 (or any decreasing list of step counts).

Each stage trains a student initialised from the previous stage's (the first from the teacher),
is scored by ``GateEvaluator`` and must pass its gate before the next starts; ``force`` goes on
past a failed gate. The real score stays the original teacher by default
(``real_score="teacher"``); with ``"previous"`` each stage is scored against the previous stage's
student, run CFG-free as it is sampled (cheaper, but errors compound from stage to stage).

A run folder holds everything needed to resume: ``progress.json`` (finished stages, their
exports, scores and gates), ``state/<stage>/`` (rotated training states) and ``cache/`` (teacher
ODE trajectories and teacher gate samples). Each finished stage exports a self-describing
student ``pvtt_student_<n>step.safetensors`` into the models folder, where the ComfyUI loader
lists it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..data.batches import training_data_config
from ..data.dataset import open_data
from ..data.prepare import encoder_identity
from ..errors import CheckpointError, InputError
from ..eval.evaluate import save_grid
from ..models.checkpoint import (
    LoadedModel,
    file_sha256,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
    write_atomic,
)
from ..models.loading import load_model, source_sha256
from ..run_folder import open_run_folder
from ..run_lock import RunLock, describe_owner
from .config import GROUND_TRUTH_LOSSES, RunConfig, StageConfig, check_config, losses_used
from .gates import GateEvaluator, GateFailed, as_few_step, check_gate
from .regression import TrajectoryCache
from .report import teacher_as_few_step
from .sharding import load_model_state, shared_copy
from .signature import check_signature, run_signature, teacher_fingerprint
from .state import load_state, state_files
from .teacher_sampling import TeacherSampling, teacher_sampling
from .trainer import StageInputs, student_schedule, train_stage


def make_accelerator(run: RunConfig, run_dir: Path, trackers: bool = True):
    """An accelerate Accelerator: single process, or DDP under ``accelerate launch``/torchrun.

    TensorBoard logs go to ``run_dir/tensorboard`` when tensorboard is installed. Without CUDA the
    processes run on CPU with the gloo backend (accelerate only picks it when told ``cpu=True``).
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from ..training_extra import tensorboard_or_jsonl

    log_with = tensorboard_or_jsonl() if trackers else None
    # mixed_precision=None lets accelerate read its own setting (ACCELERATE_MIXED_PRECISION, which
    # `accelerate launch` sets from its config file), so only an explicit --mixed-precision overrides it.
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=run.mixed_precision, log_with=log_with,
                       project_config=ProjectConfiguration(project_dir=str(run_dir),
                                                           logging_dir=str(run_dir / "tensorboard")))


def student_file(stage: StageConfig) -> str:
    return f"pvtt_student_{stage.steps}step.safetensors"


def export_metadata(teacher: LoadedModel, stage: StageConfig, index: int, run: RunConfig, scores: dict,
                    gate: dict, stats: dict, real_score: str, data: dict | None = None,
                    sampling: TeacherSampling = TeacherSampling()) -> dict:
    """The student's metadata; ``data`` is what it trained on (default: the teacher's synthetic data),
    ``sampling`` how the teacher was sampled (recorded when it was not plain)."""
    recorded = sampling.record()
    return {
        "stage": stage.name,
        "stage_index": index,
        "schedule": {**teacher.metadata["schedule"], "shift": student_schedule(teacher.schedule, stage).shift},
        "sampler": {"kind": "few_step", "steps": stage.steps, "timesteps": list(stage.timesteps)},
        "video": teacher.metadata["video"],
        "conditioning": teacher.metadata.get("conditioning", {}),
        "gate": {**gate, "scores": scores},
        "provenance": {
            "trainer": "pvtt_train distill (progressive DMD2)",
            "teacher": teacher.path.name,
            "teacher_sha256": source_sha256(teacher.path),
            "real_score": real_score,
            **({"teacher_sampling": recorded} if recorded else {}),
            "data": data if data is not None else teacher.metadata.get("provenance", {}).get("data"),
            "config": {"stage": asdict(stage), "run": asdict(run)},
            **stats,
        },
    }


class ProgressLog:
    """``progress.json``: the run's signature and its finished stages (recorded atomically after each).

    A new run records its signature before the first step (``record_now``), so a resume is checked
    against it even before a stage finishes. A resume that finds training states but no progress.json
    (moved aside) must not: the states' own signatures decide, and a refused resume leaves no record."""

    def __init__(self, path: Path, signature: dict, resume: bool, record_now: bool = True):
        self.path, self.signature = path, signature
        self.stages: list[dict] = []
        if resume and path.exists():
            saved = _read_progress(path)
            check_signature(saved["signature"], signature, str(path))
            self.stages = saved["stages"]
        elif record_now:
            self._write()

    def done(self, name: str) -> dict | None:
        return next((s for s in self.stages if s["name"] == name), None)

    def record(self, entry: dict) -> None:
        self.stages = [s for s in self.stages if s["name"] != entry["name"]] + [entry]
        self._write()

    def _write(self) -> None:
        text = json.dumps({"signature": self.signature, "stages": self.stages}, indent=1)
        write_atomic(self.path, lambda tmp: Path(tmp).write_text(text))


def _read_progress(path: Path) -> dict:
    """A saved ``progress.json``, refused with how to go on when it is not one PVTT wrote whole."""
    fix = (f"to resume from the training states in {path.parent / 'state'} (finished stages are gated and "
           f"exported again), move it aside and run again with --resume; or start a new run folder (another "
           f"--run-dir)")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}); {fix}") from exc
    if not isinstance(saved, dict):
        problem = f"it holds a JSON {type(saved).__name__}, not an object"
    elif "signature" not in saved or not isinstance(saved.get("stages"), list):
        problem = f"it lacks {'its signature' if 'signature' not in saved else 'its list of finished stages'}"
    else:
        problem = next((f"finished stage {i + 1} is incomplete" for i, entry in enumerate(saved["stages"])
                        if not _is_stage_entry(entry)), None)
    if problem is not None:
        raise CheckpointError(f"{path} is not a progress record PVTT can read ({problem}); {fix}")
    return saved


def _is_stage_entry(entry) -> bool:
    """What ``run_progressive`` reads of a finished stage is there, with the right types."""
    return isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("name", "export", "sha256")) \
        and isinstance(entry.get("gate"), dict) and isinstance(entry["gate"].get("passed"), bool)


def run_progressive(teacher_path: Path, stages: list[StageConfig], run: RunConfig, run_dir: Path,
                    models_dir: Path, resume: bool = False, progress: bool = True, accelerator=None,
                    data: str | Path = "synthetic", overwrite: bool = False, guide_path: Path | None = None) -> dict:
    """Train, gate and export every stage; returns {teacher: scores, stages: [...]} for the report.

    ``data`` is 'synthetic' (the teacher's own generator settings, from its provenance) or a
    ``prepare-data`` folder, which must have been encoded by this teacher's VAE. The teacher is sampled at
    ``run.teacher_shift`` and autoguided by ``guide_path`` at ``run.guide_weight`` (``teacher_sampling``).
    A dataset with a training clip that lacks the ground truth the adversarial or truth loss compares with
    is refused before anything is written. The run folder is locked for the whole run, so a second run on
    it is refused instead of sweeping this one's temps; an existing run in it is resumed (``resume``),
    emptied (``overwrite``, only a folder PVTT created) or refused (``run_folder``)."""
    check_config(stages, run)
    dataset = open_data(data)  # a bad --data folder fails before anything is written
    needs_truth = sorted(losses_used(stages) & GROUND_TRUTH_LOSSES.keys())
    if dataset is not None and needs_truth:
        dataset.check_ground_truth(" and ".join(GROUND_TRUTH_LOSSES[loss] for loss in needs_truth))
    run_dir, models_dir = Path(run_dir), Path(models_dir)
    acc = accelerator or make_accelerator(run, run_dir)
    lock = _lock_run_folder(acc, run_dir, stages, resume, overwrite)
    try:
        if acc.is_main_process:
            _sweep_interrupted_writes(run_dir, models_dir, stages)
        return _run_stages(teacher_path, stages, run, run_dir, models_dir, resume, progress, acc, dataset, guide_path)
    finally:
        if lock is not None:
            lock.release()


def _lock_run_folder(acc, run_dir: Path, stages: list[StageConfig], resume: bool, overwrite: bool) -> RunLock | None:
    """On the main process: create, lock and check the run folder (``run_folder.open_run_folder``).
    Every rank learns whether the main process may go on, so a refusal never leaves the others waiting."""
    main = acc.is_main_process
    lock, refusal = None, None
    if main:
        if resume and not (run_dir / "progress.json").exists() \
                and not any(state_files(run_dir / "state" / stage.name) for stage in stages):
            _say(main, f"--resume: nothing saved in {run_dir} yet, so the run starts from the beginning")
        try:
            lock = open_run_folder(run_dir, resume, overwrite)
        except InputError as exc:
            refusal = exc
    if not _broadcast_flag(acc, refusal is None):
        raise refusal or InputError(f"run folder {run_dir} was refused by the main process (see its message)")
    if not main:
        return None
    if lock.took_over is not None:
        _say(main, f"run folder {run_dir} was last held by {describe_owner(lock.took_over)}, which ended "
                   f"without releasing it (killed?): this run takes it over")
    return lock


def _sweep_interrupted_writes(run_dir: Path, models_dir: Path, stages: list[StageConfig]) -> None:
    """Remove the temps of writes a kill interrupted (as big as a checkpoint), under the run folder's
    lock. Only PVTT's ``.pvtt-tmp-`` folders go, and only in the folders PVTT writes into: the run
    folder's own, and in the models folder only this run's exports'."""
    models_dir.mkdir(parents=True, exist_ok=True)
    cache = run_dir / "cache"
    folders = [run_dir, run_dir / "failed", cache, *sorted(cache.glob("trajectories-*")),
               *(run_dir / "state" / stage.name for stage in stages)]
    stale = [p for folder in folders for p in remove_stale_temps(folder)]
    for stage in stages:
        stale += remove_stale_temps(models_dir, student_file(stage))
    if stale:
        _say(True, f"removed {len(stale)} temp file(s) of interrupted writes: " + ", ".join(str(p) for p in stale[:5]))


def _run_stages(teacher_path: Path, stages: list[StageConfig], run: RunConfig, run_dir: Path, models_dir: Path,
                resume: bool, progress: bool, acc, dataset, guide_path: Path | None) -> dict:
    main = acc.is_main_process
    progress_path = run_dir / "progress.json"
    teacher = load_model(teacher_path)  # a PVTT file, a diffusers Wan-VACE folder or a ComfyUI-native file
    # The teacher as it is sampled (trajectories, gates, real score); the students start from its plain weights.
    sampling = teacher_sampling(teacher, run.teacher_shift, guide_path, run.guide_weight)
    sampled = sampling.apply(teacher)
    recorded = sampling.record()
    if recorded:
        _say(main, "teacher sampled " + ", ".join(
            ([f"at flow shift {sampling.shift:g}"] if sampling.shift is not None else [])
            + ([f"autoguided by {sampling.guide.path.name} at weight {sampling.weight:g}"] if sampling.guide else [])))
    if dataset is None:
        data, data_provenance = training_data_config(teacher), None
    else:
        dataset.check_model(encoder_identity(teacher.model), str(teacher_path))
        data, data_provenance = dataset, dataset.provenance()
        _say(main, f"training data: {dataset.folder} ({len(dataset.train)} training and {len(dataset.heldout)} "
                   f"held-out clip windows, sha {dataset.sha256})")
    # Checked against progress.json here and against each training state when its stage resumes.
    signature = run_signature(stages, run, teacher_fingerprint(teacher.path), acc.num_processes,
                              dataset.sha256 if dataset else None, (recorded or {}).get("guide_sha256"))
    saved_states = any(state_files(run_dir / "state" / stage.name) for stage in stages)
    log = ProgressLog(progress_path, signature, resume, record_now=main and not (resume and saved_states))
    acc.init_trackers("pvtt_distill", config={"stages": len(stages), "batch_size": run.batch_size,
                                              "real_score": run.real_score, "processes": acc.num_processes})
    used = losses_used(stages)
    teacher_cfg = stages[0].teacher_cfg if stages[0].teacher_cfg is not None else teacher.sampler.get("cfg", 1.0)

    trajectories = None
    if used & {"regression", "perceptual"}:
        sigmas = sorted({s for st in stages for s in student_schedule(teacher.schedule, st).student_sigmas(
            st.timesteps)}, reverse=True)
        trajectories = TrajectoryCache(run_dir / "cache", sampled, data, sigmas, teacher_cfg, run.regression_pool,
                                       seed=run.seed, sampling=recorded)
        _say(main, f"teacher ODE trajectories for the regression loss: {run.regression_pool} clips at "
                   f"{len(sigmas)} student sigmas ({trajectories.folder})")
        if main:
            trajectories.ensure()
        acc.wait_for_everyone()
        if not main:
            trajectories.ensure()  # every chunk is on disk now: this only loads
    identity = None
    if "identity" in used:
        from ..identity.encoder import load_identity_encoder

        identity = load_identity_encoder(run.identity_encoder).to(acc.device)
    perceptual = None
    if "perceptual" in used:
        from .perceptual import PerceptualLoss

        # Pixel-space models compare decoded frames directly; a latent model re-encodes them with
        # its (differentiable) VAE encoder.
        perceptual = PerceptualLoss(getattr(teacher.model, "_encode", None))
        _say(main, f"perceptual loss: {perceptual.kind}")

    evaluator = GateEvaluator(data, run.eval_clips, run.video_encoder, run_dir / "cache", seed=run.seed) \
        if main else None
    teacher_scores = evaluator.score_teacher(sampled, recorded) if main else None
    _say(main, f"teacher on {evaluator.clips if main else run.eval_clips} gate clips: " + _fmt(teacher_scores or {}))
    # The baseline distillation has to beat: the teacher itself with the last stage's few-step sampler.
    undistilled = evaluator.score(teacher_as_few_step(teacher, stages[-1].timesteps, stages[-1].shift),
                                  "teacher_undistilled") if main else None
    _say(main, f"undistilled teacher at {stages[-1].steps} steps: " + _fmt(undistilled or {}))

    student_init, critic_init = teacher.model, teacher.model
    real, real_cfg = sampled.model, teacher_cfg
    previous_scores = None
    results = []
    for index, stage in enumerate(stages):
        stage_state = run_dir / "state" / stage.name
        out = models_dir / student_file(stage)
        finished = log.done(stage.name)
        if finished is not None and finished["gate"]["passed"] is False and not run.force:
            raise GateFailed(stage.name, finished["gate"])
        if finished is not None and Path(finished["export"]).exists() \
                and file_sha256(Path(finished["export"])) == finished["sha256"]:
            _say(main, f"stage {stage.name}: done in an earlier run ({finished['export']})")
            student_model = load_checkpoint(Path(finished["export"])).model
            critic_model = _final_critic(stage_state, teacher.model) if _keeps_critic(stages, index) else None
            entry = finished
        else:
            critic_start = teacher.model if stage.critic_init == "teacher" else critic_init
            inputs = StageInputs(teacher=teacher, real=real, real_cfg=real_cfg, student_init=student_init,
                                 critic_init=critic_start, data=data, trajectories=trajectories, identity=identity,
                                 perceptual=perceptual)
            _say(main, f"stage {index + 1}/{len(stages)}: {stage.name} ({stage.steps} steps, losses "
                       f"{'+'.join(stage.losses)}, {stage.generator_steps} generator steps)")
            started = time.monotonic()
            result = train_stage(acc, inputs, stage, run, stage_state, resume, run_dir / f"{stage.name}.log.jsonl",
                                 progress, signature=signature)
            student_model, critic_model = result.student, result.critic
            entry = {"name": stage.name, "steps": stage.steps, "timesteps": list(stage.timesteps),
                     "stats": result.stats, "wall_minutes": round((time.monotonic() - started) / 60, 2)}
            if main:
                loaded = as_few_step(teacher, student_model, stage.timesteps,
                                     student_schedule(teacher.schedule, stage).shift)
                scores = evaluator.score(loaded, stage.name)
                save_grid(run_dir / f"{stage.name}_strip.png", evaluator.batch, evaluator.videos["teacher"],
                          evaluator.videos[stage.name])
                gate = check_gate(stage.gate, scores, teacher_scores, previous_scores)
                gate["forced"] = bool(not gate["passed"] and run.force)
                target = out if gate["passed"] or run.force else run_dir / "failed" / out.name
                save_checkpoint(target, student_model, export_metadata(teacher, stage, index, run, scores, gate,
                                                                       result.stats, run.real_score, data_provenance,
                                                                       sampling))
                entry.update(scores=scores, gate=gate, export=str(target), sha256=file_sha256(target),
                             train_minutes=round(result.stats["train_seconds"] / 60, 2))
                log.record(entry)
                _say(main, f"stage {stage.name}: " + _fmt(scores) + f" -> gate {'PASS' if gate['passed'] else 'FAIL'}")
            passed = _broadcast_flag(acc, entry.get("gate", {}).get("passed", False) or run.force)
            if not passed:
                raise GateFailed(stage.name, entry["gate"] if main else {"checks": []})
        results.append(entry)
        previous_scores = entry.get("scores")
        student_init = student_model
        if critic_model is not None:
            critic_init = critic_model
        if run.real_score == "previous":
            real, real_cfg = student_model, 1.0
    acc.end_training()
    return {"teacher": teacher_scores, "undistilled": undistilled, "stages": results, "teacher_sampling": recorded,
            "gate_clips": evaluator.clips if evaluator else run.eval_clips,
            "distance_encoder": evaluator.encoder_name if evaluator else None}


def _keeps_critic(stages: list[StageConfig], index: int) -> bool:
    return index + 1 < len(stages) and stages[index + 1].critic_init == "keep"


def _final_critic(stage_state: Path, like: torch.nn.Module) -> torch.nn.Module:
    """The critic of a finished stage, from its last training state (which leaves out the frozen VAE: the
    critic shares ``like``'s)."""
    saved = state_files(stage_state)
    if not saved:
        raise CheckpointError(f"no training state in {stage_state} to take the critic from (critic_init 'keep'); "
                              f"rerun that stage or use critic_init 'teacher'.")
    critic = shared_copy(like)
    load_model_state(critic, load_state(saved[-1])["critic"], None)
    return critic


def _broadcast_flag(acc, flag: bool) -> bool:
    """The main process's decision, on every rank."""
    if acc.num_processes == 1:
        return flag
    from accelerate.utils import broadcast

    return bool(broadcast(torch.tensor([1.0 if flag else 0.0], device=acc.device)).item())


def _fmt(scores: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in scores.items())


def _say(main: bool, text: str) -> None:
    if main:
        print(text, flush=True)

