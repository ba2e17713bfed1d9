"""Where Numba caches the compiled kernels, when it has nowhere to put them by itself.

Every kernel is ``numba.njit(cache=True)``. Numba caches next to the source
(``ops/_numba/__pycache__``), else in the user's cache folder (``~/.cache/numba``); in a
read-only install without a writable home both fail, and decorating the first kernel
raised ``RuntimeError: cannot cache function ...: no locator available``. Then the kernels
are cached in a private folder under the temp folder instead, with one warning.
"""

from __future__ import annotations

import atexit
import getpass
import os
import shutil
import stat
import tempfile
import warnings
from pathlib import Path

import numba
from numba.core.caching import InTreeCacheLocator, UserWideCacheLocator

__all__ = ["ensure_cache_location", "private_folder"]


def _has_locator() -> bool:
    """Whether one of Numba's default locators can cache the functions of this folder's
    files (they all share its ``__pycache__`` and its folder in the user cache)."""
    return any(locator.from_function(_has_locator, __file__) is not None
               for locator in (InTreeCacheLocator, UserWideCacheLocator))


def private_folder(path: Path) -> bool:
    """Create ``path`` (mode 0o700) or accept an existing folder that is this user's and
    that nobody else can write to: Numba's cache index is a pickle, loaded as code."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError:
        return False
    private = (not hasattr(os, "getuid")  # Windows: the temp folder is the user's own
               or (info.st_uid == os.getuid()
                   and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)))
    return stat.S_ISDIR(info.st_mode) and private and os.access(path, os.W_OK | os.X_OK)


def ensure_cache_location() -> None:
    """Point ``numba.config.CACHE_DIR`` at a writable folder if Numba has no locator for
    the kernels' files and the user chose none (``NUMBA_CACHE_DIR``)."""
    # CACHE_LOCATOR_CLASSES came with Numba 0.62; the package allows 0.59
    if (numba.config.CACHE_DIR or getattr(numba.config, "CACHE_LOCATOR_CLASSES", None)
            or _has_locator()):
        return
    user = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
    shared = Path(tempfile.gettempdir()) / f"deformconv-numba-{user}"
    if private_folder(shared):
        folder = str(shared)
    else:  # someone else's, or open to others: a folder of this process's own
        try:
            folder = tempfile.mkdtemp(prefix="deformconv-numba-")
        except OSError as err:
            raise RuntimeError(
                "Numba cannot cache deformconv's kernels: the package folder, the user "
                f"cache folder and the temp folder {tempfile.gettempdir()} are not writable; "
                "set NUMBA_CACHE_DIR to a writable folder") from err
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    numba.config.CACHE_DIR = folder
    warnings.warn(
        "Numba cannot write its cache next to deformconv's kernels nor in the user cache "
        f"folder: caching them in {folder}, which may not last; set NUMBA_CACHE_DIR to a "
        "writable folder for a lasting cache", RuntimeWarning, stacklevel=2)
