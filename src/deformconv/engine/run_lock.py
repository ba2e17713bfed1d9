"""One run at a time per output folder: a second process training into the same folder
would interleave its checkpoints and log lines with the first one's."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from .._folder_lock import LOCK_FILE, folder_lock, lock_holder

__all__ = ["LOCK_FILE", "RunInProgressError", "busy_error", "check_not_busy", "out_dir_lock"]


class RunInProgressError(RuntimeError):
    """Another live process is training into the same output folder."""


def out_dir_lock(out_dir: Path) -> AbstractContextManager[None]:
    """Hold an exclusive lock on ``out_dir/.lock`` (holding this process's id) while inside;
    re-entrant within a process (:func:`deformconv._folder_lock.folder_lock`).

    The operating system drops the lock when its process ends, however it ends (SIGKILL
    included), so a killed run never leaves the folder locked. A folder this lock created is
    removed on the way out (its ``.lock`` with it) if nothing else was written into it, e.g.
    when the run is refused once it holds the lock.
    """
    return folder_lock(out_dir, lambda holder: busy_error(holder, out_dir))


def check_not_busy(out_dir: Path) -> None:
    """Raise :class:`RunInProgressError` if another process holds ``out_dir``'s lock now
    (creates nothing, holds nothing): refuses a live run's folder early, before a run's
    setup; :func:`out_dir_lock` stays the guard."""
    holder = lock_holder(out_dir)
    if holder is not None:
        raise busy_error(holder, out_dir)


def busy_error(holder: str, folder: Path, doing: str = "training into") -> RunInProgressError:
    """The error for ``folder``, whose lock the process ``holder`` holds while ``doing`` it
    (``"training into"``, ``"running a demo in"``)."""
    return RunInProgressError(
        f"another process (pid {holder}) is {doing} {folder}; wait for it, "
        "stop it, or choose another output folder")
