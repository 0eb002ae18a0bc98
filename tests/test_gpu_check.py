"""`gpu-check`: its refusals, and its whole code path (sampling, one FSDP2 DMD step, the plan, the report)
really run on the tiny configuration on the CPU. Its numbers there say nothing about a GPU; the test checks
that every measurement is made and written."""

from __future__ import annotations

import json

import pytest
import torch

from pvtt_train.__main__ import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda_with_a_clear_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["gpu-check", "--out", str(tmp_path / "gc")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "needs an NVIDIA GPU; this machine has none" in err and "--config tiny --device cpu" in err
    assert not (tmp_path / "gc").exists(), "a refused run writes nothing"


def test_refuses_the_real_model_on_cpu_and_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["gpu-check", "--out", str(tmp_path / "gc"), "--device", "cpu"])
    assert exc.value.code == 2 and "--config tiny" in capsys.readouterr().err
    for bad in (["--variants", "flash,fast"], ["--device", "tpu"], ["--frames", "1"]):
        with pytest.raises(SystemExit) as exc:
            main(["gpu-check", "--out", str(tmp_path / "gc"), *bad])
        assert exc.value.code == 2
    assert not (tmp_path / "gc").exists()


def test_tiny_dry_run_measures_everything_and_writes_json_and_markdown(tmp_path, capsys):
    main(["gpu-check", "--out", str(tmp_path / "gc"), "--config", "tiny", "--device", "cpu", "--variants", "math",
          "--warmup", "0"])
    report = json.loads((tmp_path / "gc" / "gpu_check.json").read_text())
    assert report["config"] == "tiny" and report["device"] == "cpu"
    (row,) = report["sampling"]
    assert "error" not in row, row
    assert row["variant"] == "math" and row["seconds"] > 0 and row["finite"] and row["peak_bytes"] is None
    step = report["dmd_step"]
    assert "error" not in step, step
    assert step["seconds"] > 0 and step["finite"] and step["processes"] == 1
    assert step["loss_critic"] > 0
    plan = report["plan"]
    assert plan["total_bytes"] > 0 and {"teacher", "student", "activations"} <= set(plan["gpu"])
    markdown = (tmp_path / "gc" / "gpu_check.md").read_text()
    assert "| math |" in markdown and "measured (1 process)" in markdown and "`plan` estimate" in markdown
    assert markdown in capsys.readouterr().out
