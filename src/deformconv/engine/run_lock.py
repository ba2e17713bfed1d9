"""One run at a time per output folder: a second process training into the same folder
would interleave its checkpoints and log lines with the first one's."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded there
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RunInProgressError", "out_dir_lock"]

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
    included), so a killed run never leaves the folder locked.
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
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK_FILE, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            raise RunInProgressError(
                f"another process (pid {holder}) is training into {out_dir}; wait for it, "
                "stop it, or choose another output folder") from None
        _held[key] = 1
        try:
            file.seek(0)
            file.truncate()
            file.write(f"{os.getpid()}\n")
            file.flush()
            yield
        finally:
            del _held[key]
            fcntl.flock(file, fcntl.LOCK_UN)
