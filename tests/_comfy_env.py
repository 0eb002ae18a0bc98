"""Where the tests that run ComfyUI's own code find it: ``COMFYUI_DIR`` (a comfyrig folder or a ComfyUI
checkout) and the Python that can import it (the rig's venv, ``COMFYUI_PYTHON``, or this one)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def comfy_paths() -> tuple[Path, str] | None:
    """The ComfyUI folder and its Python, or None when ``COMFYUI_DIR`` is not set."""
    given = os.environ.get("COMFYUI_DIR")
    if not given:
        return None
    root = Path(given)
    comfy = root / "ComfyUI" if (root / "ComfyUI" / "comfy").is_dir() else root
    python = os.environ.get("COMFYUI_PYTHON") or (str(root / "venv" / "bin" / "python")
                                                  if (root / "venv" / "bin" / "python").is_file() else sys.executable)
    return comfy, python
