"""PVTT Load Model: a checkpoint from models/pvtt, rebuilt from the metadata it carries."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

from . import paths
from .runtime import torch_device

log = logging.getLogger("[PVTT]")

#: Loaded models by (path, mtime, device): re-running a graph, or two loaders naming the same
#: file, reuse the weights; a file overwritten in place (new mtime) is read again.
_CACHE: OrderedDict[tuple[str, float, str], object] = OrderedDict()
_CACHE_SIZE = 2


def load_model_cached(path: Path):
    """``pvtt_train.models.loading.load_model`` (PVTT file or diffusers Wan-VACE folder) behind a
    small (path, mtime) cache."""
    from ..pvtt_train.models.loading import load_model

    device = torch_device()
    key = (str(path.resolve()), path.stat().st_mtime, str(device))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    loaded = load_model(path, device=device)
    _CACHE[key] = loaded
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return loaded


def describe(loaded) -> str:
    """One log line saying what a checkpoint is, from its metadata."""
    meta, sampler, video = loaded.metadata, loaded.sampler, loaded.video
    return (f"{loaded.path.name}: {meta.get('stage', '?')} ({meta['model']['arch']}), sampler {sampler['kind']} "
            f"{sampler.get('steps')} steps, {video['frames']} frames at {video['width']}x{video['height']}")


class PVTTLoadModel:
    DESCRIPTION = ("Loads a PVTT checkpoint (.safetensors) from the models/pvtt folder. The file describes itself "
                   "(architecture, resolution, frame count, sampler and steps), so there is nothing to set but "
                   "the file name.")
    CATEGORY = "PVTT/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("PVTT_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The PVTT model with its sampling settings; connect it to PVTT Template Transfer.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (paths.model_names(), {
                "tooltip": f"A PVTT checkpoint from {paths.default_models_dir()}. The 4-step student "
                           f"(pvtt_student_4step.safetensors) is fast; the teacher is slower and the reference."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        if model_name not in paths.model_names():
            return paths.missing_model_message(model_name)
        return True

    @classmethod
    def IS_CHANGED(cls, model_name):
        try:
            return paths.model_path(model_name).stat().st_mtime
        except FileNotFoundError:
            return float("nan")

    def load(self, model_name):
        loaded = load_model_cached(paths.model_path(model_name))
        log.info("loaded %s", describe(loaded))
        return (loaded,)
