"""`distill --teacher-shift / --guide-model`: a run distils the teacher as it samples it (shifted, autoguided),
in the regression targets, the gates' reference and the real score, and a resume cannot change it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from _tiny import micro_encoders, micro_teacher
from safetensors.torch import load_file

from pvtt_train.data.batches import make_batch, training_data_config
from pvtt_train.data.dataset import condition_of
from pvtt_train.distill.config import RunConfig, build_stages
from pvtt_train.distill.gates import GateEvaluator
from pvtt_train.distill.progressive import run_progressive
from pvtt_train.data.synthetic import SyntheticConfig, SyntheticVideoGenerator
from pvtt_train.distill.regression import ode_grid, teacher_trajectory
from pvtt_train.distill.trainer import frozen_real_score
from pvtt_train.errors import CheckpointError
from pvtt_train.models.checkpoint import load_checkpoint, read_metadata
from pvtt_train.models.schedule import FlowSchedule
from pvtt_train.sampling.autoguidance import AutoGuided

SHIFT, WEIGHT = 5.0, 3.0


def _run(folder, **kw) -> RunConfig:
    identity, video = micro_encoders(folder)
    return replace(RunConfig(batch_size=1, regression_pool=2, eval_clips=4, save_every=2, force=True,
                             identity_encoder=str(identity), video_encoder=str(video)), **kw)


def _stages():
    return [replace(s, critic_ratio=2) for s in build_stages((2,), 1)]


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory):
    """A teacher, its guide, and a one-stage run that samples the teacher at shift 5, autoguided at weight 3."""
    folder = tmp_path_factory.mktemp("guided_run")
    teacher = micro_teacher(folder / "teacher.safetensors", seed=0, steps=4, cfg=1.0)
    guide = micro_teacher(folder / "guide.safetensors", seed=1, steps=4, cfg=1.0)
    run = _run(folder, teacher_shift=SHIFT, guide_weight=WEIGHT)
    result = run_progressive(teacher, _stages(), run, folder / "run", folder / "models", progress=False,
                             guide_path=guide)
    return folder, teacher, guide, run, result


def _independent_sample(teacher_path, guide_path):
    """The shifted, autoguided teacher built by hand: its networks, its metadata with the shift written in."""
    teacher, guide = load_checkpoint(teacher_path), load_checkpoint(guide_path)
    meta = {**teacher.metadata, "schedule": {**teacher.metadata["schedule"], "shift": SHIFT}}
    return replace(teacher, model=AutoGuided(teacher.model, guide.model, WEIGHT), metadata=meta)


def test_the_gates_reference_is_the_teacher_as_the_run_samples_it(guided_run):
    folder, teacher, guide, run, result = guided_run
    evaluator = GateEvaluator(training_data_config(load_checkpoint(teacher)), run.eval_clips, run.video_encoder)
    expected = evaluator.score(_independent_sample(teacher, guide), "teacher")
    plain = evaluator.score(load_checkpoint(teacher), "plain")
    assert result["teacher"]["frechet_distance"] == pytest.approx(expected["frechet_distance"], rel=1e-6)
    assert result["teacher"]["product_psnr"] == pytest.approx(expected["product_psnr"], rel=1e-6)
    assert abs(plain["product_psnr"] - expected["product_psnr"]) > 1e-3  # the sampling shows in the scores


def test_the_regression_targets_are_the_shifted_autoguided_teachers_trajectories(guided_run):
    folder, teacher, guide, run, _ = guided_run
    (cache,) = (folder / "run" / "cache").glob("trajectories-*")
    saved = load_file(str(cache / "chunk-0000.safetensors"))
    sampled = _independent_sample(teacher, guide)
    student_sigmas = FlowSchedule(shift=1.0).student_sigmas(_stages()[0].timesteps)
    shifted = FlowSchedule(shift=SHIFT).euler_scheduler()
    shifted.set_timesteps(4)
    grid = ode_grid([float(s) for s in shifted.sigmas], sorted(student_sigmas, reverse=True))
    data = training_data_config(sampled)
    seeds = [int(s) for s in saved["seeds"]]
    cond = condition_of(sampled.model, make_batch(SyntheticVideoGenerator(data), seeds), data)
    states, x0 = teacher_trajectory(sampled.model, cond, grid, len(student_sigmas), 1.0,
                                    torch.Generator().manual_seed(seeds[0]))
    torch.testing.assert_close(saved["x0"], x0)
    torch.testing.assert_close(saved["states"], states)
    plain = load_checkpoint(teacher)
    _, plain_x0 = teacher_trajectory(plain.model, cond, ode_grid([float(s) for s in plain.schedule.euler_scheduler(
    ).sigmas], sorted(student_sigmas, reverse=True)), len(student_sigmas), 1.0,
        torch.Generator().manual_seed(seeds[0]))
    assert (plain_x0 - x0).abs().max() > 1e-3


def test_the_real_score_is_the_guided_teacher_frozen_whole(guided_run):
    folder, teacher, guide, _, _ = guided_run
    sampled = _independent_sample(teacher, guide)
    real = frozen_real_score(sampled.model, "cpu", None, None)
    assert isinstance(real, AutoGuided) and real.weight == WEIGHT
    assert not any(p.requires_grad for m in (real.model, real.guide) for p in m.parameters())
    data = training_data_config(sampled)
    cond = condition_of(sampled.model, make_batch(SyntheticVideoGenerator(data), [3]), data)
    x = torch.randn(cond.background.shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.6])
    with torch.no_grad():
        v_t = load_checkpoint(teacher).model.velocity(x, sigma, cond)
        v_g = load_checkpoint(guide).model.velocity(x, sigma, cond)
        torch.testing.assert_close(real.velocity(x, sigma, cond), v_g + WEIGHT * (v_t - v_g))


def test_the_student_records_how_its_teacher_was_sampled_and_holds_the_guide(guided_run):
    folder, _, guide, _, _ = guided_run
    meta = read_metadata(folder / "models" / "pvtt_student_2step.safetensors")
    recorded = meta["provenance"]["teacher_sampling"]
    assert recorded["shift"] == SHIFT and recorded["guide"] == "guide.safetensors"
    assert recorded["guide_weight"] == WEIGHT and len(recorded["guide_sha256"]) == 64
    resident = meta["provenance"]["resident_bytes"]
    assert resident["guide"] == resident["teacher"] > 0  # a second frozen copy of the same size
    assert meta["schedule"]["shift"] == 1.0  # the student keeps its own schedule (--shift)


def test_a_plain_run_keeps_its_old_cache_keys_and_records_no_sampling(tmp_path):
    teacher = micro_teacher(tmp_path / "teacher.safetensors", steps=4, cfg=1.0)
    run_progressive(teacher, _stages(), _run(tmp_path), tmp_path / "run", tmp_path / "models", progress=False)
    meta = read_metadata(tmp_path / "models" / "pvtt_student_2step.safetensors")
    assert "teacher_sampling" not in meta["provenance"] and "guide" not in meta["provenance"]["resident_bytes"]
    (key,) = (tmp_path / "run" / "cache").glob("trajectories-*/key.json")
    assert "sampling" not in key.read_text()


@pytest.mark.parametrize("change, named", [
    ({"guide_weight": 2.0}, "--guide-weight: 3.0 in the saved run, 2.0 now"),
    ({"teacher_shift": 3.0}, "--teacher-shift: 5.0 in the saved run, 3.0 now"),
    ({"guide": None, "guide_weight": None}, "--guide-model: "),
])
def test_a_resume_that_samples_the_teacher_otherwise_is_refused_naming_the_option(guided_run, change, named):
    folder, teacher, guide, run, _ = guided_run
    change = dict(change)
    guide_path = change.pop("guide", guide)
    with pytest.raises(CheckpointError, match="belongs to a run with other settings: .*" + named):
        run_progressive(teacher, _stages(), replace(run, **change), folder / "run", folder / "models", resume=True,
                        progress=False, guide_path=guide_path)


def test_the_undistilled_baseline_runs_the_students_sampler_at_their_shift(tmp_path):
    from pvtt_train.distill.report import teacher_as_few_step
    from pvtt_train.sampling.flow_shift import sampled_at_shift

    teacher = micro_teacher(tmp_path / "teacher.safetensors", steps=4, cfg=1.0)
    stages = [replace(s, shift=SHIFT) for s in _stages()]  # distill --shift 5: the students sample shifted
    run = _run(tmp_path)
    result = run_progressive(teacher, stages, run, tmp_path / "run", tmp_path / "models", progress=False)
    loaded = load_checkpoint(teacher)
    evaluator = GateEvaluator(training_data_config(loaded), run.eval_clips, run.video_encoder)
    shifted = evaluator.score(teacher_as_few_step(sampled_at_shift(loaded, SHIFT), stages[-1].timesteps), "shifted")
    unshifted = evaluator.score(teacher_as_few_step(loaded, stages[-1].timesteps), "unshifted")
    assert result["undistilled"]["frechet_distance"] == pytest.approx(shifted["frechet_distance"], rel=1e-6)
    assert result["undistilled"]["frechet_distance"] != pytest.approx(unshifted["frechet_distance"], rel=1e-3)


def test_a_guide_of_another_recipe_is_refused_before_the_run_trains(tmp_path):
    teacher = micro_teacher(tmp_path / "teacher.safetensors", steps=4)
    other = micro_teacher(tmp_path / "other.safetensors", steps=4, data=SyntheticConfig(frames=5))
    with pytest.raises(CheckpointError, match="--guide-model other.safetensors: its video .* is not the teacher's"):
        run_progressive(teacher, _stages(), _run(tmp_path, guide_weight=2.0), tmp_path / "run", tmp_path / "models",
                        progress=False, guide_path=other)
    assert not (tmp_path / "run" / "progress.json").exists()  # refused before the run recorded itself


def test_the_cli_reports_the_students_against_the_autoguided_teacher(guided_run, tmp_path, monkeypatch):
    import json

    from pvtt_train.__main__ import main

    folder, teacher, guide, run, _ = guided_run
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "distill", "--teacher", str(teacher), "--guide-model", str(guide),
                     "--guide-weight", str(WEIGHT), "--teacher-shift", str(SHIFT), "--path", "2",
                     "--generator-steps", "1", "--critic-ratio", "2", "--batch-size", "1", "--regression-pool", "2",
                     "--eval-clips", "4", "--report-clips", "2", "--identity-encoder", run.identity_encoder,
                     "--video-encoder", run.video_encoder, "--force", "--run-dir", "run", "--models-dir",
                     "models"]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["model_calls_per_clip"]["teacher"] == 2 * 4  # 4 Euler steps, each the teacher's and the guide's
    assert report["model_calls_per_clip"]["student"] == 2
    recorded = read_metadata(tmp_path / "models" / "pvtt_student_2step.safetensors")["provenance"]["teacher_sampling"]
    assert (recorded["shift"], recorded["guide_weight"]) == (SHIFT, WEIGHT)
    table = (tmp_path / "run" / "report.md").read_text()
    assert "sample the teacher at flow shift 5, autoguided by guide.safetensors at weight 3" in table
    assert "| teacher (Euler 4) | 4 | 8 |" in table  # its own sampler, not an assumed "50-step, CFG"
    assert report["model_calls_per_clip"]["teacher_undistilled"] == 2  # plain weights, the students' sampler


def test_a_wan_guide_must_share_the_teachers_vae(tmp_path):
    import shutil

    from _wan_fixtures import make_wan_vace_folder

    from pvtt_train.distill.teacher_sampling import teacher_sampling
    from pvtt_train.models.loading import load_model

    teacher = load_model(make_wan_vace_folder(tmp_path / "teacher", seed=0))
    foreign = make_wan_vace_folder(tmp_path / "foreign", seed=1)  # its own transformer and its own VAE
    with pytest.raises(CheckpointError, match="--guide-model foreign: its VAE .* is not the teacher's"):
        teacher_sampling(teacher, 3.0, foreign, 2.0)
    shutil.rmtree(foreign / "vae")
    shutil.copytree(tmp_path / "teacher" / "vae", foreign / "vae")  # an earlier transformer, the teacher's VAE
    sampling = teacher_sampling(teacher, 3.0, foreign, 2.0)
    assert sampling.guide is not None and sampling.record()["guide"] == "foreign"
