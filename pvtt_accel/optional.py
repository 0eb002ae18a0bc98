"""Optional packages of the acceleration paths, checked where they are needed, with the fix.

torchao (INT8) and onnx/onnxscript/onnxruntime (ONNX export and ONNX Runtime) are optional extras
(``requirements-accel.txt``): a ComfyUI install without them loads and runs every other node.
"""

from __future__ import annotations

import importlib.util

EXTRAS_FILE = "requirements-accel.txt"


class MissingPackage(RuntimeError):
    """An optional package is missing; the message names it, the install command and the alternative."""


def require(purpose: str, *modules: str, alternative: str = "") -> None:
    """Raise MissingPackage unless every module in ``modules`` can be imported."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    verb = "is" if len(missing) == 1 else "are"
    raise MissingPackage(f"{purpose} needs {', '.join(missing)}, which {verb} not installed. Install it in ComfyUI's "
                         f"Python: pip install {' '.join(missing)} (or pip install -r {EXTRAS_FILE} from the PVTT "
                         f"folder).{' ' + alternative if alternative else ''}")
