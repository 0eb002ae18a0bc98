"""An exclusive lock on a run folder, so two runs never write into (or sweep the temps of) one folder.

The lock is an OS file lock (``filelock``: ``flock`` on POSIX, ``LockFileEx`` on Windows), which the
operating system drops when its process ends, however it ends: a run killed with SIGKILL or by a
power cut leaves no lock behind that has to be cleared by hand, and the next run simply takes it.
Beside the lock, the holder writes who it is (PID, host, start time), so a refused run can say
which process holds the folder, and a run that takes over a killed run's folder can say so.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import InputError
from .models.checkpoint import write_atomic

LOCK_NAME = ".pvtt-run.lock"
OWNER_NAME = ".pvtt-run.owner.json"


class RunFolderInUse(InputError):
    """Another live process holds the run folder's lock."""


def read_owner(folder: Path) -> dict | None:
    """Who holds (or last held) ``folder``'s lock, as its holder wrote it; None when unknown."""
    try:
        owner = json.loads((Path(folder) / OWNER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def describe_owner(owner: dict | None) -> str:
    if owner is None:
        return "another process"
    return f"PID {owner['pid']} on {owner.get('host', '?')} (started {owner.get('started', '?')})"


class RunLock:
    """``with RunLock(folder):`` holds ``folder`` for this process; a second holder is refused at once.

    ``took_over`` is the owner record of a run that held the folder and ended without releasing it
    (killed), or None."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.took_over: dict | None = None
        self._lock: FileLock | None = None

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.folder / LOCK_NAME), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunFolderInUse(
                f"run folder {self.folder} is in use by {describe_owner(read_owner(self.folder))}; wait for that "
                f"run to finish, or use another run folder (--run-dir; for the demo, --out)") from None
        self._lock = lock
        previous = read_owner(self.folder)  # left by a holder that never released: it was killed
        self.took_over = previous if previous is not None and previous["pid"] != os.getpid() else None
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": _command()}
        write_atomic(self.folder / OWNER_NAME, lambda tmp: Path(tmp).write_text(json.dumps(owner) + "\n"))
        return self

    def release(self) -> None:
        """Remove the owner record this process wrote, then drop the lock."""
        if self._lock is None:
            return
        if (read_owner(self.folder) or {}).get("pid") == os.getpid():
            (self.folder / OWNER_NAME).unlink(missing_ok=True)
        self._lock.release()
        self._lock = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _command() -> str:
    text = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
    return text[:200]
