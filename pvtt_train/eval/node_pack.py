"""PVTT's ComfyUI nodes, run from Python exactly as ComfyUI runs them, for evaluations that must see
what a designer sees.

ComfyUI imports the repository root as a package of its own (``custom_nodes/<pack>/__init__.py``), so
the nodes' relative imports (``from ..pvtt_train import ...``) resolve inside that package. This module
imports the pack the same way, calls each node's FUNCTION on a fresh instance with keyword inputs, and
turns the pack's user errors into this package's (the CLI prints those as one line).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from ..errors import CheckpointError, InputError
from ..paths import PACK_ROOT

PACK_NAME = "pvtt_pack"


def load_pack():
    """The node pack module (imported once per process), with ``.nodes`` and ``.pvtt_train`` below it."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, PACK_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(PACK_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACK_NAME]
        raise
    return module


def _translated(exc: Exception) -> Exception | None:
    """The pack's InputError/CheckpointError as this package's, with the same message."""
    errors = importlib.import_module(f"{PACK_NAME}.pvtt_train.errors")
    for theirs, ours in ((errors.InputError, InputError), (errors.CheckpointError, CheckpointError)):
        if isinstance(exc, theirs):
            return ours(str(exc))
    return None


def run_node(node_id: str, **inputs):
    """Execute a node as ComfyUI does: a fresh instance, its FUNCTION called with keyword inputs; returns
    its outputs (the ``result`` of a node that also returns UI data, as Template Transfer does)."""
    cls = load_pack().NODE_CLASS_MAPPINGS[node_id]
    try:
        out = getattr(cls(), cls.FUNCTION)(**inputs)
        return out["result"] if isinstance(out, dict) else out
    except Exception as exc:
        ours = _translated(exc)
        if ours is None:
            raise
        raise ours from exc


def widget_defaults(node_id: str) -> dict:
    """The default value of every widget of a node, as a fresh node on the canvas has them."""
    cls = load_pack().NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    return {name: options[1]["default"] for group in spec.values() for name, options in group.items()
            if len(options) > 1 and "default" in options[1]}


@contextmanager
def _models_folder(folder: Path):
    """Point the pack's standalone models folder (``PVTT_MODELS_DIR``) at ``folder`` for the block."""
    before = os.environ.get("PVTT_MODELS_DIR")
    os.environ["PVTT_MODELS_DIR"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            del os.environ["PVTT_MODELS_DIR"]
        else:
            os.environ["PVTT_MODELS_DIR"] = before


def load_model(path: str | Path):
    """PVTT Load Model on ``path`` (a checkpoint or a Wan-VACE folder), as if it sat in models/pvtt:
    the loader's own check, then its load; returns the PVTT_MODEL."""
    path = Path(path).resolve()
    cls = load_pack().NODE_CLASS_MAPPINGS["PVTTLoadModel"]
    with _models_folder(path.parent):
        verdict = cls.VALIDATE_INPUTS(path.name)
        if verdict is not True:
            raise InputError(str(verdict))
        return run_node("PVTTLoadModel", model_name=path.name)[0]
