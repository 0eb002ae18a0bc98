"""The trainer's optional packages (the ``train`` extra): ComfyUI users never install them.

``requirements-train.txt`` (``pip install 'pvtt[train]'``) holds what only ``python -m pvtt_train`` needs:
matplotlib for the report and bench plots, tensorboard for training curves and scikit-image for the
held-out evaluation's sample photos. ``bash run.sh demo`` and ``bash run.sh test`` install it.

A command that needs one of them checks before it starts any work (not after hours of training) and
fails with one message naming what is missing and how to install it. TensorBoard alone is optional:
without it training logs to JSONL, with a hint.
"""

from __future__ import annotations

import importlib.util

#: import name -> (pip requirement, what the trainer uses it for). Kept in step with requirements-train.txt.
PACKAGES = {
    "matplotlib": ("matplotlib>=3.7", "plots (report quality_speed.png, bench.png)"),
    "tensorboard": ("tensorboard>=2.14", "TensorBoard training curves"),
    "skimage": ("scikit-image>=0.22", "the held-out evaluation's sample photos"),
}
INSTALL = "pip install -r requirements-train.txt  (or pip install 'pvtt[train]'; bash run.sh installs it)"


class MissingTrainingPackage(ImportError):
    """A trainer feature needs a package of the ``train`` extra that is not installed; the message says
    which and how to install it."""


def available(module: str) -> bool:
    """Whether ``module`` imports, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a half-installed package, or one whose __spec__ is None
        return False


def require(feature: str, *modules: str) -> None:
    """Raise MissingTrainingPackage, in one message, when any of ``modules`` is missing for ``feature``."""
    missing = [m for m in modules if not available(m)]
    if missing:
        names = ", ".join(PACKAGES[m][0] if m in PACKAGES else m for m in missing)
        raise MissingTrainingPackage(f"{feature} needs {names}, which {'is' if len(missing) == 1 else 'are'} not "
                                     f"installed (the trainer's extra; ComfyUI does not install it). "
                                     f"Install it with: {INSTALL}")


def tensorboard_or_jsonl() -> str | None:
    """``"tensorboard"`` when it imports; else None after printing a hint (the run logs to JSONL only)."""
    if available("tensorboard"):
        return "tensorboard"
    print(f"tensorboard is not installed: logging to JSONL only (<stage>.log.jsonl in the run folder). For "
          f"TensorBoard curves: {INSTALL}")
    return None
