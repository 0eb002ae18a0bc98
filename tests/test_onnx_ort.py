"""ONNX export and the ONNX Runtime backend, on the shipped 4-step student and a tiny Wan-VACE folder.

Everything here is real: torch.onnx (dynamo) exports, onnx.checker, onnxruntime on the CPU. Exports
take a few seconds each, so the static and dynamic graphs are exported once per module.
"""

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import onnx
import pytest
import torch
from _wan_fixtures import make_wan_vace_folder

from pvtt_accel.denoiser import calibration_batch, capture_denoiser_inputs, get_denoiser
from pvtt_accel.onnx_export import (
    OPSET,
    ShapeOutsideProfile,
    ShapeProfile,
    cached_export_path,
    check_parity,
    checkpoint_sha256,
    export_denoiser_onnx,
    sidecar_path,
)
from pvtt_accel.ort_backend import OrtDenoiser, ort_accelerate
from pvtt_train.data.batches import condition_batch
from pvtt_train.models.checkpoint import save_checkpoint
from pvtt_train.models.loading import load_model
from pvtt_train.sampling.samplers import sample_from_metadata

STUDENT = Path(__file__).resolve().parents[1] / "models_shipped" / "pvtt_student_4step.safetensors"


@pytest.fixture(scope="module")
def student():
    return load_model(STUDENT)


@pytest.fixture(scope="module")
def ort_cache(student, tmp_path_factory):
    """The cache folder and the student accelerated through it (one static batch-1 export)."""
    folder = tmp_path_factory.mktemp("onnx_cache")
    return folder, ort_accelerate(student, folder)


@pytest.fixture(scope="module")
def dynamic_export(student, tmp_path_factory):
    return export_denoiser_onnx(student, tmp_path_factory.mktemp("dynamic") / "student.onnx",
                                ShapeProfile.dynamic(min_batch=1, opt_batch=2, max_batch=3))


def graph_io(path: Path) -> tuple[dict, dict]:
    graph = onnx.load(str(path)).graph

    def dims(values):
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    return dims(graph.input), dims(graph.output)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def test_static_export_is_a_checked_graph_at_the_checkpoints_exact_shapes(ort_cache):
    folder, accelerated = ort_cache
    path = Path(accelerated.metadata["acceleration"]["onnx"])
    onnx.checker.check_model(str(path))
    inputs, outputs = graph_io(path)
    assert inputs == {"hidden_states": [1, 10, 9, 16, 16], "timestep": [1], "encoder_hidden_states": [1, 1, 32]}
    assert outputs == {"velocity": [1, 3, 9, 16, 16]}
    assert {(o.domain, o.version) for o in onnx.load(str(path)).opset_import} >= {("", OPSET)}
    # the atomic write left the graph and its sidecar, no staging folder or temp file
    assert sorted(p.name for p in folder.iterdir()) == sorted([path.name, sidecar_path(path).name])
    export = get_denoiser(accelerated.model).export
    assert export.input_shapes == inputs and export.checkpoint_sha256 == checkpoint_sha256(STUDENT)
    assert not export.external_data and path.name.startswith("pvtt_student_4step-static-1x9x16x16-")


def test_dynamic_export_makes_only_the_batch_dim_symbolic(dynamic_export):
    inputs, outputs = graph_io(dynamic_export.path)
    batch = inputs["hidden_states"][0]
    assert isinstance(batch, str) and batch
    assert inputs == {"hidden_states": [batch, 10, 9, 16, 16], "timestep": [batch],
                      "encoder_hidden_states": [batch, 1, 32]}
    assert outputs == {"velocity": [batch, 3, 9, 16, 16]}
    assert dynamic_export.input_shapes == inputs
    assert dynamic_export.shape_bounds()["hidden_states"] == ((1, 10, 9, 16, 16), (3, 10, 9, 16, 16))


def test_onnxruntime_matches_the_eager_denoiser(student, ort_cache, dynamic_export):
    static = check_parity(student, ort_cache[1].metadata["acceleration"]["onnx"], batch=1)
    assert static.max_abs < 1e-4 and static.max_rel < 1e-5
    for batch in (1, 3):  # both ends of the dynamic profile
        assert check_parity(student, dynamic_export.path, batch=batch).max_abs < 1e-4


