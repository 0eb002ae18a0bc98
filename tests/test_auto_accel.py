"""``auto`` acceleration: the machine probe, the candidates, the measured choice and its cache.

The choice is tested with injected step timings (the real build, PSNR and sampling run; only the
clock is replaced), so "bf16 is 15x slower here" is reproducible on any machine. Models are micro
random-weight students: every test takes seconds.
"""

from __future__ import annotations

import builtins
import sys
from dataclasses import replace

import pytest
import torch
from _tiny import MICRO_BACKBONE
from hypothesis import given, settings
from hypothesis import strategies as st

from pvtt_accel import auto_cache, machine
from pvtt_accel.accelerate import AccelerationOptions
from pvtt_accel.auto_candidates import Candidate, candidates, known_slow
from pvtt_accel.auto_select import MIN_GAIN, MIN_PSNR, Trial, auto_accelerate, choose
from pvtt_accel.denoiser import get_denoiser
from pvtt_train.models.checkpoint import load_checkpoint, save_checkpoint
from pvtt_train.models.pvtt_model import WanConcatPVTT
from pvtt_train.models.schedule import FlowSchedule

CPU = torch.device("cpu")
AVX2 = machine.MachineProfile(cpu_model="Test EPYC", cpu_capability="AVX2", cpu_bf16=False, cpu_amx=False,
                              cpu_vnni=False, cpu_flags=("avx2",), cxx_compiler=None, threads=2, cuda=(),
                              packages={name: False for name in machine.OPTIONAL_PACKAGES})
#: A Sapphire-Rapids-like CPU: native bf16, AMX, VNNI (compiler off so no test compiles).
AMX = replace(AVX2, cpu_model="Test Xeon", cpu_capability="AVX512", cpu_bf16=True, cpu_amx=True, cpu_vnni=True,
              cpu_flags=("avx2", "avx512f", "avx512_bf16", "amx_tile"))


def student(path, seed=0):
    torch.manual_seed(seed)
    save_checkpoint(path, WanConcatPVTT(MICRO_BACKBONE), {
        "stage": "student", "schedule": FlowSchedule().to_dict(),
        "sampler": {"kind": "few_step", "steps": 2, "timesteps": [1000, 500]},
        "video": {"frames": 5, "height": 16, "width": 16},
        "conditioning": {"reference": "aligned_paste", "uncond": "zero_reference"},
        "provenance": {"trainer": "tests/test_auto_accel.py", "weights": "random"}})
    return load_checkpoint(path)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return student(tmp_path_factory.mktemp("auto") / "micro_student.safetensors")


def fake_timer(seconds: dict[str, float], calls: list[str] | None = None):
    """Runs the real step, reports the injected duration for its variant."""
    def timer(name, call):
        call()
        if calls is not None:
            calls.append(name)
        return seconds[name]
    return timer


# --- the choice --------------------------------------------------------------------------------

def test_auto_keeps_eager_when_bf16_measures_slower(loaded):
    calls = []
    result = auto_accelerate(loaded, {}, profile=AMX, timer=fake_timer({"eager": 0.080, "bf16": 1.2}, calls))
    assert [t["name"] for t in result.trials] == ["bf16"]
    assert result.trials[0]["ratio"] == pytest.approx(0.08 / 1.2)
    assert result.chosen == "eager" and result.ratio == 1.0 and not result.warnings
    assert get_denoiser(result.model.model) is get_denoiser(loaded.model)  # the checkpoint's own weights
    assert result.model.metadata["acceleration"]["auto"]["chosen"] == "eager"
    assert calls == ["eager", "bf16"] * 5  # alternating rounds, eager first
    assert "auto chose eager: x1.00" in result.message() and "bf16 x0.07" in result.message()


