"""Resumable training state in safetensors: models, optimizers, EMA, RNG and counters, no pickle.

Arbitrary nested state (``optimizer.state_dict()``, ``EMAModel.state_dict()``, plain counters) is
split into a flat dict of tensors and a JSON skeleton that points at them, so the whole state is
one safetensors file. Files are written atomically as ``state-<step>.safetensors`` and rotated,
keeping the newest ``keep``; a run killed at any moment resumes from the newest complete file.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..models.checkpoint import remove_stale_temps, write_atomic

logger = logging.getLogger(__name__)

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


class _IncompleteState(ValueError):
    """A readable file that is not a whole training state (edited or damaged after it was written)."""


def _unflatten(node, tensors: dict[str, torch.Tensor]):
    if isinstance(node, dict):
        if "__tensor__" in node:
            if node["__tensor__"] not in tensors:
                raise _IncompleteState(f"its skeleton names a tensor {node['__tensor__']!r} the file does not hold")
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
    remove_stale_temps(path.parent, "state-*.safetensors")  # of a write that a kill interrupted
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"pvtt_state": json.dumps(skeleton)}))
    rotate_states(folder, keep)
    return path


def rotate_states(folder: Path, keep: int = 2) -> list[Path]:
    """Delete all but the newest ``keep`` states (also those a kill between a save and its rotation left)."""
    old = state_files(Path(folder))[:-keep]
    for path in old:
        path.unlink(missing_ok=True)
    return old


def load_state(path: Path, required: tuple[str, ...] = ()) -> dict:
    """Read a state written by ``save_state``; a file that is not one whole (unreadable, a skeleton that
    names a missing tensor, not a dict, or without the ``required`` keys) is a ``CheckpointError``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            skeleton = json.loads((fh.metadata() or {})["pvtt_state"])
        tensors = load_file(str(path))
        state = _unflatten(skeleton, tensors)
        if not isinstance(state, dict):
            raise _IncompleteState(f"it holds a {type(state).__name__}, not a training state")
        missing = [key for key in required if key not in state]
        if missing:
            raise _IncompleteState(f"it lacks {', '.join(missing)}")
    except Exception as exc:
        raise CheckpointError(f"training state {path} cannot be read ({exc}); delete it to resume from the one "
                              f"before, or start without --resume.") from exc
    return state


def load_newest_state(folder: Path, set_aside: bool = True, required: tuple[str, ...] = ()) -> tuple[Path, dict] | None:
    """The newest readable state in ``folder`` and its path, or None when there is none.

    Atomic writes never leave half a state, but a file can still be damaged afterwards (a bad disk,
    a partial copy of the run folder). Such a state is renamed to ``<name>.corrupt`` (kept, not
    deleted) with a warning, and the one before it is used: the resume loses one more save
    interval instead of stopping. In a multi-process run only the main process (``set_aside``)
    renames; the others skip the same unreadable file, so every rank resumes from the same state.
    """
    for path in reversed(state_files(Path(folder))):
        try:
            return path, load_state(path, required)
        except CheckpointError as exc:
            if set_aside:
                aside = path.with_name(path.name + ".corrupt")
                os.replace(path, aside)
                logger.warning("%s Moved it aside to %s; resuming from the state before it.", exc, aside.name)
    return None
