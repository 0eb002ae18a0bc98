"""The ``auto`` selector's memory: one small JSON file per measured situation, so a second run starts at once.

A choice is only valid for what it was measured on, so the key holds the machine
(``MachineProfile.capability_string``: CPU features, GPUs, thread count), the C++ compiler, the
device, the model (checkpoint sha256 and architecture), the working shape, the request, the PSNR
threshold and the versions of every library that changes speed (torch, diffusers, torchao,
onnxruntime, onnxscript). Change any of them and the selector measures again. Each key has its own
file (``auto-<hash>.json``), written atomically, so two ComfyUI processes never lose each other's
entries and a killed write leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from pathlib import Path

from ._train import train_module
from .machine import MachineProfile
from .onnx_export import checkpoint_sha256

write_atomic = train_module("models.checkpoint").write_atomic
log = logging.getLogger("PVTT")

#: Version of the record layout and of the selection rule; part of every key.
FORMAT = 1
#: Libraries whose version changes what is fast.
SPEED_LIBRARIES = ("torch", "diffusers", "torchao", "onnxruntime", "onnxscript")
#: The cache folder under ComfyUI's models/ (beside models/pvtt, models/onnx/pvtt, models/tensorrt/pvtt).
FOLDER = Path("pvtt_accel") / "auto"


def library_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (nothing is imported)."""
    versions = {}
    for name in SPEED_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cache_key(profile: MachineProfile, device: str, model_sha256: str, arch: str, shape: dict, request: dict,
              min_psnr: float, versions: dict[str, str | None] | None = None) -> dict:
    """Everything a measured choice depends on."""
    return {"format": FORMAT, "machine": profile.capability_string(), "compiler": profile.cxx_compiler,
            "device": device, "model_sha256": model_sha256, "arch": arch, "shape": shape, "request": request,
            "min_psnr": min_psnr, "versions": library_versions() if versions is None else versions}


def model_key(loaded, request: dict, profile: MachineProfile, device: str, min_psnr: float) -> dict:
    """``cache_key`` for a loaded checkpoint at its own video size, one clip per call."""
    shape = {"batch": 1, **{k: loaded.video[k] for k in ("frames", "height", "width")}}
    return cache_key(profile, device, checkpoint_sha256(loaded.path), loaded.model.arch, shape, request, min_psnr)


def entry_path(folder: str | Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(folder) / f"auto-{digest}.json"


def load(folder: str | Path, key: dict) -> dict | None:
    """The stored record for ``key``, or None (absent, unreadable, or written for another key)."""
    path = entry_path(folder, key)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable auto-acceleration record %s (%s); measuring again", path, exc)
        return None
    return record if isinstance(record, dict) and record.get("key") == key else None


def store(folder: str | Path, key: dict, record: dict) -> Path:
    """Write ``record`` (with ``key``) atomically; returns its path."""
    path = entry_path(folder, key)
    text = json.dumps({**record, "key": key}, indent=2, sort_keys=True, allow_nan=False)
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))
    return path
