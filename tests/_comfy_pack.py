"""Import the repo root as a package, exactly as ComfyUI imports a custom-node folder.

ComfyUI loads ``custom_nodes/<pack>/__init__.py`` with ``spec_from_file_location`` under a
package name of its own, so the pack's relative imports (``from ..pvtt_train import ...``) must
work from there; importing ``nodes`` as a top-level module would hide a broken relative import.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pvtt_pack"


def load_pack():
    """The pack module (imported once per process), with ``.nodes`` and ``.pvtt_train`` below it."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(PACKAGE, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module
