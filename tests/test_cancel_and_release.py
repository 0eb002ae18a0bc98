"""Cancel and unload, through the same ``comfy.model_management`` calls ComfyUI's executor makes.

A stand-in ``comfy`` package (only the interrupt flag, the exception and the device) is put in
``sys.modules``, so the nodes' real runtime path runs: ``runtime.check_interrupted`` asks
``throw_exception_if_processing_interrupted`` exactly as inside ComfyUI. The user's Cancel is
simulated by setting the flag from inside a denoiser call, i.e. while a step is running; the node
must stop at the end of that step: no further model call, no output.
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
import types
import weakref

import pytest
import torch
from _comfy_pack import PACKAGE
from _node_fixtures import TINY_NAME, outputs, run

model_nodes = importlib.import_module(f"{PACKAGE}.nodes.model_nodes")
denoiser_mod = importlib.import_module(f"{PACKAGE}.pvtt_accel.denoiser")


class InterruptProcessingException(Exception):
    """ComfyUI's exception for Cancel (comfy.model_management.InterruptProcessingException)."""


@pytest.fixture
def comfy(monkeypatch):
    """A stand-in ``comfy.model_management`` with ComfyUI's interrupt API; ``.cancel()`` presses Cancel."""
    mm = types.ModuleType("comfy.model_management")
    mm.flag = False
    mm.InterruptProcessingException = InterruptProcessingException
    mm.processing_interrupted = lambda: mm.flag
    mm.get_torch_device = lambda: torch.device("cpu")

    def throw_exception_if_processing_interrupted():
        if mm.flag:
            mm.flag = False  # ComfyUI clears the flag when it raises
            raise InterruptProcessingException()

    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    package = types.ModuleType("comfy")
    package.model_management = mm
    monkeypatch.setitem(sys.modules, "comfy", package)
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    mm.cancel = lambda: setattr(mm, "flag", True)
    return mm


def count_calls(loaded, cancel_during: int, comfy):
    """Count the denoiser's calls and press Cancel while call ``cancel_during`` runs."""
    calls = []

    def hook(_module, _args, _kwargs):
        calls.append(1)
        if len(calls) == cancel_during:
            comfy.cancel()

    handle = denoiser_mod.get_denoiser(loaded.model).register_forward_pre_hook(hook, with_kwargs=True)
    return calls, handle


def inputs():
    template = torch.rand(9, 16, 16, 3) * 0.6 + 0.2
    mask = torch.zeros(9, 16, 16)
    mask[:, 4:12, 4:12] = 1
    product = torch.ones(1, 16, 16, 3) * 0.9
    product[:, 4:12, 4:12] = torch.tensor([0.8, 0.2, 0.1])
    return template, mask, product


@pytest.mark.parametrize("cancel_during", [1, 3, 7])
def test_cancel_stops_template_transfer_at_the_end_of_the_running_step(model, comfy, cancel_during):
    template, mask, product = inputs()
    calls, handle = count_calls(model, cancel_during, comfy)
    try:
        with pytest.raises(InterruptProcessingException):
            run("PVTTTemplateTransfer", model=model, template_video=template, mask=mask, product_image=product,
                steps=8, seed=0, preserve_background=True)
    finally:
        handle.remove()
    assert len(calls) == cancel_during  # the running step finished; no further step started
    assert comfy.flag is False


def test_cancel_stops_compare_models_before_the_next_model(model, comfy):
    template, mask, product = inputs()
    calls, handle = count_calls(model, 1, comfy)
    try:
        with pytest.raises(InterruptProcessingException):
            run("PVTTCompareModels", template_video=template, mask=mask, product_image=product, model_a=model,
                seed=0, model_b=model, model_c=model)
    finally:
        handle.remove()
    assert len(calls) == 1  # 3 models x 2 steps without Cancel


def test_cancel_stops_the_accelerate_warm_up_within_one_step(model, comfy, monkeypatch):
    accel = importlib.import_module(f"{PACKAGE}.pvtt_accel.accelerate")
    real, watched = accel.accelerate, []

    def accelerate_and_watch(loaded, options):
        fast = real(loaded, options)
        watched.append(count_calls(fast, 1, comfy))
        return fast

    monkeypatch.setattr(accel, "accelerate", accelerate_and_watch)
    try:
        with pytest.raises(InterruptProcessingException):
            run("PVTTAccelerate", model=model, attention="sdpa", precision="bf16", compile="off", int8="off",
                token_merging=0.0)
    finally:
        watched[0][1].remove()
    assert len(watched[0][0]) == 1  # the warm-up sample has 2 steps; Cancel in the first stops it there


