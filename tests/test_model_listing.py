"""PVTT Load Model lists only what it can load, and says the true reason for a name it refuses.

Standalone folder mode (``PVTT_MODELS_DIR``): an in-flight write's temp, hidden files, a symlink out of
the models folder and a FIFO are not listed; asked for by name, each gets its own reason instead of
"checkpoint not found" (or a load that fails after validation passed).
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from _node_fixtures import TINY_NAME, checkpoint, nodes, paths, run

TEMP_PREFIX = ".pvtt-tmp-"


@pytest.fixture
def models(folders, models_dir, tmp_path, monkeypatch):
    """A fresh models folder holding one loadable tiny checkpoint."""
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copyfile(models_dir / TINY_NAME, folder / TINY_NAME)
    monkeypatch.setenv("PVTT_MODELS_DIR", str(folder))
    return folder


def _validate(name):
    return nodes["PVTTLoadModel"].VALIDATE_INPUTS(name)


def test_a_write_in_flight_is_not_listed_and_is_named_for_what_it_is(models):
    """Defect 13: rglob listed write_atomic's temp (inside a hidden folder) while the write ran."""
    seen = {}

    def write(tmp):
        shutil.copyfile(models / TINY_NAME, tmp)  # the whole file is in the temp folder, not yet renamed
        seen["names"] = paths.model_names()
        seen["temp"] = Path(tmp).relative_to(models).as_posix()
        seen["verdict"] = _validate(seen["temp"])

    checkpoint.write_atomic(models / "pvtt_student_4step.safetensors", write)
    assert seen["temp"].startswith(TEMP_PREFIX)
    assert seen["names"] == [TINY_NAME]
    assert "temporary file of a checkpoint write that is still in progress" in seen["verdict"]
    assert paths.model_names() == sorted([TINY_NAME, "pvtt_student_4step.safetensors"])


def test_hidden_files_and_folders_are_not_listed(models):
    (models / ".git").mkdir()
    shutil.copyfile(models / TINY_NAME, models / ".git" / "old.safetensors")
    shutil.copyfile(models / TINY_NAME, models / ".draft.safetensors")
    (models / "sub").mkdir()
    shutil.copyfile(models / TINY_NAME, models / "sub" / "kept.safetensors")
    assert paths.model_names() == sorted([TINY_NAME, "sub/kept.safetensors"])
    assert "is hidden" in _validate(".draft.safetensors") and "rename it" in _validate(".draft.safetensors")


def test_a_symlink_out_of_the_models_folder_is_not_listed_and_says_so(models, tmp_path):
    """Defect 13: such a link was listed and passed VALIDATE_INPUTS, then failed as 'not found'."""
    outside = tmp_path / "elsewhere" / "big.safetensors"
    outside.parent.mkdir()
    shutil.copyfile(models / TINY_NAME, outside)
    (models / "linked_out.safetensors").symlink_to(outside)
    (models / "linked_in.safetensors").symlink_to(models / TINY_NAME)
    (models / "dangling.safetensors").symlink_to(tmp_path / "gone.safetensors")
    assert paths.model_names() == sorted([TINY_NAME, "linked_in.safetensors"])
    verdict = _validate("linked_out.safetensors")
    assert f"is a symlink to {outside.resolve()}, outside the models folder" in verdict and "Copy or move" in verdict
    with pytest.raises(Exception, match="outside the models folder") as exc:
        run("PVTTLoadModel", model_name="linked_out.safetensors")
    assert type(exc.value).__name__ == "InputError"
    assert "which does not exist" in _validate("dangling.safetensors")
    assert run("PVTTLoadModel", model_name="linked_in.safetensors")[0].sampler["steps"] == 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_is_not_listed_and_is_refused_as_not_a_regular_file(models):
    """Defect 13: a FIFO was reported as 'checkpoint not found'."""
    os.mkfifo(models / "pipe.safetensors")
    assert paths.model_names() == [TINY_NAME]
    verdict = _validate("pipe.safetensors")
    assert "is not a regular file but a named pipe (FIFO)" in verdict and "not found" not in verdict
    (models / "folder.safetensors").mkdir()
    assert "is not a regular file but a folder" in _validate("folder.safetensors")


def test_names_that_leave_the_folder_and_missing_names_are_still_not_found(models):
    for name in ("../outside.safetensors", "/etc/passwd", "missing.safetensors"):
        assert "was not found" in _validate(name), name
    leftover = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}x.safetensors.", dir=models))
    assert leftover.exists() and paths.model_names() == [TINY_NAME]
