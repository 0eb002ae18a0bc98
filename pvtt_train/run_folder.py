"""Opening a run folder: an existing run is resumed or refused, and only a folder PVTT made is ever deleted.

A run folder PVTT creates gets a ``.pvtt-run`` marker file at birth. That marker is the only licence
``--overwrite`` has to delete anything: a folder the user made (or pointed ``--run-dir`` at by
mistake, e.g. their home folder) has none, and is refused instead of emptied. Without ``--resume``
or ``--overwrite``, a folder that already holds something is refused with a message naming both.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import InputError
from .models.checkpoint import write_atomic
from .run_lock import LOCK_NAME, OWNER_NAME, RunLock

MARKER = ".pvtt-run"
#: Entries that are the folder's bookkeeping, not a run's results.
_BOOKKEEPING = {MARKER, LOCK_NAME, OWNER_NAME}


def run_contents(folder: Path) -> list[Path]:
    """What ``folder`` holds besides the marker and the lock (empty when it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name not in _BOOKKEEPING)


def created_by_pvtt(folder: Path) -> bool:
    marker = folder / MARKER
    return marker.is_file() and not marker.is_symlink()


def check_run_folder(folder: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, a run folder this run may not use; reads only."""
    folder = Path(folder)
    if resume and overwrite:
        raise InputError("--resume continues the run in the run folder and --overwrite deletes it: pass one of them")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"run folder {folder} is a file; pass a folder (a new one, or a run to --resume)")
    contents = run_contents(folder)
    if resume or not contents:
        return
    if not overwrite:
        shown = ", ".join(p.name for p in contents[:4]) + (", ..." if len(contents) > 4 else "")
        raise InputError(f"run folder {folder} is not empty ({shown}). Add --resume to continue the run saved "
                         f"there, or --overwrite to delete it and start again, or choose another run folder.")
    if not created_by_pvtt(folder):
        raise InputError(f"--overwrite: run folder {folder} was not created by PVTT (it has no {MARKER} marker), "
                         f"so PVTT will not delete what it holds. Delete or move it yourself, or choose another "
                         f"run folder.")


def open_run_folder(folder: str | Path, resume: bool, overwrite: bool) -> RunLock:
    """Create ``folder`` (marked as PVTT's) if needed, lock it, check it, and with ``overwrite`` empty
    it; returns the held lock (release it when the run ends). The checks run again under the lock,
    so a run started meanwhile cannot slip between the check and the deletion."""
    folder = Path(folder)
    check_run_folder(folder, resume, overwrite)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if created:
        write_atomic(folder / MARKER, lambda tmp: Path(tmp).write_text(
            "This folder was created by PVTT (python -m pvtt_train) as a run folder; --overwrite may empty it.\n"))
    lock = RunLock(folder).acquire()
    try:
        check_run_folder(folder, resume, overwrite)
        if overwrite:
            for entry in run_contents(folder):  # created_by_pvtt(folder) was checked above
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
    except BaseException:
        lock.release()
        raise
    return lock