def test_cancel_stops_video_loading_within_one_progress_tick(folders, comfy, monkeypatch):
    video_io = importlib.import_module(f"{PACKAGE}.pvtt_train.media.video_io")
    decoded = []
    real = video_io.cv2.cvtColor

    def convert(*args):
        decoded.append(1)
        if len(decoded) == 3:
            comfy.cancel()
        return real(*args)

    monkeypatch.setattr(video_io.cv2, "cvtColor", convert)
    with pytest.raises(InterruptProcessingException):
        run("PVTTLoadVideo", video="samples/pvtt_template.mp4", frame_load_cap=0, skip_first_frames=0,
            select_every_nth=1)
    assert len(decoded) == 3  # of 9 frames


def test_a_cancelled_transfer_leaves_the_model_usable(model, comfy):
    template, mask, product = inputs()
    calls, handle = count_calls(model, 1, comfy)
    with pytest.raises(InterruptProcessingException):
        run("PVTTTemplateTransfer", model=model, template_video=template, mask=mask, product_image=product, steps=0,
            seed=0, preserve_background=True)
    handle.remove()
    assert len(calls) == 1
    after = outputs(run("PVTTTemplateTransfer", model=model, template_video=template, mask=mask,
                        product_image=product, steps=0, seed=0, preserve_background=True))[0]
    again = outputs(run("PVTTTemplateTransfer", model=model, template_video=template, mask=mask,
                        product_image=product, steps=0, seed=0, preserve_background=True))[0]
    assert torch.equal(after, again) and torch.isfinite(after).all()


# --- release --------------------------------------------------------------------------------------

def test_loader_shares_a_model_while_comfyui_holds_it(folders):
    first = run("PVTTLoadModel", model_name=TINY_NAME)[0]
    assert run("PVTTLoadModel", model_name=TINY_NAME)[0] is first


def test_model_is_released_when_comfyui_lets_go_of_it(folders, caplog):
    """ComfyUI's "Free model and node cache" drops the node outputs and collects garbage; PVTT must
    hold no reference of its own, so the weights go with them."""
    loaded = run("PVTTLoadModel", model_name=TINY_NAME)[0]
    weights = weakref.ref(next(loaded.model.parameters()))
    key_count = len(model_nodes._CACHE)
    assert key_count >= 1
    with caplog.at_level(logging.INFO, logger="[PVTT]"):
        del loaded
        gc.collect()
    assert weights() is None, "the weights are still referenced after ComfyUI dropped the model"
    assert len(model_nodes._CACHE) == key_count - 1
    assert any(f"released {TINY_NAME}" in r.getMessage() for r in caplog.records)
    assert run("PVTTLoadModel", model_name=TINY_NAME)[0] is not None  # loads again afterwards


def test_accelerated_and_onnx_models_release_the_weights_too(folders):
    loaded = run("PVTTLoadModel", model_name=TINY_NAME)[0]
    fast = run("PVTTAccelerate", model=loaded, attention="sdpa", precision="bf16", compile="off", int8="off",
               token_merging=0.0)["result"][0]
    weights = weakref.ref(next(loaded.model.parameters()))
    del loaded, fast
    gc.collect()
    assert weights() is None


def test_cancel_stops_a_tensorrt_build_at_the_next_tick_and_leaves_no_engine(model, comfy, folders, monkeypatch):
    """stand-in for tensorrt (tests/test_tensorrt_engine.py): it drives the node's real build path
    (ONNX export, engine cache, progress monitor) without a GPU. Cancel pressed during the third
    progress tick stops the build at that tick, ComfyUI gets its interrupt (not an error), and no
    engine, sidecar, timing cache or temp file is left."""
    from test_tensorrt_engine import stand_in_tensorrt

    trt_mod = importlib.import_module(f"{PACKAGE}.pvtt_accel.tensorrt_engine")
    monkeypatch.setenv("PVTT_MODELS_DIR", str(folders / "models" / "pvtt"))
    monkeypatch.setattr(trt_mod, "require_tensorrt", lambda device=None: (stand_in_tensorrt(), "sm90"))
    monkeypatch.setattr(trt_mod.torch.cuda, "get_device_name", lambda device=None: "stand-in GPU")
    polls = []

    def processing_interrupted():  # ComfyUI's flag, polled once per build tick; Cancel lands on the third
        polls.append(1)
        if len(polls) == 3:
            comfy.cancel()
        return comfy.flag

    comfy.processing_interrupted = processing_interrupted
    with pytest.raises(InterruptProcessingException):
        run("PVTTTensorRT", model=model, precision="fp16", batch_profile="auto", workspace_gb=1.0)
    assert len(polls) == 3  # of 3 x 4 build steps: stopped at the tick Cancel was seen
    engines = folders / "models" / "tensorrt" / "pvtt"
    assert not engines.exists() or [p.name for p in engines.rglob("*") if p.is_file()] == []
    exported = list((folders / "models" / "onnx" / "pvtt").glob("*.onnx"))
    assert len(exported) == 1  # the finished ONNX export is kept for the next try
