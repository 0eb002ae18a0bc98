"""PVTT Accelerate's ``auto`` in the node: defaults, saved-workflow compatibility, report and warnings.

The machine is a probe result injected per test (an AVX2 CPU without native bf16, compiler or
extras), so what the node may try does not depend on the test machine, and no test compiles.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import replace

import pytest
from _comfy_pack import PACKAGE
from _node_fixtures import nodes, paths, run

machine = importlib.import_module(f"{PACKAGE}.pvtt_accel.machine")
auto_cache = importlib.import_module(f"{PACKAGE}.pvtt_accel.auto_cache")
AVX2 = machine.MachineProfile(cpu_model="Test EPYC", cpu_capability="AVX2", cpu_bf16=False, cpu_amx=False,
                              cpu_vnni=False, cpu_flags=("avx2",), cxx_compiler=None, threads=2, cuda=(),
                              packages={name: False for name in machine.OPTIONAL_PACKAGES})
#: The widgets as every saved workflow stores them (by position): this order is an API.
WIDGETS = ["model", "attention", "precision", "compile", "int8", "token_merging"]
#: The values shipped before ``auto``: a saved workflow may hold any of them.
OLD_VALUES = {"precision": ["fp32", "bf16", "fp16"], "int8": ["off", "w8a16", "w8a8"],
              "compile": ["off", "default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"]}


@pytest.fixture
def avx2_machine(monkeypatch):
    monkeypatch.setattr(machine, "probe", lambda: AVX2)


def test_auto_is_the_default_and_saved_values_still_load():
    required = nodes["PVTTAccelerate"].INPUT_TYPES()["required"]
    assert list(required) == WIDGETS
    for name, old in OLD_VALUES.items():
        choices, spec = required[name]
        assert spec["default"] == "auto" and set(old) <= set(choices)
    assert nodes["PVTTAccelerate"].RETURN_TYPES[0] == "PVTT_MODEL"  # new outputs only after the model


def test_auto_reports_its_choice_and_remembers_it(model, avx2_machine, folders):
    out = run("PVTTAccelerate", model=model, attention="auto", precision="auto", compile="auto", int8="auto",
              token_merging=0.0)
    fast, report = out["result"]
    assert out["ui"]["text"] == [report]
    assert report.startswith("auto chose eager: x1.00")  # nothing can win on this machine: the plain model
    assert fast.metadata["acceleration"]["auto"]["chosen"] == "eager"
    records = list((paths.models_root() / auto_cache.FOLDER).glob("auto-*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["key"]["machine"] == AVX2.capability_string()


def test_explicit_bf16_on_a_cpu_without_it_warns_in_the_report_and_the_log(model, avx2_machine, caplog):
    with caplog.at_level(logging.WARNING):
        out = run("PVTTAccelerate", model=model, attention="auto", precision="bf16", compile="off", int8="off",
                  token_merging=0.0)
    fast, report = out["result"]
    assert fast.metadata["acceleration"]["precision"] == "bf16"  # honoured...
    assert report.startswith("explicit bf16") and "WARNING" in report and "emulated" in report  # ...not silently
    assert any("emulated" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_explicit_fp32_on_any_cpu_runs_without_warning(model, avx2_machine):
    report = run("PVTTAccelerate", model=model, attention="auto", precision="fp32", compile="off", int8="off",
                 token_merging=0.0)["result"][1]
    assert "WARNING" not in report


def test_explicit_bf16_on_a_bf16_cpu_runs_without_warning(model, monkeypatch):
    monkeypatch.setattr(machine, "probe", lambda: replace(AVX2, cpu_capability="AVX512", cpu_bf16=True))
    report = run("PVTTAccelerate", model=model, attention="auto", precision="bf16", compile="off", int8="off",
                 token_merging=0.0)["result"][1]
    assert "WARNING" not in report
