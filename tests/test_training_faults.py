"""Training under faults, "nothing lost": repeated SIGKILLs of the real CLI at seeded-random points,
disk full / file-size limit during saves, NaN and Inf losses, and seed determinism."""

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _tiny import micro_teacher
from test_distill_kill_resume import ROOT, _cli, _env
from test_progressive import _inputs, _stage, teacher  # noqa: F401  (teacher is a fixture)

from pvtt_train.distill import state as state_module
from pvtt_train.distill import trainer
from pvtt_train.distill.config import RunConfig
from pvtt_train.distill.progressive import make_accelerator
from pvtt_train.distill.state import load_state, save_state, state_files
from pvtt_train.distill.trainer import DistillationAborted, train_stage
from pvtt_train.models.checkpoint import DiskFullError, file_sha256, load_checkpoint


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a busy 2-core machine two spinning threads slow these micro models down
    tenfold (the CLI runs use --threads 1 for the same reason)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- SIGKILL at seeded-random points of a real CLI run, then --resume ------------------------------

STAGES = {"student_4step": 4, "student_2step": 2}
GENERATOR_STEPS, SAVE_EVERY = 8, 2
EXTRA = ("--generator-steps", str(GENERATOR_STEPS), "--save-every", str(SAVE_EVERY))
WRITE_PAUSE = 0.25  # seconds each safetensors write pauses half-way in the killed runs

#: Runs ``python -m pvtt_train ...`` with safetensors' ``save_file`` writing the same bytes in two
#: halves with a pause in between, so a kill can land while a write is in flight (a half-written
#: file in write_atomic's temp folder); otherwise the unmodified CLI.
SLOW_WRITES = f"""
import os, runpy, sys, time
import safetensors.torch as st

def save_file(tensors, filename, metadata=None):
    data = st.save(tensors, metadata=metadata)
    with open(filename, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        time.sleep({WRITE_PAUSE})
        fh.write(data[len(data) // 2:])

st.save_file = save_file
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""

_TEMP = re.compile(r"^\.pvtt-tmp-.+\.[a-z0-9_]{8}$")  # write_atomic's private temp folders


def _is_temp(rel: str) -> bool:
    return any(_TEMP.match(part) for part in rel.split("/"))


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every file (and temp folder) under ``root`` but TensorBoard's: relative path -> (inode, mtime, size)."""
    snap = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "tensorboard"]
        for name in files + [d for d in dirs if _TEMP.match(d)]:
            if ".pvtt-run" in name:  # the run folder's marker and lock (and their temps): bookkeeping, not results
                continue
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:  # renamed or removed while we looked
                continue
            snap[os.path.relpath(path, root)] = (st.st_ino, st.st_mtime_ns, st.st_size if name in files else -1)
    return snap


def _changed(snap, before):
    return {p for p, sig in snap.items() if before.get(p) != sig}


def _newest_states(snap) -> dict[str, int]:
    newest = {}
    for rel in snap:
        m = re.fullmatch(r"run/state/(\w+)/state-(\d{8})\.safetensors", rel)
        if m:
            newest[m.group(1)] = max(newest.get(m.group(1), 0), int(m.group(2)))
    return newest


def _phase(snap, before) -> str:
    """Where the run was when it died, from the files present (and those this launch wrote)."""
    changed = _changed(snap, before)
    temps = sorted(p for p in changed if _is_temp(p))
    if temps:
        name = next(part for part in temps[0].split("/") if _TEMP.match(part))
        kind = {"state-": "state save", "pvtt_student_": "student export", "chunk-": "trajectory caching",
                "teacher-gate-": "teacher gate scoring", "progress": "progress record"}
        what = next((v for k, v in kind.items() if name.startswith(".pvtt-tmp-" + k)), "other write")
        return f"{what} (write in flight)"
    if not changed:
        return "start-up"
    if not any(re.fullmatch(r"run/cache/trajectories-\w+/chunk-0000\.safetensors", p) for p in snap):
        return "trajectory caching"
    if not any(re.fullmatch(r"run/cache/teacher-gate-\w+\.safetensors", p) for p in snap):
        return "teacher gate scoring"
    for stage, steps in STAGES.items():
        if f"models/pvtt_student_{steps}step.safetensors" not in snap:
            if f"run/state/{stage}/state-{GENERATOR_STEPS:08d}.safetensors" in snap:
                return "gating"
            if f"run/{stage}.log.jsonl" in changed or any(p.startswith(f"run/state/{stage}/") for p in changed):
                return "mid-stage training"
            return "stage set-up"
    return "finishing"


