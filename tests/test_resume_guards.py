"""A resume that would mix two trainings is refused in one line that names what differs (issue 12, defects 5
and 6): another teacher (same architecture, other weights), another --batch-size, a progress.json that PVTT
did not write whole, and a training state whose skeleton names a tensor it does not hold.

The CLI cases run ``python -m pvtt_train distill`` in-process on a micro teacher; a run is stopped right
after its first training state, as a kill or Ctrl-C would stop it mid-stage.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
from _tiny import micro_encoders, micro_teacher
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pvtt_train.__main__ import build_parser, main
from pvtt_train.distill import trainer
from pvtt_train.distill.config import GateConfig, RunConfig, StageConfig, build_stages
from pvtt_train.distill.signature import (
    MECHANICS,
    NOT_FLAGS,
    STAGE_FLAGS,
    run_signature,
    signature_differences,
    teacher_fingerprint,
)
from pvtt_train.distill.state import load_newest_state, load_state, save_state, state_files
from pvtt_train.errors import CheckpointError

PROG = "python -m pvtt_train distill"
STATE = "state/student_2step"


@pytest.fixture()
def run(tmp_path, monkeypatch):
    """A micro teacher, a second one of the same architecture with other weights, encoders, and the
    argv of a two-step distillation into ``tmp_path/run`` and ``tmp_path/models``."""
    monkeypatch.delenv("PVTT_DEBUG", raising=False)
    threads = torch.get_num_threads()
    teacher = micro_teacher(tmp_path / "teacher.safetensors", steps=4)
    other = micro_teacher(tmp_path / "other.safetensors", seed=1, steps=4)
    identity, video = micro_encoders(tmp_path)

    def argv(*extra):
        return ["--threads", "1", "distill", "--teacher", str(teacher), "--path", "2", "--run-dir",
                str(tmp_path / "run"), "--models-dir", str(tmp_path / "models"), "--batch-size", "1",
                "--generator-steps", "4", "--critic-ratio", "2", "--save-every", "2", "--regression-pool", "2",
                "--eval-clips", "4", "--report-clips", "0", "--identity-encoder", str(identity), "--video-encoder",
                str(video), "--force", *extra]

    yield {"teacher": teacher, "other": other, "argv": argv, "run": tmp_path / "run", "models": tmp_path / "models"}
    torch.set_num_threads(threads)


def _exit(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith(f"{PROG}: error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def _stopped_after_the_first_state(run, monkeypatch, capsys) -> Path:
    """Run until the first training state is saved, then stop as Ctrl-C does; returns that state."""
    real_save = trainer.save_state

    def save_then_stop(*args, **kw):
        real_save(*args, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_state", save_then_stop)
    code, stderr = _exit(run["argv"](), capsys)
    monkeypatch.setattr(trainer, "save_state", real_save)
    assert code == 130, stderr
    saved = state_files(run["run"] / STATE)
    assert [p.name for p in saved] == ["state-00000002.safetensors"]
    return saved[0]


def _untouched(state: Path, run) -> bytes:
    """Nothing after the refusal trained, saved or exported anything."""
    assert [p.name for p in state_files(run["run"] / STATE)] == [state.name]
    assert not run["models"].exists() or list(run["models"].iterdir()) == []
    return state.read_bytes()


# --- defect 5: another teacher -------------------------------------------------------------------------------

def test_resume_with_another_teacher_is_refused_naming_it(run, monkeypatch, capsys):
    state = _stopped_after_the_first_state(run, monkeypatch, capsys)
    before = state.read_bytes()
    code, stderr = _exit(run["argv"]("--teacher", str(run["other"]), "--resume"), capsys)
    line = _one_error_line(stderr)
    assert code == 2
    assert "progress.json belongs to a run with other settings: --teacher: weights with SHA-256 " \
           f"{teacher_fingerprint(run['teacher'])[:12]}… in the saved run, " \
           f"{teacher_fingerprint(run['other'])[:12]}… now" in line
    assert line.endswith("resume with the same options as before, or start a new run folder (another --run-dir)")
    assert _untouched(state, run) == before


def test_a_replaced_teacher_file_is_refused_mid_stage_by_the_state_itself(run, monkeypatch, capsys):
    """The same --teacher path with other weights, and no progress.json to compare with (moved aside): the
    training state's own signature refuses it, before a step trains on the other teacher."""
    state = _stopped_after_the_first_state(run, monkeypatch, capsys)
    before = state.read_bytes()
    shutil.copyfile(run["other"], run["teacher"])
    progress = run["run"] / "progress.json"
    if progress.exists():  # (an earlier PVTT wrote it only when a stage finished)
        progress.rename(run["run"] / "progress.json.aside")
    code, stderr = _exit(run["argv"]("--resume"), capsys)
    line = _one_error_line(stderr)
    assert code == 2
    assert f"training state {state} belongs to a run with other settings: --teacher: weights with SHA-256" in line
    assert "start a new run folder (another --run-dir)" in line
    assert _untouched(state, run) == before


