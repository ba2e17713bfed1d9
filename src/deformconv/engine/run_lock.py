"""One run at a time per output folder: a second process training into the same folder
would interleave its checkpoints and log lines with the first one's."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .._paths import check_folder_possible

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded there
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RunInProgressError", "check_not_busy", "out_dir_lock"]

LOCK_FILE = ".lock"


class RunInProgressError(RuntimeError):
    """Another live process is training into the same output folder."""


# Folders this process holds, with how many nested holds: a command can hold its run's folder
# around the training call, which holds it again.
_held: dict[Path, int] = {}


@contextlib.contextmanager
def out_dir_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir/.lock`` (holding this process's id) while inside;
    re-entrant within a process.

    The operating system drops the lock when its process ends, however it ends (SIGKILL
    included), so a killed run never leaves the folder locked. A folder this lock created is
    removed on the way out (its ``.lock`` with it) if nothing else was written into it, e.g.
    when the run is refused once it holds the lock.
    """
    key = out_dir.resolve()
    if fcntl is None or key in _held:
        _held[key] = _held.get(key, 0) + 1
        try:
            yield
        finally:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        return
    path = out_dir / LOCK_FILE
    created = False
    check_folder_possible(out_dir, f"cannot create the run's folder {out_dir}")
    while True:
        created = created or not out_dir.exists()
        out_dir.mkdir(parents=True, exist_ok=True)
        file = open(path, "a+")  # noqa: SIM115 (closed below, or by the with block)
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with file:
                raise _busy(file, out_dir) from None
        # Its holder may have removed the file (and the folder it created) between our open
        # and our lock: then lock the file now at that path.
        if _same_file(path, file):
            break
        file.close()
    with file:
        _held[key] = 1
        try:
            file.seek(0)
            file.truncate()
            file.write(f"{os.getpid()}\n")
            file.flush()
            yield
        finally:
            del _held[key]
            if created and [p.name for p in out_dir.iterdir()] == [LOCK_FILE]:
                path.unlink()  # still locked: whoever opened it retries at the path
                with contextlib.suppress(OSError):  # something written there meanwhile
                    out_dir.rmdir()
            fcntl.flock(file, fcntl.LOCK_UN)


def check_not_busy(out_dir: Path) -> None:
    """Raise :class:`RunInProgressError` if another process holds ``out_dir``'s lock now
    (creates nothing, holds nothing): refuses a live run's folder early, before a run's
    setup; :func:`out_dir_lock` stays the guard."""
    if fcntl is None or out_dir.resolve() in _held:
        return
    try:
        file = open(out_dir / LOCK_FILE)  # noqa: SIM115
    except (FileNotFoundError, NotADirectoryError):
        return
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(file, out_dir) from None
        fcntl.flock(file, fcntl.LOCK_UN)


def _busy(file: IO[str], out_dir: Path) -> RunInProgressError:
    """The error for ``out_dir``, whose lock ``file`` another process holds."""
    file.seek(0)
    holder = file.read().strip() or "unknown"
    return RunInProgressError(
        f"another process (pid {holder}) is training into {out_dir}; wait for it, "
        "stop it, or choose another output folder")


def _same_file(path: Path, file: IO[str]) -> bool:
    """Whether ``path`` names the open ``file`` (not removed, nor replaced)."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(file.fileno()))
    except FileNotFoundError:
        return False
