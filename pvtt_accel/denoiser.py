"""The model's denoiser (its diffusers transformer): find it, capture real inputs for it, swap it.

Every acceleration (compile, bf16, INT8, ONNX Runtime, TensorRT) replaces one module: the
transformer a PVTT model calls once per step (``model.denoiser_attr`` names it: ``backbone`` for
the tiny ``wan_concat`` model, ``transformer`` for Wan-VACE). A replacement takes the same keyword
call (``hidden_states``, ``timestep``, ``encoder_hidden_states`` and, for VACE,
``control_hidden_states``, ``return_dict=False``), returns a 1-tuple, and exposes ``dtype``.
Everything around it (conditioning, sampler, background re-injection, decoding) is unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from ._train import train_module

_batches = train_module("data.batches")
_synthetic = train_module("data.synthetic")
LoadedModel = train_module("models.checkpoint").LoadedModel
condition_batch = _batches.condition_batch

#: Seeds of the synthetic clips used to capture inputs and calibrate (disjoint from training/eval seeds).
CALIBRATION_SEED_BASE = 30_000


def get_denoiser(model: nn.Module) -> nn.Module:
    return getattr(model, model.denoiser_attr)


def require_pytorch_denoiser(loaded: LoadedModel, action: str) -> None:
    """Refuse to stack accelerations: ``action`` needs the checkpoint's own PyTorch transformer."""
    done = loaded.metadata.get("acceleration")
    if done:
        raise ValueError(f"{action} needs the checkpoint's own PyTorch model, but this one is already accelerated "
                         f"({done.get('label') or done.get('backend')}). Connect it straight to PVTT Load Model "
                         f"(or call it on the model load_model returns).")


def with_denoiser(loaded: LoadedModel, denoiser: nn.Module, acceleration: dict) -> LoadedModel:
    """A LoadedModel sharing ``loaded``'s weights except for its denoiser, which is ``denoiser``.

    ``acceleration`` is recorded in the metadata (``metadata["acceleration"]``, merged with any
    earlier entry), so logs and benchmarks can say what runs.
    """
    model = copy.copy(loaded.model)  # shallow: conditioning weights and VAE are shared, not copied
    # ... but its own registries, so .to(), new parameters or hooks on the copy never reach the original
    for registry in ("_modules", "_parameters", "_buffers", "_forward_hooks", "_forward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs"):
        setattr(model, registry, copy.copy(getattr(loaded.model, registry)))
    setattr(model, model.denoiser_attr, denoiser)
    metadata = {**loaded.metadata, "acceleration": {**loaded.metadata.get("acceleration", {}), **acceleration}}
    return replace(loaded, model=model, metadata=metadata)


def calibration_batch(loaded: LoadedModel, count: int, offset: int = 0) -> dict[str, torch.Tensor]:
    """``count`` synthetic product clips at the checkpoint's video size (template, mask, reference, paste)."""
    video = loaded.video
    config = _synthetic.SyntheticConfig(frames=video["frames"], height=video["height"], width=video["width"])
    seeds = range(CALIBRATION_SEED_BASE + offset, CALIBRATION_SEED_BASE + offset + count)
    return _batches.make_batch(_synthetic.SyntheticVideoGenerator(config), seeds)


@torch.no_grad()
def capture_denoiser_inputs(loaded: LoadedModel, batch: int = 1, sigma: float = 0.75,
                            clips: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The keyword inputs the denoiser receives in one real sampling call, on real conditioning.

    Used as example inputs for export and compilation, and as calibration data. Shapes follow the
    checkpoint's video size; ``batch`` clips are stacked.
    """
    model = loaded.model
    device = next(model.parameters()).device
    clips = clips if clips is not None else calibration_batch(loaded, batch)
    cond = condition_batch(model, {k: v.to(device) if torch.is_tensor(v) else v for k, v in clips.items()})
    x_t = torch.randn(cond.background.shape, generator=torch.Generator().manual_seed(0)).to(cond.background)
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _args, kwargs):
        captured.update({k: v for k, v in kwargs.items() if torch.is_tensor(v)})

    handle = get_denoiser(model).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model.velocity(x_t, torch.full((x_t.shape[0],), sigma, device=device), cond)
    finally:
        handle.remove()
    return captured
