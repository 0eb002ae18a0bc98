"""The demo end to end on a reduced budget, with the shipped teacher and encoders."""

import json

import pytest

from pvtt_train.__main__ import main
from pvtt_train.models.checkpoint import read_metadata
from pvtt_train.paths import SHIPPED_TEACHER

pytestmark = pytest.mark.skipif(not SHIPPED_TEACHER.exists(), reason=f"shipped teacher missing: {SHIPPED_TEACHER}")

METRICS = {"product_psnr", "product_ssim", "background_psnr_raw", "background_psnr_composited", "warp_error"}


def test_demo_runs_the_progressive_path_and_reports_every_stage(tmp_path, capsys):
    out, models = tmp_path / "demo", tmp_path / "models" / "pvtt"
    main(["demo", "--out", str(out), "--models-dir", str(models), "--clips", "2", "--generator-steps", "1",
          "--critic-ratio", "1", "--eval-clips", "4", "--regression-pool", "4", "--force", "--heldout-clips", "1"])
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
    # 100 model calls (50 steps x CFG) against 4: even with overheads the 4-step student is far faster.
    assert report["stages"][-1]["speedup"] > 5
    assert report["stages"][-1]["speedup"] > 2 * report["stages"][0]["speedup"]  # 4 calls against 16
    for name in ("grid.png", "quality_speed.png", "run/student_8step_strip.png"):
        assert (out / name).stat().st_size > 1000, name
    table = (out / "report.md").read_text()
    assert "| student_4step | 4 |" in table and "| teacher (Euler 50, CFG 1.25) | 50 | 100 |" in table
    assert len(list((out / "data").glob("*/example.json"))) == 4
    assert (models / SHIPPED_TEACHER.name).exists()
    heldout = json.loads((out / "heldout" / "report.json").read_text())
    assert heldout["video"] == {"frames": 33, "height": 256, "width": 256} and heldout["clips"] == 1
    assert {"teacher", "pvtt_student_4step", "paste", "flat_fill", "template"} <= set(heldout["methods"])
    assert report["heldout"]["methods"]["paste"]["product_psnr"] == heldout["methods"]["paste"]["product_psnr"]
    assert (out / "heldout" / "heldout_grid.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "quality_retention.min" in printed and "speedup" in printed
    assert "50 -> 16 -> 8 -> 4" in printed and "[3/5] teacher (Euler 50, CFG 1.25) and every stage" in printed


def test_the_demo_trains_fewer_updates_per_stage_than_distill(tmp_path):
    """The README's demo command must end within 20 minutes on 2 cores; distill's budget (the shipped students')
    does not on slow hosts, so the demo's default is shorter at every stage and --generator-steps still sets it."""
    from pvtt_train.__main__ import build_parser

    parser = build_parser()
    demo = parser.parse_args(["demo", "--out", str(tmp_path)]).generator_steps
    distill = parser.parse_args(["distill"]).generator_steps
    assert len(demo) == len(distill) == 3 and all(d < s for d, s in zip(demo, distill))
    assert parser.parse_args(["demo", "--out", str(tmp_path), "--generator-steps", "30,80,130"]).generator_steps == \
        distill


def test_a_demo_run_folder_from_distills_budget_is_not_resumed_at_the_demos(tmp_path):
    """A demo run started at 30,80,130 (the demo's budget before it had its own) must not be continued at 20,50,80:
    --resume refuses and names the budget to resume with."""
    from pvtt_train.__main__ import _progressive_from_args, build_parser
    from pvtt_train.distill.signature import check_signature, run_signature
    from pvtt_train.errors import CheckpointError

    parser = build_parser()
    saved = _progressive_from_args(parser.parse_args(["demo", "--out", str(tmp_path), "--generator-steps",
                                                      "30,80,130"]))
    now = _progressive_from_args(parser.parse_args(["demo", "--out", str(tmp_path)]))
    with pytest.raises(CheckpointError, match="--generator-steps: 30,80,130 in the saved run, 20,50,80 now"):
        check_signature(run_signature(*saved, "teacher", 1), run_signature(*now, "teacher", 1), "progress.json")