def test_auto_takes_bf16_where_it_measures_faster(loaded):
    result = auto_accelerate(loaded, {}, profile=AMX, timer=fake_timer({"eager": 0.080, "bf16": 0.020}))
    assert result.chosen == "bf16" and result.ratio == pytest.approx(4.0)
    assert result.model.metadata["acceleration"]["precision"] == "bf16"
    assert result.trials[0]["psnr"] >= MIN_PSNR  # bf16 rounding only, measured on decoded frames
    assert "auto chose bf16: x4.00" in result.message()


def test_explicit_bf16_on_a_cpu_without_it_runs_with_a_warning(loaded):
    result = auto_accelerate(loaded, {"precision": "bf16", "compile": "auto", "int8": "off"}, profile=AVX2,
                             timer=fake_timer({"eager": 0.080, "bf16": 1.2}))
    assert result.chosen == "bf16"  # the user's explicit choice is honoured...
    assert any("emulated" in w for w in result.warnings)  # ...with the probe's reason
    assert any("measured x0.07" in w for w in result.warnings)  # ...and the measured one
    assert "WARNING" in result.message()


def trial(name: str, ratio: float | None, psnr: float = 60.0) -> Trial:
    t = Trial(Candidate(name, AccelerationOptions()), psnr=psnr)
    if ratio is None:
        t.error = "RuntimeError: cannot run here"
    else:
        t.eager_s, t.variant_s = [1.0], [1.0 / ratio]
    return t


def test_choose_prefers_the_fastest_faithful_variant():
    trials = [trial("bf16", 0.07), trial("compile", 1.22), trial("lossy", 3.0, psnr=20.0), trial("broken", None)]
    assert choose(trials).candidate.name == "compile"
    assert choose([trial("noise", 1.02)]) is None  # within timing noise: not a win


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 20.0), st.floats(0.0, 150.0)), max_size=6))
def test_choose_never_picks_a_variant_measured_slower_or_unfaithful(measured):
    trials = [trial(f"v{i}", ratio, psnr) for i, (ratio, psnr) in enumerate(measured)]
    best = choose(trials)
    faithful = [t for t in trials if t.ratio >= MIN_GAIN and t.psnr >= MIN_PSNR]
    if best is None:
        assert not faithful
    else:
        assert best.ratio >= MIN_GAIN > 1.0 and best.psnr >= MIN_PSNR
        assert best.ratio == max(t.ratio for t in faithful)


# --- candidates and warnings ------------------------------------------------------------------

def names(found):
    return [c.name for c in found]


def test_candidates_follow_the_hardware():
    assert names(candidates(AVX2, CPU, {})) == []  # no native bf16, no compiler, no VNNI: nothing can win
    assert names(candidates(replace(AVX2, cxx_compiler="g++"), CPU, {})) == ["compile"]
    assert names(candidates(AMX, CPU, {})) == ["bf16"]
    with_everything = replace(AMX, cxx_compiler="g++", packages={name: True for name in machine.OPTIONAL_PACKAGES})
    assert names(candidates(with_everything, CPU, {}, ort=True)) == [
        "compile", "bf16", "bf16+compile", "int8-w8a8+compile", "onnxruntime"]


def test_explicit_widgets_narrow_the_candidates():
    compiler = replace(AMX, cxx_compiler="g++")
    assert names(candidates(compiler, CPU, {"precision": "fp32"})) == ["compile"]
    assert names(candidates(compiler, CPU, {"compile": "off"})) == ["bf16"]
    # asked for bf16 on a CPU without it: the base first, still compared with compile on top
    assert names(candidates(replace(AVX2, cxx_compiler="g++"), CPU, {"precision": "bf16"})) == [
        "bf16", "bf16+compile"]


def test_known_slow_names_the_reason_on_this_cpu_only():
    bf16, w8a8 = AccelerationOptions(precision="bf16"), AccelerationOptions(int8="w8a8")
    assert "emulated" in known_slow(bf16, AVX2, CPU)[0] and "AVX2" in known_slow(bf16, AVX2, CPU)[0]
    assert known_slow(bf16, AMX, CPU) == []
    assert "VNNI" in known_slow(w8a8, AVX2, CPU)[0] and known_slow(w8a8, AMX, CPU) == []
    assert "C++ compiler" in known_slow(AccelerationOptions(compile="default"), AVX2, CPU)[0]


