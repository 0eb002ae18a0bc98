"""A distillation process killed with SIGKILL resumes from its last state to the same weights."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from pvtt_train.models.checkpoint import load_checkpoint

from _tiny import micro_teacher

ROOT = Path(__file__).resolve().parents[1]


def _distill_cmd(teacher, out, state_dir, *extra):
    return [sys.executable, "-m", "pvtt_train", "--threads", "1", "distill", "--teacher", str(teacher),
            "--out", str(out), "--state-dir", str(state_dir), "--batch-size", "1", "--generator-steps", "6",
            "--critic-ratio", "2", "--save-every", "2", *extra]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    teacher = micro_teacher(tmp_path / "teacher.safetensors")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    straight = tmp_path / "straight.safetensors"
    subprocess.run(_distill_cmd(teacher, straight, tmp_path / "s1"), check=True, env=env, cwd=ROOT,
                   capture_output=True)

    killed = tmp_path / "killed.safetensors"
    state_dir = tmp_path / "s2"
    proc = subprocess.Popen(_distill_cmd(teacher, killed, state_dir), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(state_dir.glob("state-*.safetensors")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before writing a state"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.exists()
    states = sorted(p.name for p in state_dir.glob("state-*.safetensors"))
    assert states and states[-1] != "state-00000006.safetensors"

    subprocess.run(_distill_cmd(teacher, killed, state_dir, "--resume"), check=True, env=env, cwd=ROOT,
                   capture_output=True)
    a = load_checkpoint(straight).model.state_dict()
    b = load_checkpoint(killed).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