# --- defect 6: another --batch-size, a malformed progress.json, an incomplete state ---------------------------

def test_resume_with_another_batch_size_is_one_line_naming_both_values_then_the_same_options_finish(
        run, monkeypatch, capsys):
    state = _stopped_after_the_first_state(run, monkeypatch, capsys)
    for where in ("progress.json", "state"):
        if where == "state":  # mid-stage, with nothing but the state to compare with
            (run["run"] / "progress.json").unlink()
        code, stderr = _exit(run["argv"]("--batch-size", "2", "--resume"), capsys)
        line = _one_error_line(stderr)
        assert code == 2, where
        assert "belongs to a run with other settings: --batch-size: 1 in the saved run, 2 now; resume with the " \
               "same options as before, or start a new run folder (another --run-dir)" in line, where
        assert (str(state) in line) == (where == "state"), line
    # Mechanics that train nothing differently may change; the refused attempts changed nothing.
    code, stderr = _exit(run["argv"]("--save-every", "3", "--resume"), capsys)
    assert code == 0, stderr
    assert (run["models"] / "pvtt_student_2step.safetensors").exists()
    assert load_state(state_files(run["run"] / STATE)[-1])["g_steps"] == 4


@pytest.mark.parametrize("content, problem", [
    ("{}", "it lacks its signature"),
    ("[]", "it holds a JSON list, not an object"),
    ('{"signature": {}}', "it lacks its list of finished stages"),
    ('{"signature": {}, "stages": [{"name": "student_2step"}]}', "finished stage 1 is incomplete"),
    ('{"signature": {}, "stages": [{"name": "s", "export": "e", "sha256": "x", "gate": {"passed": "yes"}}]}',
     "finished stage 1 is incomplete"),
])
def test_a_malformed_progress_file_is_one_line_saying_how_to_go_on(run, content, problem, capsys):
    run["run"].mkdir()
    progress = run["run"] / "progress.json"
    progress.write_text(content)
    code, stderr = _exit(run["argv"]("--resume"), capsys)
    line = _one_error_line(stderr)
    assert code == 2
    assert f"{progress} is not a progress record PVTT can read ({problem}); to resume from the training states in " \
           f"{run['run'] / 'state'}" in line
    assert "move it aside and run again with --resume; or start a new run folder (another --run-dir)" in line
    assert progress.read_text() == content  # left as it was, for the user to look at
    assert not (run["run"] / "state").exists() and not (run["run"] / "cache").exists()  # nothing ran


def test_an_earlier_pvtt_signature_is_refused_with_a_new_run_folder(run, monkeypatch, capsys):
    """progress.json of the previous format held its signature as one JSON string; it cannot be compared."""
    _stopped_after_the_first_state(run, monkeypatch, capsys)
    progress = run["run"] / "progress.json"
    progress.write_text(json.dumps({"signature": json.dumps({"teacher": "abc"}), "stages": []}))
    code, stderr = _exit(run["argv"]("--resume"), capsys)
    line = _one_error_line(stderr)
    assert code == 2 and "records no settings in the form this PVTT checks" in line
    assert line.endswith("start a new run folder (another --run-dir)")


def _without_one_tensor(path: Path) -> None:
    """Rewrite a state file with its skeleton intact but one tensor it names dropped."""
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    tensors = load_file(str(path))
    del tensors[sorted(tensors)[0]]
    save_file(tensors, str(path), metadata=metadata)


def test_a_state_naming_a_missing_tensor_is_set_aside_and_the_one_before_used(tmp_path):
    folder = tmp_path / "state"
    for step in (2, 4):
        save_state(folder, step, {"student": {"w": torch.full((2,), float(step))}, "g_steps": step})
    newest = folder / "state-00000004.safetensors"
    _without_one_tensor(newest)
    with pytest.raises(CheckpointError, match=r"training state .*state-00000004.safetensors cannot be read \(its "
                                              r"skeleton names a tensor 's.student.w' the file does not hold\)"):
        load_state(newest)
    path, state = load_newest_state(folder)
    assert path.name == "state-00000002.safetensors" and state["g_steps"] == 2
    assert torch.equal(state["student"]["w"], torch.full((2,), 2.0))
    assert sorted(p.name for p in folder.iterdir()) == ["state-00000002.safetensors",
                                                        "state-00000004.safetensors.corrupt"]


