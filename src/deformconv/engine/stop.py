"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption notice).

While :class:`StopSignals` is installed, the first of these signals only records a request;
the training loop sees it at the end of the iteration (in the final validation, before
each batch), writes ``last.pt`` and raises :class:`TrainingStopped`. A parameter update is
never cut in half, and the run resumes from where it stopped. A second Ctrl-C stops at
once (as Python's default would); a repeated SIGTERM changes nothing, since the stop is
under way (a scheduler's SIGKILL ends it anyway).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType

__all__ = ["STOP_SIGNALS", "StopSignals", "TrainingStopped", "hold_stop_signals_for_workers",
           "leave_stop_signals_to_parent"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Whether a StopSignals is installed in this process; processes forked from it inherit this.
_installed = False


class TrainingStopped(KeyboardInterrupt):
    """A run stopped by a signal at an iteration boundary, after writing its checkpoint.

    A ``KeyboardInterrupt``, so code that handles Ctrl-C handles this too.
    ``checkpoint`` is None on ranks other than 0 (they write none).
    """

    def __init__(self, signum: int, iteration: int, total: int,
                 checkpoint: Path | None) -> None:
        self.signum, self.iteration, self.total = signum, iteration, total
        self.checkpoint = checkpoint
        saved = "" if checkpoint is None else f"; saved {checkpoint}"
        during = " in the final validation" if iteration == total else ""
        super().__init__(f"stopped by {signal.Signals(signum).name}{during} after iteration "
                         f"{iteration}/{total}{saved}")

    def __reduce__(self) -> tuple:  # picklable, e.g. to send from a worker process
        return type(self), (self.signum, self.iteration, self.total, self.checkpoint)


class StopSignals:
    """Context manager: turns SIGINT and SIGTERM into a stop request (:attr:`signum`).

    Installed only in the main thread (Python delivers signals there); elsewhere it does
    nothing and the signals keep their handlers. Processes forked while it is installed
    (data loader workers) ignore the signals: their parent ends them when it stops.
    ``announce``: say on stderr that the stop is under way (one rank of several says it).
    """

    def __init__(self, announce: bool = True) -> None:
        self.signum: int | None = None
        self._announce = announce
        self._pid = os.getpid()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        global _installed
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
            _installed = True
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        global _installed
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        if self._previous:
            _installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return
        if self.signum is None:
            self.signum = signum
            if not self._announce:
                return
            again = " (Ctrl-C again: stop at once)" if signum == signal.SIGINT else ""
            # os.write: a print here could re-enter a stream the loop is writing to
            os.write(2, f"\ndeformconv: {signal.Signals(signum).name} received: stopping after "
                        f"this iteration, with a checkpoint{again}\n".encode())
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt


@contextlib.contextmanager
def hold_stop_signals_for_workers() -> Iterator[bool]:
    """Around starting data-loading workers while a :class:`StopSignals` is installed: block
    SIGINT and SIGTERM in this thread, so that the workers start with them blocked (a
    forked or spawned process keeps its parent's mask) until
    ``leave_stop_signals_to_parent(held=True)`` has them ignored. Yields whether it blocked
    them; outside a run (or where signals cannot be blocked) it changes nothing.

    torch's worker puts in its own SIGTERM handler, which dies of the signal, before it
    calls ``worker_init_fn``: a group signal in between killed it. A signal for this process
    that arrives meanwhile is not lost: it waits until the mask is restored on leaving the
    block and goes to the StopSignals handler then (or at once, in another of its threads).
    Threads started in the block (the loader's) keep the signals blocked, which changes
    nothing: Python runs handlers in the main thread. Workers of a ``forkserver`` context
    (Python 3.14's default on Linux) are forked by the server, not from here: they still
    have the window at their start.
    """
    if not (_installed and hasattr(signal, "pthread_sigmask")):
        yield False
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield True
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def leave_stop_signals_to_parent(held: bool = False) -> None:
    """In a data-loading worker started while its parent handles stop signals: ignore them.

    A signal to the whole process group (a scheduler's SIGTERM, Ctrl-C) reaches the workers
    too. torch's worker would die of SIGTERM, and its parent's loader would report that as a
    crash before the run could stop at its iteration boundary; the parent ends its workers
    when it stops. ``held``: the parent started this worker in
    :func:`hold_stop_signals_for_workers`; the signals are unblocked once ignored (one that
    came in the meantime is dropped: the parent got it too). Otherwise the worker acts only
    if it was forked while a StopSignals was installed.
    """
    if held or _installed:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
    if held:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
