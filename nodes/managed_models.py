"""PVTT's models under ComfyUI's model management: a PVTT_MODEL's weights live in a ``ModelPatcher``.

Inside ComfyUI, PVTT Load Model puts the model on ComfyUI's offload device and wraps it in a
``comfy.model_patcher.ModelPatcher`` (``LoadedModel.patcher``) whose load device is ComfyUI's torch
device, exactly as UNETLoader does with a native model. Every PVTT node that runs the model calls
``load_for_sampling`` first: ``comfy.model_management.load_models_gpu([patcher], force_full_load=True)``
moves it to the GPU, unloading other models when memory is short, and ComfyUI may offload or unload
it again afterwards (another model needs the memory, "Unload models", ``POST /free``). Full loads
only: PVTT's diffusers modules have no lowvram casting, so a partly loaded model is never run.

A model derived from a loaded one (PVTT Accelerate's, ONNX Runtime's) gets its own patcher the first
time it is sampled. Outside ComfyUI (tests, scripts, the CLI) ``comfy`` does not exist and all of
this is a no-op: the model stays where ``load_model`` put it.
"""

from __future__ import annotations

import logging

log = logging.getLogger("[PVTT]")

#: Attributes a ModelPatcher keeps on the module it manages; a shallow copy (an accelerated model) must
#: not inherit them from the model it was copied from, or ComfyUI would think it already loaded.
_PATCHER_STATE = ("model_loaded_weight_memory", "lowvram_patch_counter", "model_lowvram",
                  "current_weight_patches_uuid")


def model_management():
    """``comfy.model_management`` inside ComfyUI, else None."""
    try:
        import comfy.model_management
        import comfy.model_patcher  # noqa: F401  (present in every ComfyUI that has model management)
    except ImportError:
        return None
    return comfy.model_management


def load_device():
    """Where ComfyUI runs models (honours --cpu); the CPU outside ComfyUI."""
    from .runtime import torch_device

    return torch_device()


def offload_device():
    """Where ComfyUI keeps a diffusion model it is not running (``unet_offload_device``); the CPU outside."""
    mm = model_management()
    if mm is None:
        import torch

        return torch.device("cpu")
    return mm.unet_offload_device()


def _new_patcher(module):
    import comfy.model_patcher

    mm = model_management()
    for name in _PATCHER_STATE:  # fresh state: this module is not loaded anywhere yet
        module.__dict__.pop(name, None)
    module.__dict__["device"] = _param_device(module)
    return comfy.model_patcher.ModelPatcher(module, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def _param_device(module):
    import torch

    first = next(iter(module.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def manage(loaded):
    """``loaded`` with a ModelPatcher for its module attached as ``loaded.patcher`` (inside ComfyUI); returns
    ``loaded``. Outside ComfyUI it is returned unchanged, with ``patcher`` None."""
    if model_management() is None:
        return loaded
    patcher = getattr(loaded, "patcher", None)
    if patcher is None or patcher.model is not loaded.model:
        loaded.patcher = _new_patcher(loaded.model)
    return loaded


def load_for_sampling(loaded):
    """Make ``loaded`` ready to run: inside ComfyUI, ``load_models_gpu([patcher], force_full_load=True)``
    (a model sharing ComfyUI's own weights loads the patchers it shares them with); returns the device
    the model runs on. Outside ComfyUI: nothing to do."""
    mm = model_management()
    if mm is None:
        return _param_device(loaded.model)
    shared = getattr(loaded, "shares_weights_of", None)
    patchers = list(shared) if shared else [manage(loaded).patcher]
    mm.load_models_gpu(patchers, force_full_load=True)
    device = patchers[0].load_device
    module = loaded.model
    # A module shared with another managed model (an accelerated copy shares the VAE with the loader's model)
    # may have been offloaded through that model's patcher; bring the stragglers back.
    if any(t.device != device for t in [*module.parameters(), *module.buffers()]):
        log.debug("moving the shared parts of %s back to %s", getattr(loaded.path, "name", loaded.path), device)
        module.to(device)
    return device


def is_loaded(loaded) -> bool:
    """Whether ComfyUI's model management currently holds ``loaded`` on its load device."""
    mm = model_management()
    patcher = getattr(loaded, "patcher", None)
    if mm is None or patcher is None:
        return False
    return any(m is patcher for m in mm.loaded_models())


def unload(loaded) -> bool:
    """Unload ``loaded`` through ComfyUI's model management (its weights go to the offload device and it
    leaves ComfyUI's list of loaded models), as "Unload models" does for every model. Returns whether it
    was loaded. Outside ComfyUI: False."""
    mm = model_management()
    patcher = getattr(loaded, "patcher", None)
    if mm is None or patcher is None:
        return False
    for index, entry in enumerate(list(mm.current_loaded_models)):
        if entry.model is patcher:
            entry.model_unload()
            mm.current_loaded_models.pop(index)
            mm.soft_empty_cache()
            return True
    return False
