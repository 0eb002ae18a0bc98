"""SIGTERM behaves like Ctrl-C, and a first one of either lets training save before it stops.

Schedulers and ``kill`` stop a job with SIGTERM, which Python's default ends at once: the steps
trained since the last saved state were lost, no hint was printed, and the exit code said nothing.
Under the CLI (``handled``) both signals raise a ``KeyboardInterrupt`` (``Terminated`` for SIGTERM,
exit 143; Ctrl-C keeps 130), so the same clean-up and the same "how to resume" hint follow either.

Raising in the middle of an optimizer step would lose the step and leave nothing to save, so a
training loop opens a ``DeferredStop``: while it is open a first signal only asks to stop, the loop
checks ``pending()`` at each step boundary, saves its state and raises ``interruption()``. A second
signal stops at once. Standard library only: the CLI installs this before anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import signal
import threading

#: The signals handled, and the exit code of a command they stop (128 + the signal number).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is so the same clean-up runs; the CLI exits 143 for it."""


_pending: int = 0  # the signal a deferred stop is waiting on (0: none)
_deferring: int = 0  # open DeferredStops


def interruption(signum: int) -> KeyboardInterrupt:
    """The exception a stop by ``signum`` raises."""
    return Terminated("terminated (SIGTERM)") if signum == signal.SIGTERM else KeyboardInterrupt()


def exit_code(exc: KeyboardInterrupt) -> int:
    return EXIT_CODES[signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT]


def _on_signal(signum, frame) -> None:
    global _pending
    if _deferring and not _pending:
        _pending = signum  # the training loop stops at its next step boundary, saved
        return
    raise interruption(signum)


def pending() -> int:
    """The signal a deferred stop waits on, 0 when none came."""
    return _pending


@contextlib.contextmanager
def handled():
    """For the duration of a CLI command: Ctrl-C and SIGTERM raise (or, in a training loop, ask for a
    stop); the previous handlers are restored after. A signal the caller ignores (``nohup``, a shell's
    background job) stays ignored. Only the main thread can install handlers."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _on_signal) for sig in STOP_SIGNALS
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _pending = 0


class DeferredStop:
    """Open while a training loop runs: a first stop signal waits for the loop's next step boundary.
    ``release()`` (idempotent) closes it; ``raise_if_pending()`` stops a loop that ended before it
    looked at a signal that came during its last step."""

    def __init__(self):
        global _deferring
        _deferring += 1
        self.open = True

    def release(self) -> None:
        global _deferring
        if self.open:
            _deferring -= 1
            self.open = False

    def raise_if_pending(self) -> None:
        if _pending:
            raise interruption(_pending)
