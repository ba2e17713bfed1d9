"""Checks on the paths a command or a run writes to, shared by every package.

A leaf module (imports nothing of the project), so every package can use it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["check_folder_possible", "naming_the_file", "os_errors"]


def check_folder_possible(folder: Path, what: str) -> None:
    """Raise NotADirectoryError, naming ``what`` and the file in the way, when ``folder`` or
    a folder above it is an existing file (``folder`` could not be created)."""
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                raise NotADirectoryError(f"{what}: {path} is a file, not a folder")
            return


def os_errors(err: BaseException) -> Iterator[OSError]:
    """Each OSError that ``err`` is or that its ``__cause__`` / ``__context__`` chain holds
    (torch's zip writer, under ``torch.save``, replaces an OSError with a RuntimeError of its
    own), nearest first."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            yield current
        current = current.__cause__ or current.__context__


@contextlib.contextmanager
def naming_the_file(path: str | os.PathLike) -> Iterator[None]:
    """Give the OSError that a write inside raises (or that a RuntimeError of torch's zip
    writer holds, :func:`os_errors`) ``path`` as its ``filename`` where it names no file: a
    failed ``write`` on an open file (a full disk) names none, so its message would not say
    which file could not be written. One with no errno (``OSError("message")``) is left."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        found = next(os_errors(err), None)
        # errno: an OSError("message") would print as "[Errno None] None: <path>"
        if found is not None and found.errno is not None and found.filename is None:
            found.filename = os.fspath(path)
        raise