def _new_temp(prefix):
    return lambda snap, before: any(
        _is_temp(p) and any(part.startswith(".pvtt-tmp-" + prefix) and _TEMP.match(part) for part in p.split("/"))
        for p in _changed(snap, before))


def _new_file(pattern):
    return lambda snap, before: any(re.fullmatch(pattern, p) for p in _changed(snap, before))


def _kill_when(proc, root, before, trigger, delay, timeout=240.0):
    """SIGKILL ``proc`` ``delay`` s after ``trigger(files, files_at_launch)`` holds; the files at the
    moment of the kill (taken with the process stopped), or None when it finished first."""
    give_up = time.monotonic() + timeout
    while not trigger(_snapshot(root), before):
        if proc.poll() is not None:
            return None
        assert time.monotonic() < give_up, "the run never reached the point to kill it at"
        time.sleep(0.004)
    time.sleep(delay)
    if proc.poll() is not None:
        return None
    os.kill(proc.pid, signal.SIGSTOP)
    snap = _snapshot(root)
    proc.kill()
    proc.wait()
    return snap if proc.returncode == -signal.SIGKILL else None


def _finished(root: Path) -> list[dict]:
    progress = root / "run" / "progress.json"
    return json.loads(progress.read_text())["stages"] if progress.exists() else []


def _check_nothing_lost(root: Path, snap, before, previously):
    """After a kill: every state and student loads, recorded exports match their files, and nothing
    saved before this launch was lost, moved back or written again."""
    for rel in snap:
        path = root / rel
        if _is_temp(rel):
            continue
        m = re.fullmatch(r"run/state/\w+/state-(\d{8})\.safetensors", rel)
        if m:
            state = load_state(path)
            assert state["g_steps"] == int(m.group(1)), rel
            assert all(torch.isfinite(t).all() for t in state["student"].values()), rel
        if re.fullmatch(r"models/pvtt_student_\d+step\.safetensors", rel):
            load_checkpoint(path)
    recorded = _finished(root)
    for entry in recorded:
        assert file_sha256(Path(entry["export"])) == entry["sha256"], entry["name"]
    old_newest, newest = _newest_states(before), _newest_states(snap)
    for stage, step in old_newest.items():
        assert newest.get(stage, 0) >= step, f"{stage}: newest state went back from {step} to {newest.get(stage)}"
    for rel, sig in before.items():  # states, caches and finished exports are never redone
        if rel in snap and not _is_temp(rel) and (re.search(r"state-\d+\.safetensors$|chunk-\d+\.safetensors$"
                                                            r"|teacher-gate-\w+\.safetensors$", rel)):
            assert snap[rel] == sig, f"{rel} was written again: the work it saved was redone"
    for entry in previously:
        rel = str(Path(entry["export"]).relative_to(root))
        assert snap.get(rel) == before.get(rel), f"{rel} of a finished stage was rewritten"
    assert {e["name"] for e in previously} <= {e["name"] for e in recorded}
    return {"states": newest, "finished": [e["name"] for e in recorded]}


