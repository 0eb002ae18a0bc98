"""The ground-truth loss (``distill/truth.py``): off unless weighted, in every stage when it is, and a student
trained by it moves towards the clips' truth; a run saved before it existed still resumes."""

import json

import pytest
import torch
from _tiny import load_micro_teacher

from pvtt_train.data.batches import heldout_batch
from pvtt_train.data.dataset import condition_of, target_latents
from pvtt_train.data.synthetic import SyntheticConfig
from pvtt_train.distill.config import DEFAULT_WEIGHTS, RunConfig, StageConfig, build_stages
from pvtt_train.distill.progressive import make_accelerator
from pvtt_train.distill.signature import run_signature, signature_differences
from pvtt_train.distill.trainer import StageInputs, train_stage
from pvtt_train.distill.truth import truth_loss
from pvtt_train.sampling.samplers import student_rollout


def test_truth_loss_is_the_x0_mse_against_the_target():
    x0, target = torch.zeros(2, 3, 4), torch.full((2, 3, 4), 0.5)
    assert truth_loss(x0, target).item() == pytest.approx(0.25)
    assert truth_loss(target, target).item() == 0.0


def test_a_region_weighted_truth_loss_weighs_the_interior_most_and_keeps_the_mse_scale():
    region = torch.zeros(1, 1, 1, 5, 5)
    region[..., 1:4, 1:4] = 1  # a 3x3 region: its interior is the centre pixel
    x0, target = torch.zeros(1, 3, 1, 5, 5), torch.zeros(1, 3, 1, 5, 5)
    assert truth_loss(x0, target + 1, region, (4.0, 36.0)).item() == pytest.approx(1.0)  # the same error everywhere
    centre, corner = x0.clone(), x0.clone()
    centre[..., 2, 2], corner[..., 0, 0] = 1.0, 1.0
    # weights: 1 outside (16 pixels), 4 on the region's edge (8), 4 + 36 at the centre: 88 in all
    assert truth_loss(centre, target, region, (4.0, 36.0)).item() == pytest.approx(40 / 88)
    assert truth_loss(corner, target, region, (4.0, 36.0)).item() == pytest.approx(1 / 88)
    assert truth_loss(centre, target, region).item() == truth_loss(corner, target, region).item() == \
        pytest.approx(1 / 25)  # the default: every pixel alike


def test_truth_region_reaches_every_stage_and_an_old_run_resumes_only_at_its_default(capsys):
    from pvtt_train.__main__ import _progressive_from_args, build_parser, main

    parser = build_parser()
    flags = ["distill", "--path", "8,4", "--generator-steps", "2", "--weight", "truth=1"]
    stages, run = _progressive_from_args(parser.parse_args([*flags, "--truth-region", "4,36"]))
    assert all(s.truth_region == (4.0, 36.0) for s in stages)
    plain = _progressive_from_args(parser.parse_args(flags))[0]
    saved = json.loads(json.dumps(run_signature(plain, run, "sha", 1)))
    assert all("truth_region" not in s for s in saved["stages"])  # as PVTT wrote it before the option existed
    assert signature_differences(saved, run_signature(plain, run, "sha", 1)) == []
    assert any(d.startswith("--truth-region:") for d in signature_differences(saved, run_signature(stages, run,
                                                                                                   "sha", 1)))
    for bad in ("0,36", "4", "4,-1", "a,b"):
        with pytest.raises(SystemExit):
            main(["distill", "--truth-region", bad])
        assert "write MASK,INTERIOR" in capsys.readouterr().err


def test_the_truth_region_stays_out_of_the_signature_while_the_truth_loss_is_off():
    """The region weighs nothing without the truth loss, so a run saved with it off resumes under any region."""
    from pvtt_train.__main__ import _progressive_from_args, build_parser

    parser = build_parser()
    flags = ["distill", "--path", "8,4", "--generator-steps", "2"]
    plain, run = _progressive_from_args(parser.parse_args(flags))
    weighed = _progressive_from_args(parser.parse_args([*flags, "--truth-region", "4,36"]))[0]
    saved = json.loads(json.dumps(run_signature(plain, run, "sha", 1)))
    assert signature_differences(saved, run_signature(weighed, run, "sha", 1)) == []
    on = _progressive_from_args(parser.parse_args([*flags, "--truth-region", "4,36", "--weight", "truth=1"]))[0]
    assert any(d.startswith("--truth-region:") for d in signature_differences(saved, run_signature(on, run, "sha", 1)))


def test_the_truth_loss_is_off_by_default_and_joins_every_stage_when_weighted():
    assert all("truth" not in s.losses for s in build_stages("default"))
    stages = build_stages("default", weights={**DEFAULT_WEIGHTS, "truth": (2.0, 0)})
    assert all("truth" in s.losses for s in stages)
    assert stages[-1].weight("truth", 0) == 2.0


def test_a_run_saved_before_the_truth_loss_existed_resumes_with_it_off_and_not_with_it_on():
    run = RunConfig()
    now = run_signature(build_stages((8, 4)), run, "sha", 1)
    saved = json.loads(json.dumps(now))
    for stage in saved["stages"]:
        assert "truth" not in stage["weights"]  # as an earlier PVTT wrote it
    assert signature_differences(saved, now) == []
    on = run_signature(build_stages((8, 4), weights={**DEFAULT_WEIGHTS, "truth": (1.0, 0)}), run, "sha", 1)
    diffs = signature_differences(saved, on)
    assert any(d.startswith("--weight:") for d in diffs) and any(d.startswith("--adversarial/--perceptual/--weight")
                                                                 for d in diffs)


def _distance_to_truth(model, batch, schedule, sigmas) -> float:
    with torch.no_grad():
        cond = condition_of(model, batch, SyntheticConfig())
        x0 = student_rollout(model, cond, schedule, sigmas, len(sigmas) - 1, torch.Generator().manual_seed(0))
        return truth_loss(x0, target_latents(model, batch)).item()


def test_a_stage_trained_by_the_truth_loss_moves_the_students_samples_towards_the_truth(tmp_path):
    teacher = load_micro_teacher(tmp_path, steps=4)
    stage = StageConfig(name="s", timesteps=(1000, 500), generator_steps=10, critic_ratio=1, lr_student=2e-3,
                        losses=("dmd", "truth"), weights={**DEFAULT_WEIGHTS, "dmd": (1e-4, 0), "truth": (1.0, 0)})
    inputs = StageInputs(teacher=teacher, real=teacher.model, real_cfg=1.5, student_init=teacher.model,
                         critic_init=teacher.model, data=SyntheticConfig(), trajectories=None, identity=None)
    run = RunConfig(batch_size=2, log_every=1, ema_decay=0)
    result = train_stage(make_accelerator(run, tmp_path, trackers=False), inputs, stage, run, None, False,
                         tmp_path / "log.jsonl", progress=False)
    row = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert row["weighted_truth"] == pytest.approx(row["loss_truth"]) and row["loss_truth"] > 0

    batch = heldout_batch(SyntheticConfig(), 2)
    sigmas = teacher.schedule.student_sigmas(stage.timesteps)
    before = _distance_to_truth(teacher.model, batch, teacher.schedule, sigmas)
    after = _distance_to_truth(result.student, batch, teacher.schedule, sigmas)
    assert after < 0.8 * before, (before, after)


def test_a_dataset_without_targets_names_both_losses_that_need_them():
    from pvtt_train.errors import InputError

    with pytest.raises(InputError, match="--adversarial and --weight truth"):
        target_latents(None, {"features": torch.zeros(1)})
