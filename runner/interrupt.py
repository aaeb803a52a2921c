"""Ctrl-C (SIGINT) and SIGTERM of the runner: :class:`Interrupted`, exit code 128 + the
signal (130, 143).

Outside a federation a stop signal raises :class:`Interrupted` (a KeyboardInterrupt)
at once, as Python's own Ctrl-C does. While the runner starts, watches and stops a
federation (:func:`deferred`) the signal is only recorded, and :func:`check`, called
from the runner's loops, raises it. An exception raised by a signal handler lands
wherever the main thread happens to be, and some places drop it: the at-fork hooks
(``logging``'s runs in the runner after every ``os.fork`` of a federate: a signal there
was printed as "Exception ignored in: _releaseLock" and the run went on to its end,
exit 0), ``__del__`` methods, weakref callbacks. Between the fork of a federate and the
line that records its pid it would orphan that federate; inside the kill of the
federation it would leave the rest running.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The runner was asked to stop by ``signum`` (SIGINT: Ctrl-C, or SIGTERM)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        self.signum = int(signum)
        super().__init__(signal_name(self.signum))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(e: BaseException) -> int:
    """The exit code of a run stopped by ``e`` (a KeyboardInterrupt): 128 + its signal,
    130 (Ctrl-C) for a KeyboardInterrupt without one."""
    return e.exit_code if isinstance(e, Interrupted) else 128 + signal.SIGINT


_pending: int | None = None  # a stop signal received and not raised yet
_deferring = 0  # depth of deferred()


def _handler(signum, frame) -> None:
    global _pending
    if _pending is None:
        _pending = signum
    if not _deferring:
        check()


def install() -> None:
    """The runner's handler for SIGINT and SIGTERM (main thread only)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handler)


def pending() -> int | None:
    """The stop signal received and not raised yet, if any."""
    return _pending


def check() -> None:
    """Raise :class:`Interrupted` for a stop signal received and not raised yet."""
    global _pending
    if _pending is not None:
        signum, _pending = _pending, None
        raise Interrupted(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """Inside, SIGINT and SIGTERM are recorded, not raised: :func:`check` raises them,
    and so does leaving the block. Called from the main thread it installs the
    runner's handler for the block when another one is in place (Python's Ctrl-C,
    SIGTERM's default: run_study called from Python), so that a stop signal stops the
    federation there too; an ignored signal stays ignored."""
    global _deferring
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) not in (_handler, signal.SIG_IGN, None):
                saved[sig] = signal.signal(sig, _handler)
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        try:
            if not _deferring:
                check()  # a signal received inside the block is never lost
        finally:
            for sig, before in saved.items():
                signal.signal(sig, before)
