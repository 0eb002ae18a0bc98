"""Nothing lost: PVTT deletes only what it created, and its writes into a models folder are atomic.

Look-alike names (a user's ``.tmpAb12Cd``, ``docs/.report.final.tmp``, ``.thesis.v3.tmp/``) survive
every sweep; an existing run folder is resumed, overwritten only when PVTT created it, or refused;
the demo's teacher copy is never half a file, whether killed mid-copy or stopped by a full disk.
"""

import hashlib
import os
import resource
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
from _tiny import micro_encoders, micro_teacher

from pvtt_train.__main__ import main
from pvtt_train.demo import install_teacher
from pvtt_train.distill.config import RunConfig, build_stages
from pvtt_train.distill.progressive import run_progressive
from pvtt_train.errors import InputError
from pvtt_train.models.checkpoint import TEMP_PREFIX, remove_stale_temps, write_atomic
from pvtt_train.run_folder import MARKER, open_run_folder


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> sha256 of its bytes (folders as '<dir>')."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        out[rel] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _look_alikes(folder: Path) -> None:
    """A user's files and folders whose names merely look like temp files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".tmpAb12Cd").write_text("my scratch notes")
    (folder / "docs").mkdir(exist_ok=True)
    (folder / "docs" / ".report.final.tmp").write_text("the final report")
    (folder / ".thesis.v3.tmp").mkdir(exist_ok=True)
    (folder / ".thesis.v3.tmp" / "chapter1.tex").write_text("\\chapter{One}")
    (folder / ".progress.json.abcd1234.tmp").write_text("looks like an old-style PVTT temp, is not one")
    (folder / "docs" / f"{TEMP_PREFIX}notes.txt.abcd1234").mkdir(exist_ok=True)  # inside a user's folder
    (folder / "docs" / f"{TEMP_PREFIX}notes.txt.abcd1234" / "keep.txt").write_text("never searched")


def _killed_write(folder: Path, name: str) -> Path:
    """What a write_atomic call killed mid-write leaves: its private temp folder with half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{name}.", dir=folder))
    (tmp / name).write_bytes(b"half a checkpoint")
    return tmp


def test_remove_stale_temps_removes_only_pvtt_temp_folders_at_the_top_level(tmp_path):
    _look_alikes(tmp_path)
    (tmp_path / f"{TEMP_PREFIX}a-file-not-a-folder.abcd1234").write_text("a file PVTT never writes")
    mine = [_killed_write(tmp_path, "state-00000002.safetensors"), _killed_write(tmp_path, "progress.json")]
    before = _tree(tmp_path)
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted(mine)
    assert _tree(tmp_path) == {k: v for k, v in before.items() if not any(k.startswith(m.name) for m in mine)}
    # A glob for one target's temps leaves another target's alone.
    other = _killed_write(tmp_path, "progress.json")
    assert remove_stale_temps(tmp_path, "state-*.safetensors") == [] and other.exists()


def test_write_atomic_temp_has_the_pvtt_prefix_and_is_gone_after_the_write(tmp_path):
    seen = []

    def write(tmp):
        seen.append(Path(tmp).parent.name)
        Path(tmp).write_text("done")

    write_atomic(tmp_path / "report.json", write)
    assert seen[0].startswith(f"{TEMP_PREFIX}report.json.") and sorted(os.listdir(tmp_path)) == ["report.json"]


def _micro_stages():
    return [replace(s, critic_ratio=1, gate=replace(s.gate, ratio=1e6, min_background_psnr=None))
            for s in build_stages((2,), 1)]


def _micro_run(tmp_path):
    identity, video = micro_encoders(tmp_path)
    return RunConfig(batch_size=1, regression_pool=2, eval_clips=2, save_every=1, identity_encoder=str(identity),
                     video_encoder=str(video))


