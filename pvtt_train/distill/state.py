"""Resumable training state in safetensors: models, optimizers, EMA, RNG and counters, no pickle.

Arbitrary nested state (``optimizer.state_dict()``, ``EMAModel.state_dict()``, plain counters) is
split into a flat dict of tensors and a JSON skeleton that points at them, so the whole state is
one safetensors file. Files are written atomically as ``state-<step>.safetensors`` and rotated,
keeping the newest ``keep``; a run killed at any moment resumes from the newest complete file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..models.checkpoint import write_atomic

STATE_PATTERN = re.compile(r"^state-(\d{8})\.safetensors$")


def _flatten(obj, prefix: str, tensors: dict[str, torch.Tensor]):
    """JSON skeleton of ``obj`` with every tensor moved into ``tensors`` under a unique key."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "_"
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        # Keys may be ints (optimizer state), so keep them as explicit pairs.
        return {"__dict__": [[k, _flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a training state")


def _unflatten(node, tensors: dict[str, torch.Tensor]):
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__dict__" in node:
            return {k: _unflatten(v, tensors) for k, v in node["__dict__"]}
        if "__list__" in node:
            items = [_unflatten(v, tensors) for v in node["__list__"]]
            return tuple(items) if node.get("tuple") else items
    return node


def state_files(folder: Path) -> list[Path]:
    """Complete state files in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STATE_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def save_state(folder: Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write ``state`` (nested dicts/lists of tensors and JSON values) as step ``step``; rotate."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "s", tensors)
    path = Path(folder) / f"state-{step:08d}.safetensors"
    if path.parent.is_dir():  # temp files of a write that a kill interrupted
        for stale in path.parent.glob(".state-*.tmp"):
            stale.unlink()
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"pvtt_state": json.dumps(skeleton)}))
    for old in state_files(Path(folder))[:-keep]:
        old.unlink()
    return path


def load_state(path: Path) -> dict:
    """Read a state written by ``save_state``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            skeleton = json.loads((fh.metadata() or {})["pvtt_state"])
        tensors = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"training state {path} cannot be read ({exc}); delete it to resume from the one "
                              f"before, or start without --resume.") from exc
    return _unflatten(skeleton, tensors)