def _log_rows(path: Path):
    """The trainer's log rows without the wall-clock fields."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "step_seconds")}
            for line in path.read_text().splitlines()]


def test_repeated_sigkills_then_resume_lose_nothing_saved_and_match_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(_cli(tmp_path, straight / "run", straight / "models", *EXTRA), check=True, env=_env(), cwd=ROOT,
                   capture_output=True)

    rng = random.Random(20240611)
    def write():  # a delay inside the WRITE_PAUSE window
        return rng.uniform(0.02, 0.12)

    plan = [  # (aimed at, trigger, delay after it) in the order a run gets there
        ("start-up", lambda s, b: True, rng.uniform(0.3, 2.5)),
        ("trajectory caching", _new_temp("chunk-"), write()),
        ("teacher gate scoring", _new_temp("teacher-gate-"), write()),
        ("mid-stage 1", _new_file(r"run/state/student_4step/state-\d{8}\.safetensors"), rng.uniform(0.0, 0.1)),
        ("state save 1", _new_temp("state-"), write()),
        ("gating 1", _new_file(rf"run/state/student_4step/state-{GENERATOR_STEPS:08d}\.safetensors"), 0.0),
        ("export 1", _new_temp("pvtt_student_4step"), write()),
        ("start-up", lambda s, b: True, rng.uniform(0.3, 2.5)),
        ("mid-stage 2", _new_file(r"run/state/student_2step/state-\d{8}\.safetensors"), rng.uniform(0.0, 0.1)),
        ("state save 2", _new_temp("state-"), write()),
        ("gating 2", _new_file(rf"run/state/student_2step/state-{GENERATOR_STEPS:08d}\.safetensors"), 0.0),
        ("export 2", _new_temp("pvtt_student_2step"), write()),
    ]
    root = tmp_path / "killed"
    launcher = (sys.executable, "-c", SLOW_WRITES)
    kills = []
    for n, (aim, trigger, delay) in enumerate(plan):
        before, previously = _snapshot(root), _finished(root)
        resume = ("--resume",) if n else ()
        with open(tmp_path / f"launch-{n}.err", "w") as err:
            proc = subprocess.Popen(_cli(tmp_path, root / "run", root / "models", *EXTRA, *resume, launcher=launcher),
                                    env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
            snap = _kill_when(proc, root, before, trigger, delay)
        assert snap is not None, f"launch {n} ended before its kill ({aim}): " + \
            (tmp_path / f"launch-{n}.err").read_text()[-2000:]
        phase = _phase(snap, before)
        in_flight = {p: snap[p][2] for p in _changed(snap, before)
                     if _is_temp(p) and not _TEMP.match(p.split("/")[-1])}
        saved = _check_nothing_lost(root, snap, before, previously)
        kills.append({"aimed": aim, "phase": phase, "half_written": in_flight, **saved})

    final = subprocess.run(_cli(tmp_path, root / "run", root / "models", *EXTRA, "--resume", launcher=launcher),
                           env=_env(), cwd=ROOT, capture_output=True, text=True, check=False)
    print("\n".join(f"kill {i + 1:2d} aimed at {k['aimed']:<20} landed in {k['phase']:<40} newest states "
                    f"{k['states']}, finished {k['finished']}" for i, k in enumerate(kills)))
    assert final.returncode == 0, final.stderr[-3000:]

    assert len(kills) >= 10
    phases = {k["phase"].removesuffix(" (write in flight)") for k in kills}
    assert len(phases) >= 3, phases
    assert {"start-up", "state save", "student export"} <= phases, phases
    # The write-targeted kills found a half-written file in write_atomic's temp folder.
    half = [k for k in kills if k["half_written"]]
    assert len(half) >= 4, kills
    for k in half:
        for rel, size in k["half_written"].items():
            assert rel.split("/")[-1].endswith(".safetensors") and size > 0, k
    for name in ("pvtt_student_4step.safetensors", "pvtt_student_2step.safetensors"):
        a = load_checkpoint(straight / "models" / name).model.state_dict()
        b = load_checkpoint(root / "models" / name).model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    for stage in STAGES:
        # Steps trained after the last save and logged before a kill are logged once, not twice.
        assert _log_rows(root / "run" / f"{stage}.log.jsonl") == _log_rows(straight / "run" / f"{stage}.log.jsonl")
        assert [p.name for p in state_files(root / "run" / "state" / stage)] == [
            f"state-{s:08d}.safetensors" for s in (GENERATOR_STEPS - SAVE_EVERY, GENERATOR_STEPS)]
    left = [p for p in _snapshot(root) if _is_temp(p)]
    assert left == [], f"temp files of killed writes survived the resume: {left}"
    done = json.loads((root / "run" / "progress.json").read_text())["stages"]
    assert [s["name"] for s in done] == list(STAGES)


# --- disk full / file-size limit during a save -------------------------------------------------------

FSIZE_CHILD = """
import json, resource, signal, sys, torch
from pathlib import Path
from _tiny import MICRO_BACKBONE
from pvtt_train.distill.state import save_state
from pvtt_train.models.checkpoint import read_metadata, save_checkpoint
from pvtt_train.models.pvtt_model import WanConcatPVTT

