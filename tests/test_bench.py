"""``python -m pvtt_train bench`` on the shipped teacher and 4-step student, with a few backends."""

from __future__ import annotations

import json

import pytest
import torch

from pvtt_train.__main__ import build_parser
from pvtt_train.bench import CPU_VARIANTS, run_bench
from pvtt_train.paths import SHIPPED_MODELS, SHIPPED_TEACHER

STUDENT = SHIPPED_MODELS / "pvtt_student_4step.safetensors"
WANTED = ("eager", "bf16", "onnxruntime", "tensorrt-fp16")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    variants = tuple(v for v in CPU_VARIANTS if v.name in WANTED)
    result = run_bench(SHIPPED_TEACHER, [STUDENT], variants, out, clips=1, repeats=1, warmup=1,
                       progress=lambda _msg: None)
    return result, out


def rows_by_variant(report):
    return {r["variant"]: r for r in report["rows"] if r["model"] == STUDENT.stem}


def test_every_variant_has_a_row_and_the_teacher_comes_first(report):
    result, _ = report
    assert result["rows"][0]["model"] == SHIPPED_TEACHER.stem
    assert set(rows_by_variant(result)) == set(WANTED)


def test_model_calls_count_cfg_as_two_evaluations(report):
    result, _ = report
    assert result["rows"][0]["model_calls"] == 100  # 50 steps, conditional + unconditional
    assert all(r["model_calls"] == 4 for r in rows_by_variant(result).values() if "skipped" not in r)


def test_speedups_and_fidelity_are_measured_against_eager(report):
    rows = rows_by_variant(report[0])
    assert rows["eager"]["speedup_vs_eager"] == 1.0 and rows["eager"]["psnr_vs_eager"] == float("inf")
    assert rows["eager"]["speedup_vs_teacher"] > 8  # 100 model calls against 4, with a wide margin
    assert rows["bf16"]["psnr_vs_eager"] > 45
    assert rows["onnxruntime"]["psnr_vs_eager"] > 60
    assert rows["eager"]["product_psnr"] > 15 and rows["eager"]["peak_memory_mb"] > 0
    assert rows["bf16"]["attention"] == "decomposed" and rows["eager"]["attention"] == "sdpa"
    bf16 = rows["bf16"]  # one round of one clip: the round's ratio is the speed-up
    assert bf16["speedup_round_min"] == pytest.approx(bf16["speedup_vs_eager"]) == pytest.approx(bf16["speedup_round_max"])


def test_a_backend_that_cannot_run_here_is_listed_with_its_reason(report):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: TensorRT may run")
    skipped = rows_by_variant(report[0])["tensorrt-fp16"]["skipped"]
    assert "TensorRTUnavailable" in skipped and "CUDA" in skipped


def test_outputs_are_json_markdown_and_a_plot(report):
    result, out = report
    strict = json.loads((out / "bench.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert strict["rows"][1]["variant"] == "eager" and strict["rows"][1]["psnr_vs_eager"] is None  # inf -> null
    table = (out / "bench.md").read_text()
    assert "| pvtt_student_4step | 4 | onnxruntime |" in table and "skipped:" in table
    widths = {line.count("|") for line in table.splitlines() if line.startswith("| pvtt")}
    assert len(widths) == 1, "every row of the table has the header's cells"
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert STUDENT.stem in result["best"]


def test_cli_names_the_variants_it_knows():
    args = build_parser().parse_args(["bench", "--variants", "eager,warp-drive", "--students", str(STUDENT)])
    with pytest.raises(SystemExit, match="unknown warp-drive; on cpu choose from eager, bf16"):
        args.func(args)


def test_attention_micro_benchmark_times_every_kernel():
    from pvtt_train.bench import attention_micro

    (row,) = attention_micro([(64, 2, 16)], repeats=1)
    assert {"sdpa_fp32_ms", "decomposed_bf16_ms", "tome0.5_fp32_ms"} <= set(row) and all(
        row[k] > 0 for k in row if k.endswith("_ms"))
