"""PVTT's user-facing errors, importable without torch so ComfyUI nodes can raise them cheaply.

Each message says what is wrong and how to fix it; ComfyUI shows it in its error dialog.
"""

import errno


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


#: Write failures that are the machine's state, not a bug, and what each means (EDQUOT is POSIX only).
DISK_ERRORS = {code: text for code, text in (
    (errno.ENOSPC, "no space left on the device"),
    (getattr(errno, "EDQUOT", None), "the disk quota is exceeded"),
    (errno.EFBIG, "the file is larger than the file system or the process's file-size limit (ulimit -f) allows"),
) if code is not None}


class DiskFullError(OSError):
    """A write that failed for lack of disk space, quota or file-size limit; the message names the file
    and what to do. The original error is its ``__cause__``; ``errno`` is the original's."""
