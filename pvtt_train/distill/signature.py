"""The signature of a distillation run: everything that changes what it trains, compared field by field on resume.

A run folder's ``progress.json`` and every training state carry it. Resuming with another teacher
(same architecture, other weights), another ``--batch-size`` or another number of processes would
silently mix two trainings into one student, so a resume compares the saved signature with the
current one and refuses a difference with the differing fields named as the CLI names them.

What is left out are pure mechanics that change no weight: ``--force`` (what happens after a failed
gate), each stage's gate (the test a finished stage is held to, not how it trains), how often states are
saved and how many are kept, how often the log is written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from ..errors import CheckpointError
from ..models.checkpoint import file_sha256
from .config import UNIFORM_TRUTH, WEIGHTED_ON_DEMAND, RunConfig, StageConfig

#: RunConfig fields that change no trained weight, so a resume may change them.
MECHANICS = frozenset({"force", "save_every", "keep_states", "log_every"})
#: StageConfig fields that change no trained weight; signatures saved before a field joined this set still hold it.
STAGE_MECHANICS = frozenset({"gate"})
#: RunConfig fields that have no CLI flag (the others are ``--<name with dashes>``).
NOT_FLAGS = frozenset({"max_nonfinite"})
#: The CLI options behind each StageConfig field (the stages are built from them).
STAGE_FLAGS = {
    "name": "--path", "role": "--path", "timesteps": "--path", "generator_steps": "--generator-steps",
    "lr_student": "--lr-student/--lr-scale", "lr_critic": "--lr-critic", "critic_ratio": "--critic-ratio",
    "critic_init": "--critic-init", "shift": "--shift", "teacher_cfg": "--teacher-cfg", "minutes": "--minutes",
    "weights": "--weight", "losses": "--adversarial/--perceptual/--weight", "truth_region": "--truth-region",
}
#: StageConfig fields added after runs were saved: left out of the signature at their default, so those runs resume.
ADDED_AT_DEFAULT = {"truth_region": UNIFORM_TRUTH}
#: A diffusers model folder's files that make the model: weights (and their indexes) and configs.
FOLDER_MODEL_SUFFIXES = (".safetensors", ".json")
FIX = "resume with the same options as before, or start a new run folder (another --run-dir)"


def teacher_fingerprint(path: str | Path) -> str:
    """The full SHA-256 of a teacher file; of a diffusers folder, a SHA-256 over its weight and config
    files' relative names, sizes and SHA-256s (a README or a hidden file changes nothing)."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path, length=64)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FOLDER_MODEL_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts)):
        name = file.relative_to(path).as_posix()
        digest.update(f"{name}\0{file.stat().st_size}\0{file_sha256(file, length=64)}\n".encode())
    return digest.hexdigest()


def _stage_signature(stage: StageConfig) -> dict:
    """A stage's fields less its mechanics; a loss added on demand stays out of its weights while off, so that
    runs saved before the loss existed resume, and so does the truth loss's region while that loss is off (it
    weighs nothing then)."""
    fields = {k: v for k, v in asdict(stage).items() if k not in STAGE_MECHANICS}
    fields["weights"] = {k: v for k, v in fields["weights"].items() if k not in WEIGHTED_ON_DEMAND or v[0] > 0}
    for key, default in ADDED_AT_DEFAULT.items():
        if tuple(fields[key]) == default:
            del fields[key]
    if "truth" not in fields["weights"]:
        fields.pop("truth_region", None)
    return fields


def run_signature(stages: list[StageConfig], run: RunConfig, teacher_sha256: str | None, processes: int,
                  data_sha256: str | None = None, guide_sha256: str | None = None) -> dict:
    """Everything that changes what a run trains, as plain JSON values (so a saved copy compares equal);
    ``data_sha256`` identifies a prepare-data dataset (synthetic data follows from the teacher),
    ``guide_sha256`` the teacher's autoguidance model (``teacher_sampling``)."""
    signature = {"teacher_sha256": teacher_sha256, "processes": processes,
                 "run": {k: v for k, v in asdict(run).items() if k not in MECHANICS},
                 "stages": [_stage_signature(s) for s in stages]}
    if data_sha256 is not None:
        signature["data_sha256"] = data_sha256
    if guide_sha256 is not None:
        signature["guide_sha256"] = guide_sha256
    return json.loads(json.dumps(signature, sort_keys=True))