# --- cache -------------------------------------------------------------------------------------

def test_a_second_run_reuses_the_choice_without_measuring(loaded, tmp_path):
    first = auto_accelerate(loaded, {}, profile=AMX, cache_dir=tmp_path,
                            timer=fake_timer({"eager": 0.080, "bf16": 0.020}))
    assert not first.from_cache and first.record_path.parent == tmp_path

    def no_timing(name, call):
        raise AssertionError("a cached choice must not be measured again")

    second = auto_accelerate(loaded, {}, profile=AMX, cache_dir=tmp_path, timer=no_timing)
    assert second.from_cache and second.chosen == "bf16" and second.ratio == pytest.approx(4.0)
    assert second.model.metadata["acceleration"]["precision"] == "bf16"
    assert "cached measurement" in second.message()
    assert [p.name for p in tmp_path.iterdir()] == [first.record_path.name]  # no temp left behind


def test_cache_key_changes_with_capability_model_and_library_version(loaded, tmp_path):
    versions = {"torch": "2.14.1", "diffusers": "0.42.1"}

    def key(profile=AVX2, sha="a" * 64, lib=versions):
        return auto_cache.cache_key(profile, "cpu", sha, "wan_concat", {"batch": 1, "frames": 5}, {}, 35.0, lib)

    assert key() == key()
    assert auto_cache.entry_path(tmp_path, key()) == auto_cache.entry_path(tmp_path, key())
    changed = [key(profile=replace(AVX2, cpu_capability="AVX512")), key(profile=replace(AVX2, cpu_bf16=True)),
               key(profile=replace(AVX2, threads=1)), key(sha="b" * 64),
               key(lib={**versions, "torch": "2.15.0"}), key(lib={**versions, "onnxruntime": "1.22.0"})]
    paths = {auto_cache.entry_path(tmp_path, k) for k in [key(), *changed]}
    assert len(paths) == len(changed) + 1
    other = student(tmp_path / "other.safetensors", seed=1)
    assert auto_cache.model_key(loaded, {}, AVX2, "cpu", 35.0) != auto_cache.model_key(other, {}, AVX2, "cpu", 35.0)


def test_a_record_for_another_key_is_not_trusted(loaded, tmp_path):
    key = auto_cache.model_key(loaded, {}, AVX2, "cpu", 35.0)
    path = auto_cache.store(tmp_path, key, {"chosen": "bf16", "ratio": 4.0})
    assert auto_cache.load(tmp_path, key)["chosen"] == "bf16"
    path.write_text(path.read_text().replace('| AVX2 |', '| AVX512 |'))  # an edited or colliding record
    assert auto_cache.load(tmp_path, key) is None
    path.write_text("{not json")
    assert auto_cache.load(tmp_path, key) is None


# --- probe -------------------------------------------------------------------------------------

def test_probe_works_without_any_optional_package(monkeypatch):
    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name.split(".")[0] in machine.OPTIONAL_PACKAGES:
            raise ImportError(f"simulated: no {name}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    for name in machine.OPTIONAL_PACKAGES:
        monkeypatch.setitem(sys.modules, name, None)  # find_spec now reports them missing
    for helper in ("_is_vnni_supported", "_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.delattr(torch.cpu, helper, raising=False)  # older torch builds lack them
    profile = machine.probe()
    assert profile.packages == {name: False for name in machine.OPTIONAL_PACKAGES}
    assert profile.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert profile.threads == torch.get_num_threads()
    assert "optional packages: none" in profile.summary()
    assert profile.cpu_capability in profile.capability_string()


def test_probe_reports_what_this_machine_has():
    profile = machine.probe()
    assert profile.cpu_bf16 == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported() or
                                    torch.cpu._is_avx512_bf16_supported())
    assert ("no native bf16" in profile.summary()) == (not profile.cpu_bf16)
    assert profile.cuda == () or torch.cuda.is_available()
