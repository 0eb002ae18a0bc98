"""ONNX Runtime backend: the denoiser as an exported graph run by onnxruntime on the CPU.

The portable accelerated path: it needs no GPU and no compiler, and the same graph is what
TensorRT builds its engines from. ``ort_accelerate`` exports the denoiser once per checkpoint,
profile and exporter version (``onnx_export.cached_export``) and swaps it into the model; the
rest of the pipeline (conditioning, sampler, decoding) runs unchanged in PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .denoiser import LoadedModel, require_pytorch_denoiser, with_denoiser
from .onnx_export import (
    OnnxExport,
    ShapeOutsideProfile,
    ShapeProfile,
    cached_export,
    cpu_session,
    denoiser_inputs,
    shape_mismatch,
)
from .optional import require


class OrtDenoiser(nn.Module):
    """Drop-in denoiser (same keywords, returns a 1-tuple) backed by an onnxruntime session.

    Inputs are fed as float32 CPU arrays (onnxruntime reads contiguous tensors without a copy)
    and the output is moved back to the device of ``hidden_states``. Shapes are checked against
    the exported profile first, so a wrong batch or video size fails with what to do instead of
    an onnxruntime shape error from deep inside the graph.
    """

    def __init__(self, export: OnnxExport, threads: int | None = None):
        super().__init__()
        self.export = export
        self.session = cpu_session(export.path, threads)
        self._bounds = export.shape_bounds()

    @property
    def dtype(self) -> torch.dtype:
        """The graph computes in float32; Wan-VACE casts its inputs to this."""
        return torch.float32

    def forward(self, hidden_states, timestep, encoder_hidden_states, control_hidden_states=None,
                return_dict: bool = False) -> tuple[torch.Tensor]:
        inputs = denoiser_inputs(hidden_states, timestep, encoder_hidden_states, control_hidden_states, return_dict)
        problem = shape_mismatch(inputs, self._bounds)
        if problem:
            video = self.export.video
            raise ShapeOutsideProfile(
                f"ONNX Runtime denoiser: {problem}. {self.export.path.name} was exported for "
                f"{self.export.profile.describe()} at the checkpoint's video size {video['frames']} frames x "
                f"{video['height']}x{video['width']}. Export a profile that covers this batch, e.g. "
                f"ort_accelerate(loaded, cache_dir, profile=ShapeProfile.dynamic(min_batch=1, opt_batch=2, "
                f"max_batch=4)) (frames and size always follow the checkpoint), or run the eager model.")
        feeds = {name: tensor.detach().to("cpu", torch.float32).contiguous().numpy() for name, tensor in inputs.items()}
        out = self.session.run([self.export.output_name], feeds)[0]
        return (torch.from_numpy(out).to(hidden_states.device),)


def ort_accelerate(loaded: LoadedModel, cache_dir: str | Path, profile: ShapeProfile | None = None,
                   threads: int | None = None) -> LoadedModel:
    """``loaded`` with its denoiser running in onnxruntime; the graph is exported to ``cache_dir``
    on first use and reused afterwards (keyed by checkpoint sha256, profile and exporter versions)."""
    require_pytorch_denoiser(loaded, "The ONNX Runtime backend")
    require("The ONNX Runtime backend", "onnxruntime", "onnx", "onnxscript",
            alternative="Or use PVTT Accelerate with its auto settings instead.")
    profile = profile or ShapeProfile()
    export = cached_export(loaded, cache_dir, profile)
    denoiser = OrtDenoiser(export, threads)
    return with_denoiser(loaded, denoiser, {
        "backend": "onnxruntime", "onnx": str(export.path), "profile": profile.tag(export.video),
        "providers": denoiser.session.get_providers(),
        "threads": denoiser.session.get_session_options().intra_op_num_threads,
    })
