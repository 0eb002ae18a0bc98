"""The run-folder lock: a second holder is refused with the first one's PID, and the lock of a run
killed with SIGKILL is taken over by the next run without anyone clearing it by hand."""

import json
import os
import signal
import time

import pytest

from pvtt_train.run_lock import OWNER_NAME, RunFolderInUse, RunLock

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="holds the lock in a forked child process")


def _hold_in_child(folder):
    """A child process that takes ``folder``'s lock, says so through a pipe, then waits to be killed."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            held = RunLock(folder).acquire()  # kept referenced: a collected lock object releases its lock
            os.write(write_fd, b"held")
            time.sleep(120)
            held.release()
        finally:
            os._exit(0)
    os.close(write_fd)
    assert os.read(read_fd, 4) == b"held"
    os.close(read_fd)
    return pid


def test_a_second_holder_is_refused_with_the_pid_and_a_killed_holders_lock_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    pid = _hold_in_child(folder)
    try:
        with pytest.raises(RunFolderInUse, match=rf"run folder .*run is in use by PID {pid} on .*started .*; wait "
                                                 rf"for that run to finish, or use another run folder"):
            RunLock(folder).acquire()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    # The killed holder never released: its owner record is still there, but the OS dropped its lock.
    assert json.loads((folder / OWNER_NAME).read_text())["pid"] == pid
    with RunLock(folder) as lock:
        assert lock.took_over is not None and lock.took_over["pid"] == pid
        assert json.loads((folder / OWNER_NAME).read_text())["pid"] == os.getpid()
    assert not (folder / OWNER_NAME).exists()  # released cleanly: nothing to take over next time
    with RunLock(folder) as lock:
        assert lock.took_over is None


def test_a_lock_released_in_this_process_can_be_taken_again(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunFolderInUse, match=f"PID {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    RunLock(tmp_path).acquire().release()
