"""Progressive distillation through the real CLI: SIGKILL then --resume, and two processes (DDP on gloo)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from _tiny import micro_encoders, micro_teacher

from pvtt_train.models.checkpoint import load_checkpoint, read_metadata

ROOT = Path(__file__).resolve().parents[1]


def _cli(tmp_path, run_dir, models, *extra, launcher=(sys.executable, "-m")):
    teacher = tmp_path / "teacher.safetensors"
    if not teacher.exists():
        micro_teacher(teacher, steps=4)
        micro_encoders(tmp_path)
    return [*launcher, "pvtt_train", "--threads", "1", "distill", "--teacher", str(teacher), "--path", "4,2",
            "--run-dir", str(run_dir), "--models-dir", str(models), "--batch-size", "1", "--generator-steps", "6",
            "--critic-ratio", "2", "--save-every", "2", "--regression-pool", "2", "--eval-clips", "4",
            "--report-clips", "0", "--identity-encoder", str(tmp_path / "identity.safetensors"),
            "--video-encoder", str(tmp_path / "video.safetensors"), "--force", *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _weights(path):
    return load_checkpoint(path).model.state_dict()


def test_sigkill_in_the_second_stage_then_resume_matches_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(_cli(tmp_path, straight / "run", straight / "models"), check=True, env=_env(), cwd=ROOT,
                   capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(tmp_path, killed / "run", killed / "models"), env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = killed / "run" / "state" / "student_2step"
    deadline = time.monotonic() + 300
    while not list(second.glob("state-*.safetensors")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before the second stage wrote a state"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    states = sorted(p.name for p in second.glob("state-*.safetensors"))
    assert states and states[-1] != "state-00000006.safetensors", "killed too late to test anything"
    assert not (killed / "models" / "pvtt_student_2step.safetensors").exists()
    assert (killed / "models" / "pvtt_student_4step.safetensors").exists()
    first_stamp = (killed / "models" / "pvtt_student_4step.safetensors").stat().st_mtime_ns

    subprocess.run(_cli(tmp_path, killed / "run", killed / "models", "--resume"), check=True, env=_env(), cwd=ROOT,
                   capture_output=True)
    assert (killed / "models" / "pvtt_student_4step.safetensors").stat().st_mtime_ns == first_stamp
    for name in ("pvtt_student_4step.safetensors", "pvtt_student_2step.safetensors"):
        a, b = _weights(straight / "models" / name), _weights(killed / "models" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_two_processes_keep_identical_weights_and_export_loadable_students(tmp_path):
    """DDP on gloo with every optional path on: GAN head, perceptual loss, bf16 autocast, gradient
    checkpointing and accumulation."""
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m")
    out = subprocess.run(_cli(tmp_path, tmp_path / "run", tmp_path / "models", "--adversarial", "--perceptual",
                              "--mixed-precision", "bf16", "--gradient-checkpointing", "--grad-accumulation", "2",
                              launcher=launcher), env=_env(),
                         cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    for stage in progress["stages"]:
        assert stage["stats"]["processes"] == 2
        assert stage["stats"]["rank_weight_spread"] == 0.0
    student = tmp_path / "models" / "pvtt_student_2step.safetensors"
    assert read_metadata(student)["provenance"]["processes"] == 2
    load_checkpoint(student)
