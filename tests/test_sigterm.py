"""SIGTERM behaves like Ctrl-C (issue 12, defect 7): training finishes the step in flight, saves its state,
says how to resume and exits 143 (Ctrl-C: 130); a second signal stops at once; the resumed run ends with
the weights of an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from _tiny import micro_encoders, micro_teacher
from test_distill_kill_resume import ROOT, _env
from test_progressive import _inputs, _stage, teacher  # noqa: F401  (teacher is a fixture)

from pvtt_train import stop_signals
from pvtt_train.distill import trainer
from pvtt_train.distill.config import RunConfig
from pvtt_train.distill.progressive import make_accelerator
from pvtt_train.distill.state import load_state, state_files
from pvtt_train.distill.trainer import train_stage
from pvtt_train.models.checkpoint import load_checkpoint


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def ctrl_c_as_in_a_terminal():
    """A shell's background job (as this test may run in) starts with Ctrl-C ignored, and ``handled()``
    leaves an ignored signal ignored; a terminal's foreground job has Python's own handler."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _signalling_rollout(monkeypatch, at_call: int, signum: int, times: int = 1) -> list:
    """Send ``signum`` to this process ``times`` times during the ``at_call``-th student rollout (1-based)."""
    calls, real = [], trainer.student_rollout

    def rollout(*args, **kw):
        calls.append(len(calls) + 1)
        if len(calls) == at_call:
            for _ in range(times):
                os.kill(os.getpid(), signum)
        return real(*args, **kw)

    monkeypatch.setattr(trainer, "student_rollout", rollout)
    return calls


@pytest.mark.parametrize("signum, stopped, at_call, g_steps", [
    (signal.SIGTERM, stop_signals.Terminated, 3, 1),  # a critic-only iteration (critic ratio 2)
    (signal.SIGTERM, stop_signals.Terminated, 4, 2),  # a generator turn
    (signal.SIGINT, KeyboardInterrupt, 3, 1),
], ids=["sigterm-critic-step", "sigterm-generator-step", "ctrl-c"])
def test_a_first_signal_finishes_the_step_saves_it_and_resume_ends_where_a_straight_run_does(
        teacher, tmp_path, monkeypatch, signum, stopped, at_call, g_steps, ctrl_c_as_in_a_terminal):  # noqa: F811
    stage = _stage(generator_steps=3, losses=("dmd", "background"))
    run = RunConfig(batch_size=1, save_every=100, log_every=1)  # no periodic state: only the stop saves
    inputs = _inputs(teacher, tmp_path, stage)
    acc = make_accelerator(run, tmp_path, trackers=False)
    straight = train_stage(acc, inputs, stage, run, tmp_path / "s1", False, tmp_path / "a.jsonl", progress=False)

    calls = _signalling_rollout(monkeypatch, at_call, signum)
    folder = tmp_path / "s2"
    with stop_signals.handled(), pytest.raises(stopped) as info:
        train_stage(acc, inputs, stage, run, folder, False, tmp_path / "b.jsonl", progress=False)
    assert type(info.value) is stopped
    assert stop_signals.exit_code(info.value) == (143 if signum == signal.SIGTERM else 130)
    assert len(calls) == at_call  # the step in flight finished, no other began
    saved = state_files(folder)
    assert [p.name for p in saved] == [f"state-{g_steps:08d}.safetensors"]
    state = load_state(saved[0])
    assert (state["g_steps"], state["iteration"]) == (g_steps, at_call)

    monkeypatch.undo()  # the real rollout again
    resumed = train_stage(acc, inputs, stage, run, folder, True, tmp_path / "b.jsonl", progress=False)
    assert resumed.stats["generator_steps"] == 3
    assert _same(straight.student.state_dict(), resumed.student.state_dict())
    assert _same(straight.critic.state_dict(), resumed.critic.state_dict())


def test_a_second_signal_stops_at_once_without_saving(teacher, tmp_path, monkeypatch):  # noqa: F811
    stage = _stage(generator_steps=3, losses=("dmd", "background"))
    run = RunConfig(batch_size=1, save_every=100)
    acc = make_accelerator(run, tmp_path, trackers=False)
    calls = _signalling_rollout(monkeypatch, 3, signal.SIGTERM, times=2)
    with stop_signals.handled(), pytest.raises(stop_signals.Terminated):
        train_stage(acc, _inputs(teacher, tmp_path, stage), stage, run, tmp_path / "s", False, tmp_path / "l.jsonl",
                    progress=False)
    assert len(calls) == 3 and state_files(tmp_path / "s") == []
    assert stop_signals.pending() == 0  # handled() leaves no stop behind for the next command


def _argv(tmp_path, name):
    teacher_file = tmp_path / "teacher.safetensors"
    if not teacher_file.exists():
        micro_teacher(teacher_file, steps=4)
        micro_encoders(tmp_path)
    return ["--threads", "1", "distill", "--teacher", str(teacher_file), "--path", "2", "--run-dir", str(tmp_path / name),
            "--models-dir", str(tmp_path / name / "models"), "--batch-size", "1", "--generator-steps", "8",
            "--critic-ratio", "2", "--save-every", "100", "--regression-pool", "2", "--eval-clips", "4",
            "--report-clips", "0", "--identity-encoder", str(tmp_path / "identity.safetensors"),
            "--video-encoder", str(tmp_path / "video.safetensors"), "--force"]


def _cli(argv):
    """A fresh CLI process, as a user runs each command: every run of this test starts from the same
    process state (an in-process run would inherit whatever earlier tests left behind)."""
    return subprocess.run([sys.executable, "-m", "pvtt_train", *argv], check=False, env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_sigterm_to_a_real_cli_run_saves_says_how_to_resume_and_exits_143(tmp_path, monkeypatch):
    monkeypatch.delenv("PVTT_DEBUG", raising=False)
    straight = _cli(_argv(tmp_path, "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]

    log = tmp_path / "killed" / "student_2step.log.jsonl"
    with open(tmp_path / "err.txt", "w") as err, open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pvtt_train", *_argv(tmp_path, "killed")], env=_env(),
                                cwd=ROOT, stdout=out, stderr=err)
        deadline = time.monotonic() + 240
        while not (log.exists() and log.read_text().strip()):  # the first log row: generator step 5 of 8
            assert proc.poll() is None, (tmp_path / "err.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never logged a step"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    stderr, stdout = (tmp_path / "err.txt").read_text(), (tmp_path / "out.txt").read_text()
    assert code == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "python -m pvtt_train distill: terminated (SIGTERM); run the same command with --resume to continue " \
           "from the last training state" in stderr
    saved = state_files(tmp_path / "killed" / "state" / "student_2step")
    assert len(saved) == 1, "the stop saved no state"
    step = load_state(saved[0])["g_steps"]
    assert 5 <= step < 8, step  # where it stopped, mid-stage; no periodic state (--save-every 100)
    assert f"stopping: stage student_2step saved at generator step {step}" in stdout
    assert [json.loads(line)["g_step"] for line in log.read_text().splitlines()] == [5]
    assert not (tmp_path / "killed" / "models" / "pvtt_student_2step.safetensors").exists()

    resumed = _cli([*_argv(tmp_path, "killed"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (load_checkpoint(tmp_path / name / "models" / "pvtt_student_2step.safetensors").model.state_dict()
            for name in ("straight", "killed"))
    assert _same(a, b)


def test_handled_installs_for_the_command_only_and_leaves_an_ignored_signal_ignored():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # e.g. started by nohup
    try:
        with stop_signals.handled():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with stop_signals.handled():
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            with pytest.raises(stop_signals.Terminated):  # outside a training loop: at once
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
