"""Import the repo root as a package, exactly as ComfyUI imports a custom-node folder.

ComfyUI loads ``custom_nodes/<pack>/__init__.py`` with ``spec_from_file_location`` under a
package name of its own, so the pack's relative imports (``from ..pvtt_train import ...``) must
work from there; importing ``nodes`` as a top-level module would hide a broken relative import.
The loader is the one the held-out evaluation uses (``pvtt_train.eval.node_pack``).
"""

from __future__ import annotations

from pathlib import Path

from pvtt_train.eval.node_pack import PACK_NAME as PACKAGE
from pvtt_train.eval.node_pack import load_pack

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["PACKAGE", "ROOT", "load_pack"]
