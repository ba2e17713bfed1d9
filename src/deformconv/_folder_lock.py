"""One writer at a time per folder, and the removal of what a killed one left there.

A training run (``engine.run_lock``) and a dataset export (``data.export``) hold their
folder's lock while they write into it; only under it do they remove the temporary files or
folders of a writer killed mid-write (SIGKILL runs no cleanup), since no live writer of
theirs can be writing those then. A leaf module (imports only ``_paths``), so every package
can use it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from ._paths import check_folder_possible

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; folders are not guarded there
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "TEMP_NAME_PART", "folder_lock", "lock_holder", "remove_stale"]

LOCK_FILE = ".lock"
# The random part of a name tempfile.mkstemp / mkdtemp gives: 8 of a-z, 0-9 and _.
TEMP_NAME_PART = "[a-z0-9_]{8}"

# Lock files this process holds, with how many nested holds: a command can hold its run's
# folder around the training call, which holds it again.
_held: dict[Path, int] = {}


@contextlib.contextmanager
def folder_lock(folder: Path, busy: Callable[[str], Exception], *,
                lock_file: str = LOCK_FILE, keep_lock_file: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/lock_file`` (holding this process's id) while
    inside; re-entrant within a process. Raises ``busy(holder's pid)`` if another process
    holds it.

    The operating system drops the lock when its process ends, however it ends (SIGKILL
    included), so a killed writer never leaves the folder locked. The lock file is removed
    on the way out unless ``keep_lock_file``; a folder this lock created is removed (its
    lock file with it) if nothing else was written into it, e.g. when the writer is refused
    once it holds the lock.
    """
    path = folder / lock_file
    key = path.resolve()
    if fcntl is None or key in _held:
        _held[key] = _held.get(key, 0) + 1
        try:
            yield
        finally:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        return
    created = False
    check_folder_possible(folder, f"cannot create the folder {folder}")
    while True:
        created = created or not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        file = open(path, "a+")  # noqa: SIM115 (closed below, or by the with block)
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with file:
                raise busy(_holder(file)) from None
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
            alone = created and [p.name for p in folder.iterdir()] == [lock_file]
            if alone or not keep_lock_file:
                path.unlink()  # still locked: whoever opened it retries at the path
            if alone:
                with contextlib.suppress(OSError):  # something written there meanwhile
                    folder.rmdir()
            fcntl.flock(file, fcntl.LOCK_UN)


def lock_holder(folder: Path, lock_file: str = LOCK_FILE) -> str | None:
    """The process id (or ``"unknown"``) of another process holding ``folder``'s lock now,
    None if none does (creates nothing, holds nothing)."""
    path = folder / lock_file
    if fcntl is None or path.resolve() in _held:
        return None
    try:
        file = open(path)  # noqa: SIM115
    except (FileNotFoundError, NotADirectoryError):
        return None
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(file)
        fcntl.flock(file, fcntl.LOCK_UN)
    return None


def remove_stale(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Remove the entries of ``folder`` whose names match ``pattern`` exactly (a file, or a
    folder with what it holds) and return them. Only for a caller holding the lock under
    which every writer of such names writes: another's live temporary would go under it."""
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for found in folder.iterdir():
            if not pattern.fullmatch(found.name):
                continue
            with contextlib.suppress(FileNotFoundError):
                if found.is_dir() and not found.is_symlink():
                    shutil.rmtree(found)
                else:
                    found.unlink()
                removed.append(found)
    return removed


def _holder(file: IO[str]) -> str:
    """The process id the holder of the lock on ``file`` wrote there."""
    file.seek(0)
    return file.read().strip() or "unknown"


def _same_file(path: Path, file: IO[str]) -> bool:
    """Whether ``path`` names the open ``file`` (not removed, nor replaced)."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(file.fileno()))
    except FileNotFoundError:
        return False
