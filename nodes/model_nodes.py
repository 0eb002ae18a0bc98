"""PVTT Load Model: a checkpoint from models/pvtt, rebuilt from the metadata it carries."""

from __future__ import annotations

import logging
import weakref
from pathlib import Path

from ..pvtt_train.errors import InputError
from . import managed_models, paths

log = logging.getLogger("[PVTT]")

#: Loaded models by (path, mtime, device), held weakly: two loaders naming the same file, or a re-run
#: while ComfyUI still holds the model, share the weights, and a file overwritten in place (new mtime)
#: is read again. PVTT itself never keeps a model alive, so it is released as soon as ComfyUI lets go
#: of it (the graph changes, or "Free model and node cache" / the /free API clears the node cache).
_CACHE: weakref.WeakValueDictionary[tuple[str, float, str], object] = weakref.WeakValueDictionary()


def load_model_cached(path: Path):
    """``pvtt_train.models.loading.load_model`` (PVTT file, diffusers Wan-VACE folder or ComfyUI-native
    Wan-VACE file, whose VAE is looked for beside it and in ComfyUI's models/vae) behind the
    weak (path, mtime, device) cache; logs when the model is released.

    Inside ComfyUI the model is loaded to ComfyUI's offload device and handed to its model management
    (``managed_models``: a ModelPatcher as ``loaded.patcher``), which moves it to the GPU when a node
    samples with it and may offload or unload it afterwards. An older version of the same file (it was
    overwritten) still held by ComfyUI is unloaded through model management before the new one is read."""
    from ..pvtt_train.models.loading import load_model

    device = managed_models.offload_device()
    resolved = str(path.resolve())
    key = (resolved, path.stat().st_mtime, str(device))
    loaded = _CACHE.get(key)
    if loaded is not None:
        return managed_models.manage(loaded)
    for old_key in [k for k in list(_CACHE.keys()) if k[0] == resolved and k != key]:
        old = _CACHE.get(old_key)
        if old is not None and managed_models.unload(old):
            log.info("unloaded the previous version of %s", path.name)
    loaded = load_model(path, device=device, vae_dirs=paths.vae_dirs())  # vae_dirs: for a ComfyUI-native file
    _CACHE[key] = loaded
    weakref.finalize(loaded, log.info, "released %s (%s)", path.name, device)
    return managed_models.manage(loaded)


def describe(loaded) -> str:
    """One log line saying what a checkpoint is, from its metadata."""
    meta, sampler, video = loaded.metadata, loaded.sampler, loaded.video
    return (f"{loaded.path.name}: {meta.get('stage', '?')} ({meta['model']['arch']}), sampler {sampler['kind']} "
            f"{sampler.get('steps')} steps, {video['frames']} frames at {video['width']}x{video['height']}")


class PVTTLoadModel:
    DESCRIPTION = ("Loads a PVTT checkpoint (.safetensors) from the models/pvtt folder. The file describes itself "
                   "(architecture, resolution, frame count, sampler and steps), so there is nothing to set but "
                   "the file name. A diffusers Wan2.1-VACE folder or a ComfyUI-native Wan2.1-VACE file placed "
                   "there loads too (its VAE from models/vae).")
    CATEGORY = "PVTT/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("PVTT_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The PVTT model with its sampling settings; connect it to PVTT Template Transfer.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (paths.model_names(), {
                "tooltip": f"A PVTT checkpoint from {paths.default_models_dir()}. 4-step students are fast; "
                           f"pvtt_residual_student_4step.safetensors keeps the product photo best (it corrects "
                           f"the pasted photo); a teacher is slower and the reference."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        if model_name not in paths.model_names():
            try:
                found = paths.model_path(model_name)
            except FileNotFoundError:
                return paths.missing_model_message(model_name)
            except InputError as exc:  # it exists but cannot be loaded: say why
                return str(exc)
            if paths.is_helper_network(found):
                return (f"PVTT: {model_name!r} is one of PVTT's encoders (identity or video encoder, used by "
                        f"training and scoring), not a model to sample with; pick pvtt_teacher.safetensors or a "
                        f"pvtt_student_*.safetensors checkpoint.")
            return paths.missing_model_message(model_name)
        return True

    @classmethod
    def IS_CHANGED(cls, model_name):
        try:
            return paths.model_path(model_name).stat().st_mtime
        except (FileNotFoundError, InputError):
            return float("nan")

    def load(self, model_name):
        loaded = load_model_cached(paths.model_path(model_name))
        log.info("loaded %s", describe(loaded))
        return (loaded,)