def test_ort_sampling_matches_eager_sampling(student, ort_cache):
    accelerated = ort_cache[1]
    assert isinstance(get_denoiser(accelerated.model), OrtDenoiser)
    assert not isinstance(get_denoiser(student.model), OrtDenoiser)  # the caller's model is not modified
    assert accelerated.metadata["acceleration"]["backend"] == "onnxruntime"
    cond = condition_batch(student.model, calibration_batch(student, 1, offset=5))
    frames = [model.decode(sample_from_metadata(model, cond, student.metadata, None, torch.Generator().manual_seed(3)))
              for model in (student.model, accelerated.model)]
    assert student.metadata["sampler"]["steps"] == 4
    assert psnr(*frames) > 60


def test_a_shape_outside_the_profile_says_what_was_exported_and_how_to_reexport(student, ort_cache,
                                                                                 dynamic_export):
    with pytest.raises(ShapeOutsideProfile) as err:
        get_denoiser(ort_cache[1].model)(**capture_denoiser_inputs(student, 2), return_dict=False)
    message = str(err.value)
    assert "hidden_states has shape 2x10x9x16x16" in message and "static batch 1" in message
    assert "9 frames x 16x16" in message and "ShapeProfile.dynamic(" in message and "eager" in message
    with pytest.raises(ShapeOutsideProfile, match=r"batch 1 to 3 \(tuned for 2\)"):
        OrtDenoiser(dynamic_export)(**capture_denoiser_inputs(student, 4), return_dict=False)


def test_second_call_reuses_the_cached_graph(student, ort_cache, caplog):
    folder, first = ort_cache
    path = Path(first.metadata["acceleration"]["onnx"])
    stamps = {p: p.stat().st_mtime_ns for p in (path, sidecar_path(path))}
    caplog.set_level(logging.INFO, logger="PVTT")
    again = ort_accelerate(student, folder)
    assert Path(again.metadata["acceleration"]["onnx"]) == path
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert "reusing the exported graph" in caplog.text
    record = json.loads(sidecar_path(path).read_text())
    assert record["key"]["checkpoint_sha256"] == hashlib.sha256(STUDENT.read_bytes()).hexdigest()
    assert record["key"]["torch"] == torch.__version__ and record["key"]["profile"]["max_batch"] == 1
    assert record["onnx_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_stale_sidecar_makes_the_cache_export_again(student, ort_cache):
    """A graph exported by another torch version (its sidecar says so) is replaced, not reused.
    Runs on the module's cache (saves an export); the entry it leaves is again a valid one."""
    folder, first = ort_cache
    path = Path(first.metadata["acceleration"]["onnx"])
    record = json.loads(sidecar_path(path).read_text())
    record["key"]["torch"] = "2.0.0"
    sidecar_path(path).write_text(json.dumps(record))
    os.utime(path, ns=(0, 0))
    again = ort_accelerate(student, folder)
    assert Path(again.metadata["acceleration"]["onnx"]) == path and path.stat().st_mtime_ns > 0
    assert json.loads(sidecar_path(path).read_text())["key"]["torch"] == torch.__version__


def test_cache_key_follows_the_checkpoint_contents(student, tmp_path):
    profile = ShapeProfile()
    edited = load_model(STUDENT)
    edited.model.context.data += 0.01
    metadata = {k: v for k, v in student.metadata.items() if k not in ("format", "format_version", "model")}
    edited_path = save_checkpoint(tmp_path / "pvtt_student_4step.safetensors", edited.model, metadata)
    edited = load_model(edited_path)
    assert checkpoint_sha256(edited_path) != checkpoint_sha256(STUDENT)
    assert cached_export_path(edited, tmp_path, profile) != cached_export_path(student, tmp_path, profile)
    assert cached_export_path(student, tmp_path, ShapeProfile.dynamic()) != cached_export_path(student, tmp_path,
                                                                                               profile)


def test_wan_vace_denoiser_exports_and_runs_in_onnxruntime(tmp_path):
    """The production architecture: four graph inputs (with the VACE control) and the model's
    velocity through OrtDenoiser equal to eager."""
    loaded = load_model(make_wan_vace_folder(tmp_path / "wan"))
    accelerated = ort_accelerate(loaded, tmp_path / "cache")
    export = get_denoiser(accelerated.model).export
    assert export.input_names == ("hidden_states", "timestep", "encoder_hidden_states", "control_hidden_states")
    assert export.path.name.startswith("wan-static-1x9x32x32-")
    assert check_parity(loaded, export.path).max_abs < 1e-4
    cond = condition_batch(loaded.model, calibration_batch(loaded, 1))
    x = torch.randn(cond.background.shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.6])
    with torch.no_grad():
        eager, fast = (m.velocity(x, sigma, cond) for m in (loaded.model, accelerated.model))
    assert (eager - fast).abs().max() < 1e-4
