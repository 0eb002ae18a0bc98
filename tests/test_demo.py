"""The demo end to end on a reduced budget, with the shipped teacher, guide and encoders."""

import json

import pytest

from pvtt_train.__main__ import main
from pvtt_train.models.checkpoint import read_metadata
from pvtt_train.paths import SHIPPED_RESIDUAL_GUIDE, SHIPPED_RESIDUAL_TEACHER, SHIPPED_TEACHER

pytestmark = pytest.mark.skipif(not all(p.exists() for p in (SHIPPED_TEACHER, SHIPPED_RESIDUAL_TEACHER,
                                                             SHIPPED_RESIDUAL_GUIDE)),
                                reason=f"shipped teachers missing in {SHIPPED_TEACHER.parent}")

METRICS = {"product_psnr", "product_ssim", "background_psnr_raw", "background_psnr_composited", "warp_error"}
GUIDED = f"Euler 50, flow shift 5, autoguided by {SHIPPED_RESIDUAL_GUIDE.name} at weight 2"


def test_demo_runs_the_progressive_path_and_reports_every_stage(tmp_path, capsys):
    out, models = tmp_path / "demo", tmp_path / "models" / "pvtt"
    main(["demo", "--out", str(out), "--models-dir", str(models), "--clips", "2", "--generator-steps", "1",
          "--eval-clips", "4", "--regression-pool", "4", "--force", "--heldout-clips", "1"])
    report = json.loads((out / "report.json").read_text())
    assert [s["steps"] for s in report["stages"]] == [16, 8, 4]
    for side in ("teacher", "student", "teacher_undistilled"):
        assert set(report[side]) == METRICS
        assert 5 < report[side]["product_psnr"] < 100
    calls = report["model_calls_per_clip"]
    assert calls["teacher"] == 100 and calls["student"] == 4 and calls["student_16step"] == 16
    for stage in report["stages"]:
        assert set(stage["metrics"]) == METRICS
        assert stage["speedup"] == pytest.approx(report["seconds"]["teacher"] / stage["seconds"])
        assert stage["gate"]["checks"] and stage["gate_scores"]["frechet_distance"] >= 0
        retention = stage["quality_retention"]
        assert retention["min"] == min(v for k, v in retention.items() if k != "min")
        assert read_metadata(models / f"pvtt_student_{stage['steps']}step.safetensors")["sampler"]["steps"] == \
            stage["steps"]
    # 100 model calls (50 steps x teacher and guide) against 4: even with overheads the 4-step student is far faster.
    assert report["stages"][-1]["speedup"] > 5
    assert report["stages"][-1]["speedup"] > 2 * report["stages"][0]["speedup"]  # 4 calls against 16
    for name in ("grid.png", "quality_speed.png", "run/student_8step_strip.png"):
        assert (out / name).stat().st_size > 1000, name
    table = (out / "report.md").read_text()
    assert "| student_4step | 4 |" in table and "| teacher (Euler 50) | 50 | 100 |" in table
    assert f"sample the teacher at flow shift 5, autoguided by {SHIPPED_RESIDUAL_GUIDE.name} at weight 2" in table
    assert report["teacher_sampling"]["shift"] == 5 and report["teacher_sampling"]["guide_weight"] == 2
    assert report["teacher_checkpoint"] == str(SHIPPED_RESIDUAL_TEACHER)
    # Each stage's recipe, read from its export: the demo's rate, critic ratio and region-weighted ground-truth loss.
    for stage in report["stages"]:
        assert stage["recipe"]["lr_student"] == pytest.approx(2e-4) and stage["recipe"]["critic_ratio"] == 1
        assert stage["recipe"]["truth_region"] == [4.0, 36.0]
        assert stage["recipe"]["losses"]["dmd"] == [1.0, 0] and stage["recipe"]["losses"]["truth"] == [100.0, 0]
    assert "| student_4step | 1 | 0.0002 | 0.0001 | 1 | dmd 1, regression 0.25, temporal 0.1 (10), " in table
    assert "truth 100 (mask 4, interior 36) |" in table
    assert len(list((out / "data").glob("*/example.json"))) == 4
    assert (models / SHIPPED_RESIDUAL_TEACHER.name).exists()
    heldout = json.loads((out / "heldout" / "report.json").read_text())
    assert heldout["video"] == {"frames": 33, "height": 256, "width": 256} and heldout["clips"] == 1
    assert {"teacher", "pvtt_student_4step", "paste", "flat_fill", "template"} <= set(heldout["methods"])
    assert report["heldout"]["methods"]["paste"]["product_psnr"] == heldout["methods"]["paste"]["product_psnr"]
    assert (out / "heldout" / "heldout_grid.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "quality_retention.min" in printed and "speedup" in printed
    assert "50 -> 16 -> 8 -> 4" in printed and f"[3/5] teacher ({GUIDED}) and every stage" in printed


def test_a_named_teacher_is_demoed_on_fewer_updates_per_stage_than_distill(tmp_path):
    """The README's demo command must end within 20 minutes on 2 cores; distill's budget (the shipped students') does
    not on slow hosts, so a teacher the user names is distilled on fewer updates at every stage, at distill's critic
    ratio, and --generator-steps still sets them."""
    from pvtt_train.__main__ import build_parser

    named = _demo_args(tmp_path, "--teacher", str(SHIPPED_TEACHER))
    distill = build_parser().parse_args(["distill"])
    assert len(named.generator_steps) == len(distill.generator_steps) == 3
    assert all(d < s for d, s in zip(named.generator_steps, distill.generator_steps))
    assert named.critic_ratio == distill.critic_ratio == 5
    assert _demo_args(tmp_path, "--teacher", str(SHIPPED_TEACHER), "--generator-steps", "30,80,130").generator_steps \
        == distill.generator_steps


def _demo_args(tmp_path, *argv):
    from pvtt_train.__main__ import _demo_defaults, build_parser

    args = build_parser().parse_args(["demo", "--out", str(tmp_path), *argv])
    _demo_defaults(args)
    return args


def test_the_demo_distils_the_residual_teacher_shifted_and_autoguided_unless_told_otherwise(tmp_path):
    """With no --teacher the demo samples the shipped paste-residual teacher at flow shift 5 under its shipped guide;
    each flag still sets its own part, and a teacher the user names is sampled plainly, as distill samples it."""
    args = _demo_args(tmp_path)
    assert (args.teacher, args.teacher_shift, args.guide_model) == (str(SHIPPED_RESIDUAL_TEACHER), 5.0,
                                                                    str(SHIPPED_RESIDUAL_GUIDE))
    args = _demo_args(tmp_path, "--teacher-shift", "3")
    assert (args.teacher_shift, args.guide_model) == (3.0, str(SHIPPED_RESIDUAL_GUIDE))
    args = _demo_args(tmp_path, "--teacher", str(SHIPPED_TEACHER))
    assert (args.teacher, args.teacher_shift, args.guide_model) == (str(SHIPPED_TEACHER), None, None)


def test_the_demo_distils_its_default_teacher_by_its_own_recipe_unless_told_otherwise(tmp_path):
    """The default teacher's recipe (20,40,320 updates at critic ratio 1, --lr-student 2e-4, --weight truth=100 over
    the 4,36 region) gives way to each flag that sets it; a teacher the user names is distilled at --lr-scale's and
    --critic-ratio's defaults without the truth loss, as distill does."""
    args = _demo_args(tmp_path)
    assert (args.lr_student, args.lr_scale, args.weight) == (2e-4, 0.4, [("truth", (100.0, None))])
    assert (args.generator_steps, args.critic_ratio, args.truth_region) == ((20, 40, 320), 1, (4.0, 36.0))
    args = _demo_args(tmp_path, "--lr-scale", "0.2", "--weight", "truth=5:3", "--critic-ratio", "2",
                      "--generator-steps", "7", "--truth-region", "1,0")
    assert (args.lr_student, args.lr_scale, args.weight) == (None, 0.2, [("truth", (5.0, 3))])
    assert (args.generator_steps, args.critic_ratio, args.truth_region) == ((7,), 2, (1.0, 0.0))
    args = _demo_args(tmp_path, "--weight", "temporal=0.2")
    assert args.weight == [("temporal", (0.2, None)), ("truth", (100.0, None))]
    args = _demo_args(tmp_path, "--teacher", str(SHIPPED_TEACHER))
    assert (args.lr_student, args.lr_scale, args.weight) == (None, 0.4, [])
    assert (args.generator_steps, args.critic_ratio, args.truth_region) == ((20, 50, 80), 5, (1.0, 0.0))


def test_a_demo_run_folder_of_the_velocity_teacher_is_not_resumed_with_the_residual_one(tmp_path):
    """A demo run started before the demo distilled the residual teacher (the velocity teacher at 30,80,130) must not
    be continued with it: --resume refuses, naming each option to resume with; with them it is the same run."""
    from pvtt_train.__main__ import _progressive_from_args, _with_teacher_sampling
    from pvtt_train.distill.signature import check_signature, run_signature, teacher_fingerprint
    from pvtt_train.errors import CheckpointError

    def signature(*argv):
        args = _demo_args(tmp_path, *argv)
        run, guide = _with_teacher_sampling(args, _progressive_from_args(args)[1])
        return run_signature(_progressive_from_args(args)[0], run, teacher_fingerprint(args.teacher), 1,
                             guide_sha256=teacher_fingerprint(guide) if guide else None)

    old = ("--teacher", str(SHIPPED_TEACHER), "--generator-steps", "30,80,130")
    saved = signature(*old)
    with pytest.raises(CheckpointError) as refused:
        check_signature(saved, signature(), "progress.json")
    message = str(refused.value)
    for part in ("--teacher: weights with SHA-256", "--guide-model: none in the saved run",
                 "--teacher-shift: default in the saved run, 5.0 now",
                 "--generator-steps: 30,80,130 in the saved run, 20,40,320 now", "--lr-student/--lr-scale:",
                 "--weight:", "resume with the same options"):
        assert part in message, part
    check_signature(saved, signature(*old), "progress.json")

    # A run folder of the residual demo before it took the truth loss resumes with that recipe's flags.
    before_truth = ("--lr-scale", "0.4", "--weight", "truth=0", "--generator-steps", "20,50,80", "--critic-ratio", "5")
    saved = signature(*before_truth)
    assert all("truth" not in stage["weights"] and "truth_region" not in stage for stage in saved["stages"])  # as
    # that PVTT wrote it: the demo's --truth-region weighs nothing with the truth loss off
    with pytest.raises(CheckpointError, match="--lr-student/--lr-scale: .*--weight: "):
        check_signature(saved, signature(), "progress.json")
    check_signature(saved, signature(*before_truth), "progress.json")

    # So does one of the demo before its long last stage (critic ratio 5, the plain truth loss at 20).
    before_long = ("--generator-steps", "20,50,80", "--critic-ratio", "5", "--lr-student", "1e-4", "--weight",
                   "truth=20", "--truth-region", "1,0")
    saved = signature(*before_long)
    assert all("truth_region" not in stage for stage in saved["stages"])  # as that PVTT wrote it
    with pytest.raises(CheckpointError) as refused:
        check_signature(saved, signature(), "progress.json")
    for flag in ("--generator-steps: 20,50,80 in the saved run, 20,40,320 now", "--critic-ratio:", "--truth-region:",
                 "--weight:", "--lr-student/--lr-scale:"):
        assert flag in str(refused.value), flag
    check_signature(saved, signature(*before_long), "progress.json")
