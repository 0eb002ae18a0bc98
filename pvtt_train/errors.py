"""PVTT's user-facing errors, importable without torch so ComfyUI nodes can raise them cheaply.

Each message says what is wrong and how to fix it; ComfyUI shows it in its error dialog.
"""


def shown_as_pvtt(cls: type) -> type:
    """ComfyUI's error dialog titles an error with its class's module path, which for a custom-node
    pack is its folder on disk; this makes it "PVTT.InputError", which tells the designer whose
    message it is."""
    cls.__module__ = "PVTT"
    return cls


@shown_as_pvtt
class InputError(ValueError):
    """Designer input that cannot be used as given; the message says what to change."""


@shown_as_pvtt
class CheckpointError(ValueError):
    """A checkpoint file that PVTT cannot use; the message says why and what to do."""
