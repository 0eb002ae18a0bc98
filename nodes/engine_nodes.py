"""PVTT ONNX Runtime and PVTT TensorRT: the model's transformer as an exported graph or a GPU engine.

Both return a PVTT_MODEL that Template Transfer samples exactly like the loader's model. The
graph (``models/onnx/pvtt``) and the engine (``models/tensorrt/pvtt``) are cached by checkpoint
hash and shape profile (plus TensorRT version and GPU for engines), so only the first run pays.
"""

from __future__ import annotations

import logging

from . import paths
from .managed_models import load_for_sampling
from .runtime import check_interrupted, is_interrupted, progress_bar, torch_device

log = logging.getLogger("[PVTT]")

PROFILES = ["auto", "dynamic batch 1-4"]
PROFILE_TOOLTIP = ("Shapes the graph accepts. auto: exactly what this model samples with (batch 1, or 2 for a "
                   "teacher with classifier-free guidance), fastest. dynamic: batch 1 to 4, for scripts that batch "
                   "clips. Frames and size always follow the checkpoint.")


def shape_profile(model, choice: str):
    """The ShapeProfile for a widget choice; ``auto`` is the batch the checkpoint's sampler calls with."""
    from ..pvtt_accel.onnx_export import ShapeProfile

    sampler = model.sampler
    guided = sampler["kind"] == "euler_cfg" and sampler.get("cfg", 1.0) != 1.0
    if guided and model.metadata["model"]["arch"] == "wan_vace":
        raise ValueError(f"{model.path.name} is a Wan-VACE teacher sampled with CFG {sampler['cfg']}: its "
                         f"unconditional call drops the reference frame, a different shape than one exported graph "
                         f"holds. Export a distilled student (CFG 1) instead, or run the teacher with PVTT Accelerate.")
    if choice == "auto":
        return ShapeProfile.static(2 if guided else 1)
    return ShapeProfile.dynamic()  # batch 1 to 4, tuned for 2


class PVTTOnnxRuntime:
    DESCRIPTION = ("Runs the model's transformer in ONNX Runtime (CPU). The first run exports it to "
                   "models/onnx/pvtt (seconds for the tiny model, minutes for Wan 1.3B); later runs reuse the "
                   "file. Output matches PyTorch to about 1e-6. Works without a compiler or GPU.")
    CATEGORY = "PVTT/acceleration"
    FUNCTION = "load"
    RETURN_TYPES = ("PVTT_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model running in ONNX Runtime; connect it to PVTT Template Transfer.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("PVTT_MODEL", {"tooltip": "The model from PVTT Load Model (not an already accelerated one)."}),
            "batch_profile": (PROFILES, {"default": "auto", "tooltip": PROFILE_TOOLTIP}),
        }}

    def load(self, model, batch_profile):
        from ..pvtt_accel.onnx_export import onnx_dir
        from ..pvtt_accel.ort_backend import ort_accelerate

        load_for_sampling(model)
        fast = ort_accelerate(model, onnx_dir(paths.models_root()), shape_profile(model, batch_profile))
        log.info("ONNX Runtime: %s", fast.metadata["acceleration"]["onnx"])
        return (fast,)


class PVTTTensorRT:
    DESCRIPTION = ("Runs the model's transformer as a TensorRT engine on an NVIDIA GPU. Loads the engine from "
                   "models/tensorrt/pvtt when one matches this checkpoint, precision, shape profile, TensorRT "
                   "version and GPU; otherwise builds it (minutes; progress bar; Cancel stops it and leaves no "
                   "partial file). Needs CUDA and TensorRT 10 (pip install tensorrt-cu12); without them it says "
                   "so; use PVTT Accelerate or PVTT ONNX Runtime instead.")
    CATEGORY = "PVTT/acceleration"
    FUNCTION = "load"
    RETURN_TYPES = ("PVTT_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model running in TensorRT; connect it to PVTT Template Transfer.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("PVTT_MODEL", {"tooltip": "The model from PVTT Load Model (not an already accelerated one)."}),
            "precision": (["fp16", "bf16"], {"default": "fp16", "tooltip":
                "Engine precision. fp16 runs on every RTX/datacenter GPU; bf16 needs Ampere (sm80) or newer. "
                "INT8/FP8 engines need a quantised ONNX graph and are built from Python "
                "(pvtt_accel.tensorrt_engine, onnx_path=...)."}),
            "batch_profile": (PROFILES, {"default": "auto", "tooltip": PROFILE_TOOLTIP}),
            "workspace_gb": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 256.0, "step": 0.5, "tooltip":
                "Most GPU memory TensorRT may use while building, in GiB; 0 = no limit."}),
        }}

    def load(self, model, precision, batch_profile, workspace_gb):
        from ..pvtt_accel.tensorrt_engine import (
            EngineBuildCancelled,
            tensorrt_accelerate,
        )

        load_for_sampling(model)
        bar = progress_bar(100)
        try:
            fast = tensorrt_accelerate(model, precision, shape_profile(model, batch_profile), paths.models_root(),
                                       workspace_gb=workspace_gb or None,
                                       progress=lambda done, total: bar.update_absolute(done, total),
                                       cancelled=is_interrupted, device=torch_device())
        except EngineBuildCancelled:
            check_interrupted()  # report it to ComfyUI as the user's Cancel, not as an error
            raise
        log.info("TensorRT engine: %s", fast.metadata["acceleration"]["engine"])
        return (fast,)