def test_a_state_without_what_a_resume_reads_is_set_aside(tmp_path):
    folder = tmp_path / "state"
    save_state(folder, 2, {"g_steps": 2, "student": {}, "critic": {}})
    save_state(folder, 4, {"student": {}})  # no g_steps, no critic
    path, state = load_newest_state(folder, required=("student", "critic", "g_steps"))
    assert path.name == "state-00000002.safetensors"
    assert (folder / "state-00000004.safetensors.corrupt").exists()
    with pytest.raises(CheckpointError, match="cannot be read \\(it lacks critic, g_steps\\)"):
        load_state(folder / "state-00000004.safetensors.corrupt", required=("student", "critic", "g_steps"))


# --- the signature itself ---------------------------------------------------------------------------------------

def _cli_flags() -> set[str]:
    parser = build_parser()
    distill = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["distill"]
    return {option for action in distill._actions for option in action.option_strings}


def test_every_signature_field_is_named_by_a_real_cli_option():
    flags = _cli_flags()
    for field in fields(RunConfig):
        if field.name not in MECHANICS | NOT_FLAGS:
            assert "--" + field.name.replace("_", "-") in flags, field.name
    for label in STAGE_FLAGS.values():
        assert set(label.split("/")) <= flags, label
    stage_fields = {f.name for f in fields(StageConfig)}
    assert set(STAGE_FLAGS) <= stage_fields


def test_signature_differences_name_each_changed_option_and_ignore_mechanics():
    stages, run = build_stages((4, 2), 6), RunConfig(batch_size=1)
    base = run_signature(stages, run, "a" * 64, 1)
    assert signature_differences(base, run_signature(stages, replace(run, save_every=7, keep_states=5, force=True,
                                                                      log_every=1), "a" * 64, 1)) == []
    changed = run_signature([replace(s, generator_steps=8) for s in stages],
                            replace(run, mixed_precision="bf16", gradient_checkpointing=True), "b" * 64, 2)
    assert signature_differences(base, changed) == [
        f"--teacher: weights with SHA-256 {'a' * 12}… in the saved run, {'b' * 12}… now (another teacher file, or "
        f"the file was changed)",
        "processes: 1 in the saved run, 2 now (launch as many as before)",
        "--gradient-checkpointing: off in the saved run, on now",
        "--mixed-precision: no in the saved run, bf16 now",
        "--generator-steps: 6,6 in the saved run, 8,8 now",
    ]
    assert signature_differences(base, run_signature(build_stages((8, 4), 6), run, "a" * 64, 1)) == [
        "--path: 4,2 in the saved run, 8,4 now"]


def test_a_stage_gate_is_a_mechanic_also_against_a_signature_saved_with_it():
    """A gate decides whether a run goes on, not what it trains: a run folder whose saved signature still holds the
    stages' gates (PVTT before they left it) resumes under other gates, and a changed option is still named."""
    stages, run = build_stages((4, 2), 6), RunConfig(batch_size=1)
    now = run_signature(stages, run, "a" * 64, 1)
    assert all("gate" not in s for s in now["stages"])
    saved = json.loads(json.dumps(now))
    for stage in saved["stages"]:
        stage["gate"] = {"reference": "teacher", "ratio": 1.10, "min_background_psnr": None}
    assert signature_differences(saved, now) == []
    assert signature_differences(saved, run_signature([replace(s, generator_steps=8) for s in stages], run,
                                                      "a" * 64, 1)) == [
        "--generator-steps: 6,6 in the saved run, 8,8 now"]
    assert run_signature([replace(s, gate=GateConfig("teacher", 2.0)) for s in stages], run, "a" * 64, 1) == now


def test_teacher_fingerprint_of_a_folder_follows_its_weights_and_configs_only(tmp_path):
    folder = tmp_path / "wan"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "WanVACEPipeline"}')
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    save_file({"w": torch.zeros(3)}, str(weights))
    first = teacher_fingerprint(folder)
    assert len(first) == 64
    (folder / "README.md").write_text("notes")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.json").write_text("{}")
    assert teacher_fingerprint(folder) == first
    save_file({"w": torch.ones(3)}, str(weights))  # same size, other weights
    assert teacher_fingerprint(folder) != first
    file = micro_teacher(tmp_path / "t.safetensors")
    import hashlib

    assert teacher_fingerprint(file) == hashlib.sha256(file.read_bytes()).hexdigest()
