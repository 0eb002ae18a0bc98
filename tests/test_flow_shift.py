"""A teacher sampled under another flow shift: its samplers' steps move, its weights and the students do not."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from pvtt_train.data.batches import make_batch, training_data_config
from pvtt_train.data.synthetic import SyntheticVideoGenerator
from pvtt_train.distill.gates import GateEvaluator
from pvtt_train.distill.report import teacher_as_few_step
from pvtt_train.eval.sampler_eval import run_sampler_eval
from pvtt_train.models.checkpoint import load_checkpoint
from pvtt_train.models.schedule import uniform_timesteps
from pvtt_train.sampling.flow_shift import sampled_at_shift
from pvtt_train.sampling.samplers import sample_from_metadata
from tests._tiny import micro_encoders, micro_teacher


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return load_checkpoint(micro_teacher(tmp_path_factory.mktemp("shift") / "teacher.safetensors", steps=4, cfg=1.0))


def sigmas_called(model, sampler: dict) -> list[float]:
    """The sigma of every model call of one sample drawn by ``model``'s schedule with ``sampler``."""
    batch = make_batch(SyntheticVideoGenerator(training_data_config(model)), range(1))
    cond = model.model.condition(batch["template"], batch["mask"], batch["reference"])
    called, velocity = [], model.model.velocity

    def record(x, sigma, *args, **kwargs):
        called.append(float(torch.as_tensor(sigma).flatten()[0]))
        return velocity(x, sigma, *args, **kwargs)

    model.model.velocity = record
    try:
        sample_from_metadata(model.model, cond, {**model.metadata, "sampler": sampler},
                             generator=torch.Generator().manual_seed(0))
    finally:
        del model.model.velocity
    return called


def test_euler_calls_the_model_at_evenly_spaced_sigmas_warped_by_the_shift(teacher):
    euler = {"kind": "euler_cfg", "steps": 4, "cfg": 1.0}
    plain, shifted = sigmas_called(teacher, euler), sigmas_called(sampled_at_shift(teacher, 5.0), euler)
    assert len(plain) == len(shifted) == 4 and shifted[0] == pytest.approx(1.0)
    unwarped = [s / (5 - 4 * s) for s in shifted]  # the inverse of s' = 5 s / (1 + 4 s)
    assert torch.diff(torch.tensor(unwarped)).tolist() == pytest.approx([unwarped[1] - unwarped[0]] * 3, abs=1e-5)
    assert all(s >= p for s, p in zip(shifted, plain))
    assert sum(s < 0.5 for s in shifted) < sum(s < 0.5 for s in plain)  # fewer steps at low noise


def test_the_few_step_sampler_moves_its_sigmas_by_the_shift_too(teacher):
    few_step = {"kind": "few_step", "steps": 2, "timesteps": [1000, 500]}
    assert sigmas_called(sampled_at_shift(teacher, 5.0), few_step) == pytest.approx([1.0, 2.5 / 3], abs=1e-5)
    assert sigmas_called(teacher, few_step) == pytest.approx([1.0, 0.5], abs=1e-5)


def test_the_teacher_itself_is_left_unchanged_and_shares_its_weights(teacher):
    shifted = sampled_at_shift(teacher, 3.0)
    assert teacher.schedule.shift == 1.0 and shifted.schedule.shift == 3.0 and shifted.model is teacher.model


def test_a_shift_that_is_not_positive_is_refused(teacher):
    with pytest.raises(ValueError, match="positive"):
        sampled_at_shift(teacher, 0.0)


def test_sampler_eval_shifts_every_undistilled_row_and_leaves_the_student_at_its_own(teacher, tmp_path):
    _, video_encoder = micro_encoders(tmp_path)
    student = dataclasses.replace(teacher_as_few_step(teacher, uniform_timesteps(1)),
                                  path=tmp_path / "student_1step.safetensors")
    report = run_sampler_eval(teacher, [student], clips=2, step_counts=(2,), video_encoder=str(video_encoder),
                              oracle_draws=0, shift=5.0, log=lambda _: None)
    rows = {r["name"]: r["scores"]["frechet_distance"] for r in report["rows"]}
    assert report["shift"] == {"teacher": 1.0, "sampled": 5.0}
    fresh = GateEvaluator(training_data_config(teacher), 2, str(video_encoder), cache_dir=None)
    shifted = sampled_at_shift(teacher, 5.0)
    assert rows["teacher Euler 4"] == pytest.approx(fresh.score(shifted, "e4")["frechet_distance"], rel=1e-6)
    assert rows["teacher few-step 2"] == pytest.approx(
        fresh.score(teacher_as_few_step(shifted, uniform_timesteps(2)), "f2")["frechet_distance"], rel=1e-6)
    assert rows["student_1step"] == pytest.approx(fresh.score(student, "s")["frechet_distance"], rel=1e-6)
    fresh.score(teacher, "plain")
    assert (fresh.videos["e4"] - fresh.videos["plain"]).abs().max() > 1e-3  # the shift did move the sample


def test_the_command_records_the_shift_it_sampled_at(tmp_path, capsys):
    from pvtt_train.__main__ import main

    teacher_path = micro_teacher(tmp_path / "teacher.safetensors", steps=2, cfg=1.0)
    _, video_encoder = micro_encoders(tmp_path)
    main(["--threads", "1", "sampler-eval", "--teacher", str(teacher_path), "--shift", "5", "--steps", "1",
          "--clips", "2", "--video-encoder", str(video_encoder), "--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "report.json").read_text())["shift"] == {"teacher": 1.0, "sampled": 5.0}
    assert "Undistilled rows sampled at flow shift 5 (the teacher's schedule: 1)" in capsys.readouterr().out
