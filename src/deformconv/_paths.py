"""Checks on the paths a command or a run writes to, shared by every package.

A leaf module (imports nothing of the project), so every package can use it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["check_folder_possible"]


def check_folder_possible(folder: Path, what: str) -> None:
    """Raise NotADirectoryError, naming ``what`` and the file in the way, when ``folder`` or
    a folder above it is an existing file (``folder`` could not be created)."""
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                raise NotADirectoryError(f"{what}: {path} is a file, not a folder")
            return
