"""PVTT's user-facing errors, importable without torch so ComfyUI nodes can raise them cheaply.

Each message says what is wrong and how to fix it; ComfyUI shows it in its error dialog.
"""


class InputError(ValueError):
    """Designer input that cannot be used as given; the message says what to change."""


class CheckpointError(ValueError):
    """A checkpoint file that PVTT cannot use; the message says why and what to do."""