def _show(value) -> str:
    if value is None:
        return "default"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list) and all(isinstance(v, (int, float, str)) for v in value):
        return ",".join(map(str, value))
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def _change(label: str, saved, now) -> str:
    return f"{label}: {_show(saved)} in the saved run, {_show(now)} now"


def signature_differences(saved: dict, now: dict) -> list[str]:
    """What differs between two signatures, one ``<option>: <saved> in the saved run, <now> now`` each."""
    diffs = []
    if saved.get("teacher_sha256") != now.get("teacher_sha256"):
        short = [(v or "unknown")[:12] for v in (saved.get("teacher_sha256"), now.get("teacher_sha256"))]
        diffs.append(f"--teacher: weights with SHA-256 {short[0]}… in the saved run, {short[1]}… now "
                     f"(another teacher file, or the file was changed)")
    if saved.get("guide_sha256") != now.get("guide_sha256"):
        short = [(v or "none")[:12] for v in (saved.get("guide_sha256"), now.get("guide_sha256"))]
        diffs.append(f"--guide-model: {short[0]} in the saved run, {short[1]} now (another guide, none, or the "
                     f"file was changed)")
    if saved.get("data_sha256") != now.get("data_sha256"):
        diffs.append(_change("--data", saved.get("data_sha256") or "synthetic", now.get("data_sha256") or "synthetic")
                     + " (another dataset, or it was changed)")
    if saved.get("processes") != now.get("processes"):
        diffs.append(_change("processes", saved.get("processes"), now.get("processes")) + " (launch as many as before)")
    saved_run, now_run = saved.get("run") or {}, now.get("run") or {}
    for key in sorted(set(saved_run) | set(now_run)):
        if saved_run.get(key) != now_run.get(key):
            label = f"run setting {key}" if key in NOT_FLAGS else "--" + key.replace("_", "-")
            diffs.append(_change(label, saved_run.get(key), now_run.get(key)))
    saved_stages, now_stages = saved.get("stages") or [], now.get("stages") or []
    if [s.get("name") for s in saved_stages] != [s.get("name") for s in now_stages]:
        steps = [[len(s.get("timesteps") or ()) for s in stages] for stages in (saved_stages, now_stages)]
        diffs.append(_change("--path", *steps))
        return diffs
    for key in sorted({k for s in saved_stages + now_stages for k in s} - STAGE_MECHANICS):
        values = [[s.get(key) for s in stages] for stages in (saved_stages, now_stages)]
        if values[0] != values[1]:
            label = STAGE_FLAGS.get(key, f"stage setting {key}")
            diffs.append(_change(label, *(v if len(v) > 1 else v[0] for v in values)))
    return diffs


def saved_signature(text) -> dict | None:
    """The signature a training state holds as JSON text; None for one without (an earlier PVTT's)."""
    try:
        signature = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        return None
    return signature if isinstance(signature, dict) else None


def check_signature(saved, now: dict, what: str) -> None:
    """Refuse a resume whose signature differs from the saved one, in one line that lists the differences.
    ``what`` names where the saved one came from (``progress.json``, a training state)."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"--resume: {what} records no settings in the form this PVTT checks (it was written "
                              f"by an earlier version, or edited), so resuming could mix two trainings; start a new "
                              f"run folder (another --run-dir)")
    diffs = signature_differences(saved, now)
    if diffs:
        raise CheckpointError(f"--resume: {what} belongs to a run with other settings: {'; '.join(diffs)}; {FIX}")
