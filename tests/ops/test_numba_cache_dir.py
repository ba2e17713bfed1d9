"""Numba's kernel cache in a read-only install: a private temp folder, with one warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import deformconv
from deformconv.ops._numba.cache_dir import private_folder

# Numba's locators cannot write anywhere but under the temp folder (root ignores chmod, so
# their writability check is what refuses), then every kernel module is imported.
READ_ONLY = """
import importlib, os, pkgutil, warnings
import numba.core.caching as caching

temp = os.environ["TMPDIR"]
ensure = caching._CacheLocator.ensure_cache_path

def read_only(self):
    if not self.get_cache_path().startswith(temp):
        raise PermissionError(13, "Read-only file system", self.get_cache_path())
    ensure(self)

caching._CacheLocator.ensure_cache_path = read_only
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import deformconv.ops._numba as package
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
folder = os.path.join(temp, f"deformconv-numba-{os.getuid()}")
messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
assert len(messages) == 1 and folder in messages[0] and "NUMBA_CACHE_DIR" in messages[0]
from deformconv.ops._numba import bilinear
assert bilinear.corners._cache.cache_path.startswith(folder), bilinear.corners._cache.cache_path
"""


def test_a_read_only_install_caches_the_kernels_in_a_temp_folder(tmp_path: Path) -> None:
    """Decorating the first kernel raised RuntimeError: cannot cache function 'corners': no
    locator available for file '.../ops/_numba/bilinear.py'."""
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    src = str(Path(deformconv.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", READ_ONLY], capture_output=True, text=True,
                          env={**env, "TMPDIR": str(tmp_path)}, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / f"deformconv-numba-{os.getuid()}").is_dir()


def test_the_temp_cache_folder_must_be_private(tmp_path: Path) -> None:
    """Numba loads its cache index with pickle: a folder others can write is not used."""
    folder = tmp_path / "cache"
    assert private_folder(folder) and (folder.stat().st_mode & 0o777) == 0o700
    folder.chmod(0o777)
    assert not private_folder(folder)
    assert not private_folder(tmp_path / "missing" / "cache")  # not created: no parents

