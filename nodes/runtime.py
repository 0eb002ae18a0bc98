"""ComfyUI's execution services (progress bar, Cancel, device), with no-op stand-ins outside it.

``comfy.*`` is imported on first use: inside ComfyUI it is already loaded; in tests and scripts it
does not exist and the nodes still run, on the CPU, without progress reporting.
"""

from __future__ import annotations

import logging

log = logging.getLogger("[PVTT]")


class _NoProgress:
    def update_absolute(self, value, total=None, preview=None):
        pass


def progress_bar(total: int):
    """``comfy.utils.ProgressBar`` (which also raises on Cancel) or a silent stand-in."""
    try:
        import comfy.utils
    except ImportError:
        return _NoProgress()
    return comfy.utils.ProgressBar(total)


def check_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel."""
    try:
        import comfy.model_management
    except ImportError:
        return
    comfy.model_management.throw_exception_if_processing_interrupted()


def is_interrupted() -> bool:
    """Whether the user pressed Cancel (for loops that must clean up before stopping)."""
    try:
        import comfy.model_management
    except ImportError:
        return False
    return comfy.model_management.processing_interrupted()


def torch_device():
    """The device ComfyUI runs models on (honours --cpu); the CPU outside ComfyUI."""
    try:
        import comfy.model_management
    except ImportError:
        import torch

        return torch.device("cpu")
    return comfy.model_management.get_torch_device()