checkpoint, states, limit = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(1)
model = WanConcatPVTT(MICRO_BACKBONE)
meta = read_metadata(checkpoint)
state = {"student": model.state_dict(), "g_steps": 4}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so the write fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
errors = []
for what, save in (("checkpoint", lambda: save_checkpoint(checkpoint, model, meta)),
                   ("same state", lambda: save_state(states, 2, state)),
                   ("next state", lambda: save_state(states, 4, state))):
    try:
        save()
        print(json.dumps({"what": what, "saved": True}), flush=True)
    except Exception as exc:
        errors.append(exc)
        print(json.dumps({"what": what, "type": type(exc).__name__, "errno": getattr(exc, "errno", None),
                          "message": str(exc), "cause": type(exc.__cause__).__name__}), flush=True)
if errors:
    raise errors[0]
"""


def test_file_size_limit_during_saves_fails_clearly_and_keeps_the_previous_files(tmp_path):
    """A real EFBIG from the kernel (RLIMIT_FSIZE below the file's size) while overwriting a good
    checkpoint and writing training states over and next to a good one."""
    checkpoint = micro_teacher(tmp_path / "m.safetensors")
    states = tmp_path / "state"
    good_state = save_state(states, 2, {"student": load_checkpoint(checkpoint).model.state_dict(), "g_steps": 2})
    before = {p: p.read_bytes() for p in (checkpoint, good_state)}
    limit = min(len(b) for b in before.values()) // 2
    out = subprocess.run([sys.executable, "-c", FSIZE_CHILD, str(checkpoint), str(states), str(limit)],
                         env={**_env(), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}, cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    reports = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["what"] for r in reports] == ["checkpoint", "same state", "next state"], out.stderr[-3000:]
    for report, target in zip(reports, (checkpoint, good_state, states / "state-00000004.safetensors")):
        assert report.get("saved") is None, report
        assert report["type"] == "DiskFullError" and report["errno"] == errno.EFBIG, report
        assert str(target) in report["message"] and "file-size limit" in report["message"], report
        assert "Free space" in report["message"] and "--run-dir" in report["message"], report
        assert report["cause"] == "SafetensorError", report  # safetensors' own error, kept as the cause
    assert out.returncode == 1 and "DiskFullError" in out.stderr and "file-size limit" in out.stderr
    for path, data in before.items():
        assert path.read_bytes() == data, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "state"]
    assert [p.name for p in states.iterdir()] == ["state-00000002.safetensors"]  # no temp, no rotation
    load_checkpoint(checkpoint)
    assert load_state(good_state)["g_steps"] == 2


@pytest.mark.parametrize("form", ["oserror", "safetensors"])
def test_disk_full_in_a_stage_state_save_stops_clearly_and_resume_continues(teacher, tmp_path, monkeypatch,  # noqa: F811
                                                                            form):
    """ENOSPC from the state write at step 4 (as Python's OSError, or as safetensors reports it);
    the step-2 state stays, and resuming from it ends exactly where an uninterrupted stage does."""
    from safetensors import SafetensorError

    stage = _stage(generator_steps=4, losses=("dmd", "background"))
    run = RunConfig(batch_size=1, save_every=2, log_every=1)
    inputs = _inputs(teacher, tmp_path, stage)
    acc = make_accelerator(run, tmp_path, trackers=False)
    straight = train_stage(acc, inputs, stage, run, tmp_path / "s1", False, tmp_path / "a.jsonl", progress=False)

    real_save_file = state_module.save_file
    calls = []

    def disk_fills_up(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) < 2:
            return real_save_file(tensors, filename, metadata=metadata)
        with open(filename, "wb") as fh:
            fh.write(b"\0" * 4096)  # what fitted before the disk was full
        if form == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(state_module, "save_file", disk_fills_up)
    folder = tmp_path / "s2"
    with pytest.raises(DiskFullError) as info:
        train_stage(acc, inputs, stage, run, folder, False, tmp_path / "b.jsonl", progress=False)
    message = str(info.value)
    assert len(calls) == 2 and info.value.errno == errno.ENOSPC
    assert "no space left" in message and str(folder / "state-00000004.safetensors") in message
    assert "Free space" in message and "--run-dir" in message and "--resume" in message
    assert isinstance(info.value.__cause__, OSError if form == "oserror" else SafetensorError)
    assert [p.name for p in folder.iterdir()] == ["state-00000002.safetensors"]  # no temp left
    assert load_state(folder / "state-00000002.safetensors")["g_steps"] == 2

    monkeypatch.setattr(state_module, "save_file", real_save_file)
    resumed = train_stage(acc, inputs, stage, run, folder, True, tmp_path / "b.jsonl", progress=False)
    assert resumed.stats["generator_steps"] == 4
    a, b = straight.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Steps 3 and 4 were logged before the failed save and trained again: logged once each.
    assert _log_rows(tmp_path / "b.jsonl") == _log_rows(tmp_path / "a.jsonl")
    assert [r["g_step"] for r in _log_rows(tmp_path / "b.jsonl")] == [1, 2, 3, 4]
    assert sorted(p.name for p in folder.iterdir()) == ["state-00000002.safetensors", "state-00000004.safetensors"]


# --- NaN / Inf losses -----------------------------------------------------------------------------

def _poisoned_stage(teacher, tmp_path, monkeypatch, bad_value, bad_calls, run, generator_steps=6):  # noqa: F811
    """A dmd+background stage whose background loss is ``bad_value`` on the generator turns
    ``bad_calls`` (0-based); returns (result or exception, calls, student weights at each iteration's start)."""
    stage = _stage(generator_steps=generator_steps, critic_ratio=1, losses=("dmd", "background"))
    inputs = _inputs(teacher, tmp_path, stage)
    calls, snapshots = [], []
    real_background, real_rollout = trainer.background_loss, trainer.student_rollout

    def background(x0, cond):
        loss = real_background(x0, cond)
        calls.append(len(calls))
        # Adding a constant keeps the gradients finite: only the loss check can stop the step.
        return loss + bad_value if calls[-1] in bad_calls else loss

    def rollout(model, *args, **kw):
        snapshots.append({k: v.detach().clone() for k, v in model.inner.state_dict().items()})
        return real_rollout(model, *args, **kw)

    monkeypatch.setattr(trainer, "background_loss", background)
    monkeypatch.setattr(trainer, "student_rollout", rollout)
    acc = make_accelerator(run, tmp_path, trackers=False)
    try:
        result = train_stage(acc, inputs, stage, run, None, False, tmp_path / "log.jsonl", progress=False)
    except DistillationAborted as exc:
        result = exc
    return result, calls, snapshots


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_isolated_nonfinite_losses_are_skipped_counted_and_change_no_weight(teacher, tmp_path, monkeypatch,  # noqa: F811
                                                                            bad):
    run = RunConfig(batch_size=1, log_every=1, ema_decay=0, max_nonfinite=2)
    result, calls, snapshots = _poisoned_stage(teacher, tmp_path, monkeypatch, bad, {1, 4}, run)
    assert not isinstance(result, Exception), result
    assert result.stats["generator_steps"] == 6 and result.stats["skipped_steps"] == 2
    assert result.stats["iterations"] == 8 and result.stats["skipped_critic_steps"] == 0
    assert len(calls) == len(snapshots) == 8
    after = snapshots[1:] + [result.student.state_dict()]
    for i, (start, end) in enumerate(zip(snapshots, after)):
        if i in (1, 4):
            assert _same(start, end), f"the skipped step {i} changed the student"
        else:
            assert not _same(start, end), f"step {i} did not train"
    assert all(torch.isfinite(v).all() for v in result.student.state_dict().values())
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["g_step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1, 2, 2, 2]
    assert all(torch.isfinite(torch.tensor(v)) for r in rows for v in r.values() if isinstance(v, float))


def test_repeated_inf_losses_abort_saying_how_many_in_a_row_and_what_to_do(teacher, tmp_path, monkeypatch):  # noqa: F811
    """An isolated Inf resets nothing but the counter; three in a row (the limit) abort at once."""
    run = RunConfig(batch_size=1, log_every=1, ema_decay=0, max_nonfinite=3)
    result, calls, snapshots = _poisoned_stage(teacher, tmp_path, monkeypatch, float("inf"), {1, 3, 4, 5}, run)
    assert isinstance(result, DistillationAborted)
    message = str(result)
    assert "NaN/Inf 3 times in a row" in message and "at generator step 2" in message
    assert "4 student steps skipped in all" in message and "limit 3 in a row" in message
    assert "--lr-student" in message and "--teacher-cfg" in message and "--run-dir" in message
    assert len(calls) == 6  # stopped at the third Inf in a row, not at the third in all
    assert _same(snapshots[3], snapshots[5])  # the skipped steps 3 and 4 changed nothing
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["g_step"] for r in rows] == [1, 2]


# --- determinism --------------------------------------------------------------------------------------

def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not(teacher, tmp_path):  # noqa: F811
    stage = _stage(generator_steps=2)  # every loss of the last stage: regression, temporal, identity...
    inputs = _inputs(teacher, tmp_path, stage)
    acc = make_accelerator(RunConfig(), tmp_path, trackers=False)

    def train(seed, name):
        run = RunConfig(batch_size=1, seed=seed, save_every=2)
        return train_stage(acc, inputs, stage, run, tmp_path / name, False, tmp_path / f"{name}.jsonl",
                           progress=False)

    first = train(0, "a")
    torch.manual_seed(12345)
    torch.rand(1000)  # the global RNG elsewhere must not matter
    again, other = train(0, "b"), train(1, "c")
    for part in ("student", "critic"):
        a, b, c = (getattr(r, part).state_dict() for r in (first, again, other))
        assert _same(a, b), part
        assert max((a[k] - c[k]).abs().max().item() for k in a) > 0, part
    init = teacher.model.state_dict()
    assert not _same(first.student.state_dict(), init)
    sa, sb = (load_state(state_files(tmp_path / n)[-1]) for n in ("a", "b"))
    assert _same(sa["opt_g"]["state"][0], sb["opt_g"]["state"][0]) and torch.equal(sa["rng"], sb["rng"])
    assert sa["stream_position"] == sb["stream_position"] > 0


# --- two runs on one run folder ----------------------------------------------------------------------------

def test_a_second_run_on_a_busy_run_folder_is_refused_with_the_pid_and_the_first_finishes_intact(tmp_path):
    """Defect 4: without a lock, two runs in one --run-dir swept each other's in-flight temps. The first run
    is paused (SIGSTOP) while it holds the folder, so the second certainly meets it there."""
    run_dir, models = tmp_path / "run", tmp_path / "models"
    tiny = ("--path", "2", "--generator-steps", "2")
    first = subprocess.Popen(_cli(tmp_path, run_dir, models, *tiny), env=_env(), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    owner = run_dir / ".pvtt-run.owner.json"
    deadline = time.monotonic() + 240
    while not (owner.exists() and json.loads(owner.read_text() or "{}").get("pid") == first.pid):
        assert first.poll() is None, first.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "the first run never took the run folder"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        before = _snapshot(tmp_path)
        second = subprocess.run(_cli(tmp_path, run_dir, models, *tiny, "--resume"), env=_env(), cwd=ROOT,
                                capture_output=True, text=True, timeout=240)
        assert _snapshot(tmp_path) == before, "the refused run changed the first run's files"
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2, second.stderr[-2000:]
    lines = [line for line in second.stderr.splitlines() if line.startswith("python -m pvtt_train distill: ")]
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    assert f"error: run folder {run_dir} is in use by PID {first.pid} on " in lines[0], lines[0]
    assert "wait for that run to finish, or use another run folder" in lines[0]
    assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    student = load_checkpoint(models / "pvtt_student_2step.safetensors")
    assert student.sampler["steps"] == 2
    assert json.loads((run_dir / "progress.json").read_text())["stages"][0]["name"] == "student_2step"
    assert not owner.exists()  # released at the end: nothing left for the next run to take over
