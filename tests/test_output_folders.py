"""Output folders are checked before the first training step (issue 12, defect 7): a read-only or
uncreatable --models-dir, --run-dir or demo --out is one line naming the folder and the fix, with
nothing trained; missing folders are created, and the write probe leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from _tiny import micro_encoders, micro_teacher

from pvtt_train.__main__ import main
from pvtt_train.errors import InputError


def _writable(folder: Path) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` made truly read-only: by its mode, or for root (whom modes do not stop) by the
    immutable attribute; skipped where neither works."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    immutable = _writable(folder) and shutil.which("chattr") is not None \
        and subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False).returncode == 0
    try:
        if _writable(folder):
            pytest.skip("cannot make a read-only folder here (root without chattr)")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@pytest.fixture()
def argv(tmp_path, monkeypatch):
    monkeypatch.delenv("PVTT_DEBUG", raising=False)
    threads = torch.get_num_threads()
    teacher = micro_teacher(tmp_path / "teacher.safetensors", steps=4)
    identity, video = micro_encoders(tmp_path)

    def build(command, *extra):
        return ["--threads", "1", command, "--teacher", str(teacher), "--path", "2", "--batch-size", "1",
                "--generator-steps", "2", "--regression-pool", "2", "--eval-clips", "4", "--identity-encoder",
                str(identity), "--video-encoder", str(video), *extra]

    yield build
    torch.set_num_threads(threads)


def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    stderr = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_read_only_models_dir_is_refused_before_anything_trains(argv, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with read_only(tmp_path / "models") as models:
        line = _refused(argv("distill", "--run-dir", str(run_dir), "--models-dir", str(models), "--report-clips", "0"),
                        capsys)
        assert f"distill: error: --models-dir {models} is not writable (" in line
        assert "make it writable (e.g. chmod u+w, or remount it read-write), or pass another folder with " \
               "--models-dir" in line
        assert list(models.iterdir()) == []
    # Nothing was trained, cached or scored before the refusal.
    assert not (run_dir / "state").exists() and not (run_dir / "cache").exists()
    assert not (run_dir / "progress.json").exists()


def test_a_models_dir_that_cannot_be_created_is_refused(argv, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with read_only(tmp_path / "locked") as locked:
        line = _refused(argv("distill", "--run-dir", str(run_dir), "--models-dir", str(locked / "pvtt"),
                             "--report-clips", "0"), capsys)
    assert f"--models-dir {locked / 'pvtt'} cannot be created (" in line
    assert "create it with write permission, or pass a folder you can write to" in line
    assert not (run_dir / "state").exists()


def test_a_read_only_run_dir_and_demo_out_are_refused(argv, tmp_path, capsys):
    with read_only(tmp_path / "run") as run_dir:
        line = _refused(argv("distill", "--run-dir", str(run_dir), "--models-dir", str(tmp_path / "m")), capsys)
        assert f"--run-dir {run_dir} is not writable (" in line
    with read_only(tmp_path / "out") as out:
        line = _refused(argv("demo", "--out", str(out), "--models-dir", str(tmp_path / "m")), capsys)
        assert f"demo: error: --out {out} is not writable (" in line
        assert list(out.iterdir()) == []


def test_missing_folders_are_probed_in_their_parent_and_the_probe_leaves_nothing(tmp_path):
    from pvtt_train.cli_args import check_output_folders

    folders = {"--run-dir": tmp_path / "a" / "run", "--models-dir": tmp_path / "b"}
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "mine.txt").write_text("kept")
    check_output_folders(folders)
    # Nothing is created (the run creates and marks its own run folder), and no probe file is left.
    assert sorted(os.listdir(tmp_path)) == ["b"]
    assert sorted(os.listdir(tmp_path / "b")) == ["mine.txt"]
    with read_only(tmp_path / "c") as folder, pytest.raises(InputError, match="--models-dir .* is not writable"):
        check_output_folders({"--run-dir": tmp_path / "a" / "run", "--models-dir": folder})
