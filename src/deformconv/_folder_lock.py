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
import threading
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

_local = threading.local()


def _held() -> dict[Path, int]:
    """The lock files this thread holds, with how many nested holds (a command can hold its
    run's folder around the training call, which holds it again). Per thread: two threads
    of one process are two writers, whose flocks on their own opens exclude each other."""
    if not hasattr(_local, "held"):
        _local.held = {}
    return _local.held


@contextlib.contextmanager
def folder_lock(folder: Path, busy: Callable[[str], Exception] | None, *,
                lock_file: str = LOCK_FILE, keep_lock_file: bool = True) -> Iterator[None]:
    """Create ``folder`` if needed and hold an exclusive lock on ``folder/lock_file``
    (holding this process's id) while inside; re-entrant within a thread. Raises
    ``busy(holder's pid)`` if another process or thread holds it, or waits for it to be
    released if ``busy`` is None.

    The operating system drops the lock when its process ends, however it ends (SIGKILL
    included), so a killed writer never leaves the folder locked. The lock file is removed
    on the way out unless ``keep_lock_file``; the folders this lock created are removed (its
    lock file with them) if nothing else was written into them, e.g. when the writer is
    refused once it holds the lock. Without advisory locks (Windows) nothing is locked.
    """
    path = folder / lock_file
    check_folder_possible(folder, f"cannot create the folder {folder}")
    created = _make_folders(folder)
    key = path.resolve()
    held = _held()
    if fcntl is None or key in held:
        held[key] = held.get(key, 0) + 1
        try:
            yield
        finally:
            held[key] -= 1
            if not held[key]:
                del held[key]
        return
    while True:
        if not folder.exists():  # removed by the holder that created it, since
            created = _make_folders(folder)
        file = open(path, "a+")  # noqa: SIM115 (closed below, or by the with block)
        try:
            fcntl.flock(file, fcntl.LOCK_EX | (0 if busy is None else fcntl.LOCK_NB))
        except BlockingIOError:
            with file:
                raise busy(_holder(file)) from None  # type: ignore[misc]
        # Its holder may have removed the file (and the folder it created) between our open
        # and our lock: then lock the file now at that path.
        if _same_file(path, file):
            break
        file.close()
    with file:
        held[key] = 1
        try:
            file.seek(0)
            file.truncate()
            file.write(f"{os.getpid()}\n")
            file.flush()
            yield
        finally:
            del held[key]
            alone = bool(created) and [p.name for p in folder.iterdir()] == [lock_file]
            if alone or not keep_lock_file:
                path.unlink()  # still locked: whoever opened it retries at the path
            if alone:
                _remove_empty(created)
            fcntl.flock(file, fcntl.LOCK_UN)


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and the folders above it that are missing; returns those it
    created, deepest first."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return created


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for created in folders:
        try:
            created.rmdir()
        except OSError:  # something written there meanwhile
            return


def lock_holder(folder: Path, lock_file: str = LOCK_FILE) -> str | None:
    """The process id (or ``"unknown"``) of another process holding ``folder``'s lock now,
    None if none does (creates nothing, holds nothing)."""
    path = folder / lock_file
    if fcntl is None or path.resolve() in _held():
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
    which every writer of such names writes: another's live temporary would go under it.
    Without advisory locks (Windows) no lock excludes the others: nothing is removed."""
    removed: list[Path] = []
    if fcntl is None:
        return removed
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
