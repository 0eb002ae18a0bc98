"""The demo pipeline end to end on a reduced budget, with the shipped teacher."""

import json

import pytest

from pvtt_train.__main__ import main
from pvtt_train.models.checkpoint import read_metadata
from pvtt_train.paths import SHIPPED_TEACHER

pytestmark = pytest.mark.skipif(not SHIPPED_TEACHER.exists(), reason=f"shipped teacher missing: {SHIPPED_TEACHER}")


def test_demo_writes_report_grid_data_and_student(tmp_path, capsys):
    out, models = tmp_path / "demo", tmp_path / "models" / "pvtt"
    main(["demo", "--out", str(out), "--models-dir", str(models), "--clips", "2",
          "--generator-steps", "2", "--critic-ratio", "2"])
    report = json.loads((out / "report.json").read_text())
    for side in ("teacher", "student", "teacher_4step_undistilled"):
        assert set(report[side]) == {"product_psnr", "product_ssim", "background_psnr_raw",
                                     "background_psnr_composited", "warp_error"}
        assert 5 < report[side]["product_psnr"] < 100
    retention = report["quality_retention"]
    assert retention["min"] == min(v for k, v in retention.items() if k != "min")
    assert retention["product_psnr"] == pytest.approx(
        report["student"]["product_psnr"] / report["teacher"]["product_psnr"])
    assert retention["warp_error"] == pytest.approx(report["teacher"]["warp_error"] / report["student"]["warp_error"])
    # 100 model calls (50 steps x CFG) against 4: even with overheads the student must be far faster.
    assert report["model_calls_per_clip"] == {"teacher": 100, "student": 4, "teacher_4step_undistilled": 4}
    assert report["speedup"] > 5
    assert (out / "grid.png").stat().st_size > 1000
    assert len(list((out / "data").glob("*/example.json"))) == 4
    student = models / "pvtt_student_4step.safetensors"
    assert read_metadata(student)["sampler"]["steps"] == 4
    assert (models / SHIPPED_TEACHER.name).exists()
    printed = capsys.readouterr().out
    assert "quality_retention.min" in printed and "speedup" in printed