def test_a_run_sweeps_only_its_own_temps_and_keeps_look_alikes_in_the_run_and_models_folders(tmp_path):
    """Defect 2: the start-up sweep deleted a user's look-alike files (recursively) in the run folder."""
    teacher = micro_teacher(tmp_path / "teacher.safetensors", steps=2)
    run, stages = _micro_run(tmp_path), _micro_stages()
    run_dir, models = tmp_path / "run", tmp_path / "models"
    _look_alikes(run_dir)
    _look_alikes(models)
    before_run, before_models = _tree(run_dir), _tree(models)
    killed = [_killed_write(run_dir / "state" / stages[0].name, "state-00000009.safetensors"),
              _killed_write(run_dir, "progress.json"),
              _killed_write(models, "pvtt_student_2step.safetensors")]
    run_progressive(teacher, stages, run, run_dir, models, resume=True, progress=False)
    assert not any(k.exists() for k in killed)
    for before, after in ((before_run, _tree(run_dir)), (before_models, _tree(models))):
        for rel, digest in before.items():
            assert after.get(rel) == digest, f"{rel} was deleted or changed"


# --- an existing run folder: --resume, --overwrite (only PVTT's), or refused -----------------------------

def _demo_argv(tmp_path, out, *extra):
    teacher = tmp_path / "teacher.safetensors"
    if not teacher.exists():
        micro_teacher(teacher, steps=2)
        micro_encoders(tmp_path)
    return ["--threads", "1", "demo", "--out", str(out), "--models-dir", str(tmp_path / "models"), "--teacher",
            str(teacher), "--path", "2", "--generator-steps", "1", "--critic-ratio", "1", "--eval-clips", "2",
            "--regression-pool", "2", "--clips", "1", "--batch-size", "1", "--force", "--heldout-clips", "0",
            "--identity-encoder", str(tmp_path / "identity.safetensors"),
            "--video-encoder", str(tmp_path / "video.safetensors"), *extra]


def _refusal(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_demo_refuses_an_existing_run_folder_it_did_not_create_and_deletes_nothing(tmp_path, capsys):
    """Defect 1: ``demo --out P`` deleted an existing ``P/run/`` and everything in it."""
    out = tmp_path / "out"
    (out / "run" / "thesis").mkdir(parents=True)
    (out / "run" / "thesis" / "chapter1.tex").write_text("\\chapter{One}")
    (out / "notes.txt").write_text("mine")
    before = _tree(out)
    line = _refusal(_demo_argv(tmp_path, out), capsys)
    assert "run folder" in line and "--resume" in line and "--overwrite" in line, line
    assert _tree(out) == before  # nothing deleted, nothing written (not even the exported data)
    line = _refusal(_demo_argv(tmp_path, out, "--overwrite"), capsys)
    assert "was not created by PVTT" in line and MARKER in line, line
    assert _tree(out) == before


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys):
    line = _refusal(_demo_argv(tmp_path, tmp_path / "out", "--resume", "--overwrite"), capsys)
    assert "--resume" in line and "--overwrite" in line and "one of them" in line
    assert not (tmp_path / "out").exists()


def test_overwrite_empties_only_a_run_folder_pvtt_created(tmp_path):
    run_dir = tmp_path / "run"
    open_run_folder(run_dir, resume=False, overwrite=False).release()
    assert (run_dir / MARKER).is_file()
    (run_dir / "state").mkdir()
    (run_dir / "state" / "state-00000002.safetensors").write_bytes(b"old run")
    (run_dir / "progress.json").write_text("{}")
    with pytest.raises(InputError, match=r"not empty \(progress.json, state\).*--resume.*--overwrite"):
        open_run_folder(run_dir, resume=False, overwrite=False)
    lock = open_run_folder(run_dir, resume=False, overwrite=True)
    try:
        assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".pvtt-run.")) == [MARKER]
    finally:
        lock.release()
    # A folder the user made (no marker) is never emptied, even when asked to.
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "progress.json").write_text("their file")
    with pytest.raises(InputError, match="not created by PVTT"):
        open_run_folder(theirs, resume=False, overwrite=True)
    assert (theirs / "progress.json").read_text() == "their file"


# --- the teacher copy into the models folder is atomic ------------------------------------------------------

