"""TensorRT engines: names, sidecars, the cache's hit/miss/rebuild rules, build control flow, errors.

TensorRT needs an NVIDIA GPU. Tests marked ``needs_tensorrt`` build and run real engines from the
shipped student's ONNX export and are skipped where TensorRT 10 or CUDA is missing. Tests that use
``stand_in_tensorrt`` say so in their docstring: it stands in for the tensorrt module to exercise
PVTT's own control flow (naming, cache, progress, cancellation, atomic writes), not TensorRT.
"""

import logging
import math
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from pvtt_accel.denoiser import calibration_batch, capture_denoiser_inputs, get_denoiser
from pvtt_accel.onnx_export import (
    ShapeOutsideProfile,
    ShapeProfile,
    checkpoint_sha256,
    onnx_sha256,
    sidecar_path,
)
from pvtt_accel.tensorrt_engine import (
    EngineBuildCancelled,
    EngineBuildError,
    EngineCache,
    EngineSpec,
    TensorRTUnavailable,
    TrtDenoiser,
    build_engine,
    check_precision,
    engine_dir,
    find_or_build_engine,
    has_qdq,
    read_sidecar,
    require_tensorrt,
    tensorrt_accelerate,
)
from pvtt_train.data.batches import condition_batch
from pvtt_train.models.loading import load_model
from pvtt_train.sampling.samplers import sample_from_metadata

STUDENT = Path(__file__).resolve().parents[1] / "models_shipped" / "pvtt_student_4step.safetensors"
VIDEO = {"frames": 9, "height": 16, "width": 16}


def _tensorrt_missing() -> str | None:
    try:
        require_tensorrt()
    except TensorRTUnavailable as exc:
        return str(exc)
    return None


MISSING = _tensorrt_missing()
needs_tensorrt = pytest.mark.skipif(
    MISSING is not None, reason=f"real engine build and run need TensorRT 10 and a CUDA GPU; here: {MISSING}")


def spec(**changes) -> EngineSpec:
    return replace(EngineSpec(checkpoint="pvtt_student_4step", checkpoint_sha256="1de7976c9041" + "ab" * 26,
                              precision="fp16", profile=ShapeProfile(), video=VIDEO, tensorrt_version="10.13.3.9",
                              compute_capability="sm90"), **changes)


