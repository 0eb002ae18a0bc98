"""``bench --quick``, the ``auto`` variant and the machine header, without running a whole benchmark."""

from __future__ import annotations

import pytest
import torch

from pvtt_train.__main__ import build_parser
from pvtt_train.bench import CPU_VARIANTS, CUDA_VARIANTS, markdown, quick_variants


def test_quick_measures_the_main_variants_and_auto():
    assert [v.name for v in quick_variants(torch.device("cpu"))] == ["eager", "bf16", "compile", "onnxruntime",
                                                                      "auto"]
    assert [v.name for v in quick_variants(torch.device("cuda"))] == ["eager", "bf16", "bf16+compile", "auto"]
    assert "auto" in {v.name for v in CPU_VARIANTS} and "auto" in {v.name for v in CUDA_VARIANTS}


def test_quick_benchmarks_the_4_step_student_only(tmp_path):
    args = build_parser().parse_args(["bench", "--quick", "--models-dir", str(tmp_path), "--out",
                                      str(tmp_path / "out")])
    with pytest.raises(SystemExit) as stop:  # the folder is empty: the message lists what it looked for
        args.func(args)
    assert str(stop.value).startswith(f"not found: {tmp_path / 'pvtt_student_4step.safetensors'}.")
    assert "16step" not in str(stop.value) and "8step" not in str(stop.value)
    assert (args.clips, args.repeats, args.warmup) == (2, 3, 1)


def test_explicit_sizes_win_over_quick(tmp_path):
    args = build_parser().parse_args(["bench", "--quick", "--clips", "3", "--models-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        args.func(args)
    assert (args.clips, args.repeats, args.warmup) == (3, 3, 1)


def test_every_bench_option_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for command in ("bench", "bench-attention"):
        for action in sub.choices[command]._actions:
            assert action.help, f"bench option {action.option_strings} has no help text"


def test_the_report_starts_with_the_machine():
    report = {"machine": "CPU Test EPYC: AVX2, no native bf16 (bf16 is emulated: slow)", "device": "CPU (Test)",
              "torch": "2", "threads": 2, "clips": 1, "repeats": 1, "rows": [], "best": {}}
    assert markdown(report).startswith("Machine: CPU Test EPYC: AVX2, no native bf16")