def _in_child(work) -> tuple[int, int]:
    """Fork a child that runs ``work(write_fd)`` and exits; returns (pid, read_fd). Forked, not spawned,
    so the child needs no second import of the training stack (tens of seconds on a busy machine)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_fd)
        code = 0
        try:
            work(write_fd)
        except BaseException:  # noqa: BLE001 - reported to the parent through the exit code
            code = 1
        os._exit(code)
    os.close(write_fd)
    return pid, read_fd


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_kill_mid_copy_leaves_no_partial_teacher_and_the_next_copy_completes(tmp_path, monkeypatch):
    """Defect 3: a SIGKILL during the teacher copy left a truncated file in the models folder."""
    teacher = micro_teacher(tmp_path / "pvtt_teacher.safetensors")
    models = tmp_path / "models"
    models.mkdir()
    real_copyfile = shutil.copyfile

    def slow_copyfile(src, dst, **kw):  # the real copy's bytes, with a pause half-way so the kill lands there
        data = Path(src).read_bytes()
        with open(dst, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.write(slow_copyfile.report, b"half")
            time.sleep(60)
            fh.write(data[len(data) // 2:])
        return dst

    def child(write_fd):
        slow_copyfile.report = write_fd
        monkeypatch.setattr(shutil, "copyfile", slow_copyfile)
        install_teacher(teacher, models)

    pid, read_fd = _in_child(child)
    try:
        assert os.read(read_fd, 4) == b"half"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_fd)
    assert shutil.copyfile is real_copyfile
    assert not (models / teacher.name).exists(), "a half-copied teacher is in the models folder"
    temps = [p.name for p in models.iterdir()]
    assert len(temps) == 1 and temps[0].startswith(f"{TEMP_PREFIX}{teacher.name}.")
    install_teacher(teacher, models)
    assert [p.name for p in models.iterdir()] == [teacher.name]
    assert (models / teacher.name).read_bytes() == teacher.read_bytes()


def test_a_different_file_of_the_teachers_name_is_kept_and_an_identical_one_is_not_rewritten(tmp_path, capsys):
    teacher = micro_teacher(tmp_path / "pvtt_teacher.safetensors")
    models = tmp_path / "models"
    models.mkdir()
    (models / teacher.name).write_bytes(b"the user's own teacher")
    install_teacher(teacher, models)
    assert (models / teacher.name).read_bytes() == b"the user's own teacher"
    assert "already exists and is not a copy of the teacher" in capsys.readouterr().out
    (models / teacher.name).unlink()
    install_teacher(teacher, models)
    stamp = (models / teacher.name).stat().st_mtime_ns
    time.sleep(0.01)
    install_teacher(teacher, models)
    assert (models / teacher.name).stat().st_mtime_ns == stamp


@pytest.mark.skipif(not (hasattr(os, "fork") and hasattr(resource, "RLIMIT_FSIZE")),
                    reason="needs fork and a POSIX file-size limit")
def test_a_full_disk_during_the_teacher_copy_names_the_copy_and_leaves_nothing(tmp_path):
    teacher = micro_teacher(tmp_path / "pvtt_teacher.safetensors")
    models = tmp_path / "models"
    models.mkdir()

    def child(write_fd):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so the write fails with EFBIG instead of killing us
        limit = teacher.stat().st_size // 3
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            install_teacher(teacher, models)
            os.write(write_fd, b"no error")
        except Exception as exc:  # noqa: BLE001 - the parent checks which error it was
            os.write(write_fd, f"{type(exc).__name__}\n{exc}".encode())

    pid, read_fd = _in_child(child)
    with os.fdopen(read_fd, "rb") as fh:
        report = fh.read().decode()
    assert os.waitpid(pid, 0)[1] == 0
    kind, message = report.split("\n", 1) if "\n" in report else (report, "")
    assert kind == "DiskFullError", report
    assert f"could not write {models / teacher.name}" in message and "file-size limit" in message, message
    assert list(models.iterdir()) == []