def tiny_graph(path: Path, batch: int | str = 1, qdq: bool = False) -> Path:
    """A small real ONNX graph with the denoiser's input names (velocity = hidden_states, or its Q/DQ round trip)."""
    inputs = [helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, [batch, 10, 9, 16, 16]),
              helper.make_tensor_value_info("timestep", TensorProto.FLOAT, [batch]),
              helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, [batch, 1, 32])]
    output = helper.make_tensor_value_info("velocity", TensorProto.FLOAT, [batch, 10, 9, 16, 16])
    if qdq:
        nodes = [helper.make_node("QuantizeLinear", ["hidden_states", "scale", "zero"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["velocity"])]
        weights = [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.05]),
                   helper.make_tensor("zero", TensorProto.INT8, [], [0])]
    else:
        nodes, weights = [helper.make_node("Identity", ["hidden_states"], ["velocity"])], []
    model = helper.make_model(helper.make_graph(nodes, "tiny", inputs, [output], weights),
                              opset_imports=[helper.make_opsetid("", 20)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def stand_in_tensorrt(version="10.9.0.34", parse_errors=(), build_fails=False, steps=(3, 4)):
    """stand-in for tensorrt: tests PVTT's control flow only, not TensorRT.

    It has the TensorRT 10 Python names PVTT calls, records what PVTT asked for (flags, shapes,
    workspace, timing cache) and drives the progress monitor through an outer phase of
    ``steps[0]`` steps, each with an inner phase of ``steps[1]`` steps, stopping when
    ``step_complete`` returns False, as TensorRT's builder does.
    """
    record = {"flags": [], "shapes": {}, "workspace": None, "timing_cache_in": None}

    class IProgressMonitor:
        def __init__(self):
            pass

    class Logger:
        WARNING = "warning"

        def __init__(self, severity):
            self.severity = severity

    class Parser:
        def __init__(self, network, _logger):
            self.network, self.num_errors = network, len(parse_errors)

        def get_error(self, index):
            return parse_errors[index]

        def parse_from_file(self, path):
            for value in onnx.load(path).graph.input:
                dims = tuple(d.dim_value or -1 for d in value.type.tensor_type.shape.dim)
                self.network.inputs.append(SimpleNamespace(name=value.name, shape=dims))
            return not parse_errors

    class Config:
        progress_monitor = None

        def set_memory_pool_limit(self, pool, size):
            record["workspace"] = (pool, size)

        def set_flag(self, flag):
            record["flags"].append(flag)

        def add_optimization_profile(self, profile):
            record["profile_added"] = profile

        def create_timing_cache(self, data):
            record["timing_cache_in"] = bytes(data)
            return SimpleNamespace(serialize=lambda: bytes(data) + b"+timings")

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing_cache = cache

        def get_timing_cache(self):
            return self.timing_cache

    def build(network, config):
        monitor = config.progress_monitor
        monitor.phase_start("Building engine", None, steps[0])
        for outer in range(steps[0]):
            monitor.phase_start("Timing layers", "Building engine", steps[1])
            for inner in range(steps[1]):
                if not monitor.step_complete("Timing layers", inner):
                    return None
            monitor.phase_finish("Timing layers")
            if not monitor.step_complete("Building engine", outer):
                return None
        monitor.phase_finish("Building engine")
        return None if build_fails else bytearray(b"stand-in engine")

    class Network:
        def __init__(self):
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, index):
            return self.inputs[index]

    def create_network(flags):
        record["network_flags"] = flags
        return Network()

    def set_shape(name, low, opt, high):
        record["shapes"][name] = (low, opt, high)

    builder = SimpleNamespace(create_network=create_network, create_builder_config=Config,
                              create_optimization_profile=lambda: SimpleNamespace(set_shape=set_shape),
                              build_serialized_network=build)
    return SimpleNamespace(
        __version__=version, record=record, IProgressMonitor=IProgressMonitor, Logger=Logger,
        Builder=lambda _logger: builder, OnnxParser=Parser,
        MemoryPoolType=SimpleNamespace(WORKSPACE="workspace"),
        BuilderFlag=SimpleNamespace(FP16="FP16", BF16="BF16", INT8="INT8", FP8="FP8"))


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# --- names, sidecars and the cache (PVTT's own code, no TensorRT involved) ---------------------------

def test_engine_name_carries_everything_an_engine_depends_on():
    assert spec().file_name == "pvtt_student_4step-1de7976c9041-fp16-static-1x9x16x16-trt10.13.3.9-sm90.engine"
    assert spec(profile=ShapeProfile.dynamic(1, 2, 4), precision="bf16", compute_capability="sm89").file_name == \
        "pvtt_student_4step-1de7976c9041-bf16-dynamic-1-2-4x9x16x16-trt10.13.3.9-sm89.engine"
    assert "-onnx5a5a5a5a-" in spec(precision="int8", custom_onnx_sha256="5a" * 32).file_name
    assert spec(checkpoint="Wan2.1 VACE/1.3B").file_name.startswith("Wan2.1_VACE_1.3B-")
    variants = [spec(checkpoint_sha256="ff" * 32), spec(precision="fp8"), spec(profile=ShapeProfile.static(2)),
                spec(video={**VIDEO, "frames": 17}), spec(tensorrt_version="10.14.1.48"),
                spec(compute_capability="sm120"), spec(custom_onnx_sha256="12" * 32)]
    assert len({v.file_name for v in variants} | {spec().file_name}) == len(variants) + 1


def test_engine_folder_is_tensorrt_pvtt_under_the_models_folder(tmp_path):
    assert engine_dir(tmp_path) == tmp_path / "tensorrt" / "pvtt"
    assert engine_dir() == Path("models") / "tensorrt" / "pvtt"


def test_sidecar_describes_the_engine_and_lookup_reuses_it(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    path = cache.store(spec(), b"engine bytes", {"build_seconds": 12.5, "workspace_bytes": None,
                                                 "onnx_sha256": "cd" * 32, "gpu": "NVIDIA H100"})
    record = read_sidecar(path)
    assert record["checkpoint_sha256"] == spec().checkpoint_sha256 and record["precision"] == "fp16"
    assert record["profile"] == {"min_batch": 1, "opt_batch": 1, "max_batch": 1}
    assert record["profile_tag"] == "static-1x9x16x16" and record["video"] == VIDEO
    assert record["tensorrt_version"] == "10.13.3.9" and record["compute_capability"] == "sm90"
    assert record["engine"] == path.name and record["engine_bytes"] == len(b"engine bytes")
    assert record["build_seconds"] == 12.5 and record["onnx_sha256"] == "cd" * 32
    caplog.set_level(logging.INFO, logger="PVTT")
    assert cache.lookup(spec()) == path
    assert "reusing TensorRT engine" in caplog.text
    assert files_in(tmp_path) == sorted([path.name, sidecar_path(path).name])  # no temp files left


@pytest.mark.parametrize("field, value", [("tensorrt_version", "10.8.0.43"), ("compute_capability", "sm89"),
                                          ("checkpoint_sha256", "1de7976c9041" + "cd" * 26)])
def test_a_sidecar_from_another_setup_at_the_same_name_means_rebuild(tmp_path, caplog, field, value):
    """Same file name but the sidecar records another TensorRT, GPU or (same short hash) checkpoint."""
    cache = EngineCache(tmp_path)
    path = cache.store(replace(spec(), **{field: value}), b"engine", {})
    path.rename(cache.engine_path(spec()))
    sidecar_path(path).rename(sidecar_path(cache.engine_path(spec())))
    caplog.set_level(logging.INFO, logger="PVTT")
    assert cache.lookup(spec()) is None
    assert "does not match this setup" in caplog.text and f"{field} {value}" in caplog.text


def test_engines_built_elsewhere_are_named_in_the_log_and_not_used(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    cache.store(spec(tensorrt_version="10.8.0.43", compute_capability="sm89"), b"old engine", {})
    caplog.set_level(logging.INFO, logger="PVTT")
    assert cache.lookup(spec()) is None
    assert "built for TensorRT 10.8.0.43 on sm89" in caplog.text and "TensorRT 10.13.3.9 on sm90" in caplog.text


def test_missing_sidecar_or_changed_engine_means_rebuild(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    path = cache.store(spec(), b"engine bytes", {})
    path.write_bytes(b"engine")  # size no longer the one recorded
    caplog.set_level(logging.INFO, logger="PVTT")
    assert cache.lookup(spec()) is None and "engine size 6 bytes" in caplog.text
    sidecar_path(path).unlink()
    assert cache.lookup(spec()) is None and "no readable sidecar" in caplog.text


# --- precision and environment checks ------------------------------------------------------------

def test_precision_needs_the_gpu_architecture_for_it():
    check_precision("fp16", "sm75")
    check_precision("bf16", "sm80")
    check_precision("fp8", "sm89")
    check_precision("fp8", "sm120")
    with pytest.raises(TensorRTUnavailable, match="sm80 or newer; this GPU is sm75. Build an fp16 engine"):
        check_precision("bf16", "sm75")
    with pytest.raises(TensorRTUnavailable, match="sm89"):
        check_precision("fp8", "sm86")


def test_qdq_detection_on_tiny_graphs(tmp_path):
    assert not has_qdq(tiny_graph(tmp_path / "plain.onnx"))
    assert has_qdq(tiny_graph(tmp_path / "qdq.onnx", qdq=True))


def test_arguments_are_checked_before_anything_runs(tmp_path):
    student = load_model(STUDENT)
    with pytest.raises(ValueError, match="unknown TensorRT precision 'fp4'"):
        find_or_build_engine(student, "fp4", models_dir=tmp_path)
    with pytest.raises(ValueError, match="int8 engines need explicit quantisation: pass onnx_path"):
        find_or_build_engine(student, "int8", models_dir=tmp_path)
    with pytest.raises(ValueError, match="QuantizeLinear/DequantizeLinear"):
        find_or_build_engine(student, "fp8", models_dir=tmp_path, onnx_path=tiny_graph(tmp_path / "plain.onnx"))
    assert files_in(engine_dir(tmp_path)) == []


def test_missing_tensorrt_package_is_named_with_install_and_fallback(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # what Python does when tensorrt is not installed
    with pytest.raises(TensorRTUnavailable) as err:
        require_tensorrt()
    message = str(err.value)
    assert "the tensorrt package is not installed or does not load" in message
    assert 'pip install "tensorrt-cu12>=10,<11"' in message and "tensorrt-cu13" in message
    assert "ONNX Runtime backend" in message and "eager PyTorch model" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with a CUDA GPU cannot show the missing-GPU error")
def test_missing_cuda_is_named_even_with_tensorrt_importable(monkeypatch):
    """stand-in for tensorrt: tests PVTT's control flow only, not TensorRT. With an importable
    tensorrt, the error names only the missing GPU; with TensorRT 11 it names the version too."""
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in_tensorrt())
    with pytest.raises(TensorRTUnavailable) as err:
        require_tensorrt()
    assert "no CUDA GPU is available to PyTorch" in str(err.value) and "not installed" not in str(err.value)
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in_tensorrt(version="11.0.0.1"))
    with pytest.raises(TensorRTUnavailable, match="TensorRT 11.0.0.1 is installed, but PVTT needs TensorRT 10.x"):
        require_tensorrt()


@pytest.mark.skipif(MISSING is None, reason="TensorRT and CUDA are available here; the real tests below run instead")
def test_without_tensorrt_nothing_is_built_and_the_error_names_the_fallback(tmp_path):
    student = load_model(STUDENT)
    for attempt in (lambda: find_or_build_engine(student, models_dir=tmp_path),
                    lambda: tensorrt_accelerate(student, models_dir=tmp_path),
                    lambda: TrtDenoiser(tmp_path / "any.engine")):
        with pytest.raises(TensorRTUnavailable, match="ONNX Runtime backend"):
            attempt()
    assert files_in(tmp_path) == []


# --- the build's control flow (stand-in for tensorrt) --------------------------------------------------

def test_build_writes_engine_sidecar_and_timing_cache(tmp_path):
    """stand-in for tensorrt: tests PVTT's control flow only, not TensorRT. A complete build stores
    the engine, its sidecar and the timing cache, reports progress up to 100 % and passes
    precision, shapes and workspace to the builder."""
    trt = stand_in_tensorrt()
    graph = tiny_graph(tmp_path / "graph.onnx")
    cache = EngineCache(tmp_path / "engines")
    seen = []
    path = build_engine(trt, cache, spec(precision="int8"), graph, workspace_bytes=2**30,
                        progress=lambda done, total: seen.append(done), details={"gpu": "test"})
    assert path == cache.engine_path(spec(precision="int8")) and path.read_bytes() == b"stand-in engine"
    assert trt.record["flags"] == ["INT8", "FP16"] and trt.record["workspace"] == ("workspace", 2**30)
    assert trt.record["network_flags"] == 0
    assert trt.record["shapes"]["hidden_states"] == ((1, 10, 9, 16, 16),) * 3
    assert seen == [8, 16, 25, 33, 41, 50, 58, 66, 75, 83, 91, 100, 100]
    record = read_sidecar(path)
    assert record["onnx_sha256"] == onnx_sha256(graph) and record["gpu"] == "test"
    assert record["workspace_bytes"] == 2**30 and record["build_seconds"] >= 0 and record["built_at"]
    timing = cache.timing_cache_path(spec())
    assert timing.read_bytes() == b"+timings"
    assert files_in(cache.folder) == sorted([path.name, sidecar_path(path).name, timing.name])
    build_engine(trt, cache, spec(), graph)  # the next build starts from the stored timing cache
    assert trt.record["timing_cache_in"] == b"+timings"


def test_dynamic_profile_sets_min_opt_max_batch(tmp_path):
    """stand-in for tensorrt: tests PVTT's control flow only, not TensorRT. A dynamic-batch graph gets
    one optimisation profile at min/opt/max batch; a fixed-batch graph refuses a dynamic profile."""
    trt = stand_in_tensorrt()
    dynamic = spec(profile=ShapeProfile.dynamic(1, 2, 4))
    build_engine(trt, EngineCache(tmp_path), dynamic, tiny_graph(tmp_path / "dynamic.onnx", batch="batch"))
    assert trt.record["shapes"]["timestep"] == ((1,), (2,), (4,))
    assert trt.record["shapes"]["encoder_hidden_states"] == ((1, 1, 32), (2, 1, 32), (4, 1, 32))
    with pytest.raises(EngineBuildError, match="fixed batch of 1"):
        build_engine(stand_in_tensorrt(), EngineCache(tmp_path / "other"), dynamic, tiny_graph(tmp_path / "s.onnx"))
    assert files_in(tmp_path / "other") == []


def test_cancelled_build_leaves_no_partial_files(tmp_path):
    """stand-in for tensorrt: tests PVTT's control flow only, not TensorRT. cancelled() turning True
    stops the build at the next step; no engine, sidecar, timing cache or temp file is written,
    and engines already in the folder are untouched."""
    cache = EngineCache(tmp_path)
    kept = cache.store(spec(precision="bf16"), b"an earlier engine", {})
    before = files_in(tmp_path)
    polls = iter(range(100))
    with pytest.raises(EngineBuildCancelled, match="cancelled; nothing was written"):
        build_engine(stand_in_tensorrt(), cache, spec(), tiny_graph(tmp_path.parent / "g.onnx"),
                     cancelled=lambda: next(polls) >= 5)
    assert next(polls) == 6  # polled once per completed step, stopped at the sixth
    assert files_in(tmp_path) == before and kept.read_bytes() == b"an earlier engine"


def test_failed_builds_leave_no_partial_files(tmp_path):
    """stand-in for tensorrt: tests PVTT's control flow only, not TensorRT. A graph the parser rejects,
    a build that returns nothing and a progress callback that raises (ComfyUI's interrupt) all
    end with an error and an empty folder."""
    graph = tiny_graph(tmp_path / "graph.onnx")
    cache = EngineCache(tmp_path / "engines")
    with pytest.raises(EngineBuildError, match="importRMSNormalization: no importer"):
        build_engine(stand_in_tensorrt(parse_errors=("importRMSNormalization: no importer",)), cache, spec(), graph)
    with pytest.raises(EngineBuildError, match="could not build .* nothing was written"):
        build_engine(stand_in_tensorrt(build_fails=True), cache, spec(), graph)

    class Interrupted(Exception):
        pass

    def progress(done, total):
        raise Interrupted()

    with pytest.raises(Interrupted):
        build_engine(stand_in_tensorrt(), cache, spec(), graph, progress=progress)
    assert files_in(cache.folder) == []


# --- real TensorRT (GPU machines only) -------------------------------------------------------------

@pytest.fixture(scope="module")
def gpu_student():
    return load_model(STUDENT, device="cuda")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def relative_error(loaded, denoiser, batch: int) -> float:
    inputs = capture_denoiser_inputs(loaded, batch)
    with torch.no_grad():
        eager = get_denoiser(loaded.model)(**inputs, return_dict=False)[0]
        fast = denoiser(**inputs, return_dict=False)[0]
    assert fast.shape == eager.shape and fast.device == eager.device
    return float((fast - eager).abs().max() / eager.abs().max())


@needs_tensorrt
def test_real_engine_builds_runs_like_eager_and_is_reused(gpu_student, tmp_path, caplog):
    import tensorrt as trt

    seen = []
    path = find_or_build_engine(gpu_student, "fp16", models_dir=tmp_path, progress=lambda d, t: seen.append((d, t)))
    major, minor = torch.cuda.get_device_capability()
    capability = f"sm{major}{minor}"
    assert path == engine_dir(tmp_path) / (f"pvtt_student_4step-{checkpoint_sha256(STUDENT)[:12]}-fp16-"
                                           f"static-1x9x16x16-trt{trt.__version__}-{capability}.engine")
    record = read_sidecar(path)
    assert record["engine_bytes"] == path.stat().st_size and record["compute_capability"] == capability
    assert record["onnx_sha256"] == onnx_sha256(record["onnx"]) and seen[-1] == (100, 100)
    stamp = path.stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="PVTT")
    assert find_or_build_engine(gpu_student, "fp16", models_dir=tmp_path) == path
    assert path.stat().st_mtime_ns == stamp and "reusing TensorRT engine" in caplog.text

    accelerated = tensorrt_accelerate(gpu_student, "fp16", models_dir=tmp_path)
    denoiser = get_denoiser(accelerated.model)
    assert isinstance(denoiser, TrtDenoiser) and denoiser.dtype == torch.float32
    assert relative_error(gpu_student, denoiser, 1) < 2e-2  # fp16 kernels vs fp32 eager
    clips = {k: v.cuda() if torch.is_tensor(v) else v for k, v in calibration_batch(gpu_student, 1, offset=5).items()}
    cond = condition_batch(gpu_student.model, clips)
    frames = [m.decode(sample_from_metadata(m, cond, gpu_student.metadata, None, torch.Generator().manual_seed(3)))
              for m in (gpu_student.model, accelerated.model)]
    assert psnr(*frames) > 30
    with pytest.raises(ShapeOutsideProfile, match="static batch 1.*ONNX Runtime backend"):
        denoiser(**capture_denoiser_inputs(gpu_student, 2), return_dict=False)


@needs_tensorrt
def test_real_dynamic_engine_serves_its_batch_range(gpu_student, tmp_path):
    accelerated = tensorrt_accelerate(gpu_student, "fp16", ShapeProfile.dynamic(1, 2, 3), models_dir=tmp_path)
    denoiser = get_denoiser(accelerated.model)
    for batch in (1, 2, 3):
        assert relative_error(gpu_student, denoiser, batch) < 2e-2
    with pytest.raises(ShapeOutsideProfile, match=r"batch 1 to 3 \(tuned for 2\)"):
        denoiser(**capture_denoiser_inputs(gpu_student, 4), return_dict=False)


@needs_tensorrt
def test_real_build_cancel_leaves_no_engine(gpu_student, tmp_path):
    with pytest.raises(EngineBuildCancelled):
        find_or_build_engine(gpu_student, "fp16", models_dir=tmp_path, cancelled=lambda: True)
    folder = engine_dir(tmp_path)
    assert [p.name for p in folder.iterdir() if p.name != "onnx"] == []  # the exported graph may stay
