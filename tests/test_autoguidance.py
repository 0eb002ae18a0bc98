"""Autoguidance: the teacher pushed away from a weaker copy of itself, in every sampler and in ``sampler-eval``."""

from __future__ import annotations

import json

import pytest
import torch

from pvtt_train.data.batches import make_batch, training_data_config
from pvtt_train.data.synthetic import SyntheticConfig, SyntheticVideoGenerator
from pvtt_train.distill.gates import GateEvaluator
from pvtt_train.errors import CheckpointError
from pvtt_train.eval.sampler_eval import undistilled_variants
from pvtt_train.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from pvtt_train.sampling.autoguidance import autoguided, check_guide
from pvtt_train.sampling.samplers import sample_from_metadata
from tests._tiny import MICRO_BACKBONE, micro_encoders, micro_teacher


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A micro teacher, a guide of the same recipe with other weights, and one condition of their data."""
    folder = tmp_path_factory.mktemp("autoguidance")
    teacher = load_checkpoint(micro_teacher(folder / "teacher.safetensors", seed=0, steps=3, cfg=1.5))
    guide = load_checkpoint(micro_teacher(folder / "guide.safetensors", seed=1, steps=3, cfg=1.5))
    batch = make_batch(SyntheticVideoGenerator(training_data_config(teacher)), range(2))
    cond = teacher.model.condition(batch["template"], batch["mask"], batch["reference"])
    return folder, teacher, guide, cond


def test_each_call_is_the_guides_velocity_pushed_towards_the_teachers_by_the_weight(pair):
    _, teacher, guide, cond = pair
    x, sigma = torch.randn_like(cond.background), torch.full((2,), 0.6)
    with torch.no_grad():
        v_teacher, v_guide = teacher.model.velocity(x, sigma, cond), guide.model.velocity(x, sigma, cond)
        v = autoguided(teacher, guide, 2.5).model.velocity(x, sigma, cond)
    assert (v_teacher - v_guide).abs().max() > 1e-3  # the two models differ, so the weight shows
    torch.testing.assert_close(v, v_guide + 2.5 * (v_teacher - v_guide))


@pytest.mark.parametrize("sampler", [
    {"kind": "euler_cfg", "steps": 3, "cfg": 1.5},
    {"kind": "euler_cfg", "steps": 3, "cfg": 1.0, "eta": 1.0},
    {"kind": "few_step", "steps": 2, "timesteps": [1000, 500]},
])
def test_every_sampler_draws_the_teachers_own_sample_when_the_guide_is_the_teacher(pair, sampler):
    _, teacher, guide, cond = pair
    meta = {**teacher.metadata, "sampler": sampler}

    def sample(model):
        return sample_from_metadata(model, cond, meta, generator=torch.Generator().manual_seed(3))

    plain = sample(teacher.model)
    torch.testing.assert_close(sample(autoguided(teacher, teacher, 2.0).model), plain)
    assert (sample(autoguided(teacher, guide, 2.0).model) - plain).abs().max() > 1e-3


def test_the_guided_teacher_keeps_its_own_conditioning_and_decoder_and_is_left_unchanged(pair):
    _, teacher, guide, _ = pair
    guided = autoguided(teacher, guide, 2.0)
    assert guided.model.decode == teacher.model.decode and guided.metadata == teacher.metadata
    assert teacher.model.__class__.__name__ == "WanConcatPVTT"  # the teacher itself is not wrapped


def test_a_smaller_guide_of_the_same_recipe_is_accepted(pair, tmp_path):
    _, teacher, _, _ = pair
    from pvtt_train.models.pvtt_model import WanConcatPVTT

    small = save_checkpoint(tmp_path / "small.safetensors", WanConcatPVTT({**MICRO_BACKBONE, "ffn_dim": 16}),
                            teacher.metadata)
    check_guide(teacher.metadata, read_metadata(small, "a guide"), "small.safetensors")


@pytest.mark.parametrize(("field", "change"), [
    ("schedule", {"schedule": {"shift": 3.0, "num_train_timesteps": 1000}}),
    ("video", {"video": {"frames": 9, "height": 32, "width": 32}}),
    ("provenance.data specular", {"provenance": {"trainer": "tests",
                                                 "data": SyntheticConfig(specular=0.5).to_dict()}}),
])
def test_a_guide_of_another_recipe_is_refused_naming_what_differs(pair, field, change):
    _, teacher, _, _ = pair
    with pytest.raises(CheckpointError, match=f"its {field} .* is not the teacher's.*lower --max-steps"):
        check_guide(teacher.metadata, {**teacher.metadata, **change}, "g.safetensors")


def test_a_guide_that_records_fewer_data_fields_reads_them_as_their_defaults(pair):
    _, teacher, _, _ = pair
    older = {k: v for k, v in teacher.metadata["provenance"]["data"].items() if k not in ("grain", "sheen")}
    check_guide(teacher.metadata, {**teacher.metadata, "provenance": {"data": older}}, "older.safetensors")


def test_autoguided_variants_come_first_and_the_plain_ones_follow_unchanged(pair):
    _, teacher, guide, _ = pair
    variants = undistilled_variants(teacher, (2,), guide=guide, guide_weight=2.0)
    assert [(name, sampler, steps) for name, sampler, steps, _ in variants] == [
        ("teacher Euler 3, autoguided x2", "euler", 3), ("teacher Euler 2, autoguided x2", "euler", 2),
        ("teacher few-step 2, autoguided x2", "few_step", 2),
        ("teacher Euler 3", "euler", 3), ("teacher Euler 2", "euler", 2), ("teacher few-step 2", "few_step", 2)]
    assert all(v[3].model.guide is guide.model for v in variants[:3])
    assert all(v[3].model is teacher.model for v in variants[3:])


def test_the_command_scores_the_autoguided_teacher_as_the_reference(tmp_path, capsys):
    from pvtt_train.__main__ import main

    teacher_path = micro_teacher(tmp_path / "teacher.safetensors", seed=0, steps=3)
    guide_path = micro_teacher(tmp_path / "guide.safetensors", seed=1, steps=3)
    _, video_encoder = micro_encoders(tmp_path)
    main(["--threads", "1", "sampler-eval", "--teacher", str(teacher_path), "--guide-model", str(guide_path),
          "--guide-weight", "1.5", "--steps", "2", "--clips", "2", "--video-encoder", str(video_encoder),
          "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows)[0] == "teacher Euler 3, autoguided x1.5" and rows["teacher Euler 3, autoguided x1.5"]["kind"] \
        == "teacher" and rows["teacher Euler 3"]["kind"] == "undistilled"
    assert report["guide"] == {"model": str(guide_path), "weight": 1.5}
    # scored as the gates score: a fresh evaluator gives the autoguided teacher the same distance
    teacher, guide = load_checkpoint(teacher_path), load_checkpoint(guide_path)
    fresh = GateEvaluator(training_data_config(teacher), 2, str(video_encoder), cache_dir=None)
    guided_fd = fresh.score(autoguided(teacher, guide, 1.5), "guided")["frechet_distance"]
    plain_fd = fresh.score(teacher, "plain")["frechet_distance"]
    assert rows["teacher Euler 3, autoguided x1.5"]["scores"]["frechet_distance"] == pytest.approx(guided_fd, rel=1e-6)
    assert rows["teacher Euler 3"]["scores"]["frechet_distance"] == pytest.approx(plain_fd, rel=1e-6)
    assert (fresh.videos["guided"] - fresh.videos["plain"]).abs().max() > 1e-3
    assert "Autoguided rows: every model call is v_guide + 1.5 (v_teacher - v_guide), the guide guide.safetensors" \
        in capsys.readouterr().out


def test_an_autoguided_sample_counts_twice_the_model_calls(pair):
    from pvtt_train.eval.evaluate import generate

    _, teacher, guide, _ = pair
    batch = make_batch(SyntheticVideoGenerator(training_data_config(teacher)), range(1))
    plain, guided = generate(teacher, batch, 0), generate(autoguided(teacher, guide, 2.0), batch, 0)
    assert plain.model_calls == 3 * 2  # 3 Euler steps under CFG 1.5
    assert guided.model_calls == 2 * plain.model_calls
