"""The run folder's lock: who holds it, what it leaves behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deformconv.engine import RunInProgressError
from deformconv.engine.run_lock import LOCK_FILE, check_not_busy, out_dir_lock

fcntl = pytest.importorskip("fcntl")


class _Refused(Exception):
    pass


def test_a_folder_the_lock_created_goes_when_nothing_was_written(tmp_path: Path) -> None:
    """A run refused holding the lock (on_start raising) left a new folder holding .lock,
    and the folders above it that the lock created."""
    out = tmp_path / "new" / "run"
    with pytest.raises(_Refused), out_dir_lock(out):
        assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        raise _Refused
    assert not (tmp_path / "new").exists()
    (tmp_path / "new").mkdir()
    with pytest.raises(_Refused), out_dir_lock(out):
        raise _Refused
    assert not out.exists() and (tmp_path / "new").exists()  # not a folder it found
    with out_dir_lock(out):
        (out / "last.pt").write_bytes(b"")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "last.pt"]


def test_a_folder_that_existed_keeps_its_lock_file(tmp_path: Path) -> None:
    with pytest.raises(_Refused), out_dir_lock(tmp_path):
        raise _Refused
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]


def test_a_lock_file_removed_by_its_holder_is_not_the_one_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between opening .lock and locking it, its holder may remove it (its new folder, left
    empty): the lock then takes the file at the path, which another run would lock too."""
    out = tmp_path / "run"
    real_flock = fcntl.flock
    removed = []

    def flock_after_removal(file: object, operation: int) -> None:
        if not removed:
            removed.append((out / LOCK_FILE).stat().st_ino)
            (out / LOCK_FILE).unlink()
        real_flock(file, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_removal)
    with out_dir_lock(out):
        monkeypatch.setattr(fcntl, "flock", real_flock)
        with open(out / LOCK_FILE) as other, pytest.raises(BlockingIOError):
            real_flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert removed


def test_a_folder_under_a_file_is_named(tmp_path: Path) -> None:
    """mkdir's '[Errno 20] Not a directory: <out>' did not say which part is a file."""
    (tmp_path / "afile").touch()
    out = tmp_path / "afile" / "run"
    with pytest.raises(NotADirectoryError, match=f"{tmp_path / 'afile'} is a file, not a "
                                                 "folder$"), out_dir_lock(out):
        pass


def test_check_not_busy_names_the_holder_and_holds_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    check_not_busy(out)  # no folder: nothing to refuse, nothing created
    assert not out.exists()
    out.mkdir()
    with open(out / LOCK_FILE, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4242\n")
        holder.flush()
        with pytest.raises(RunInProgressError, match=r"another process \(pid 4242\) is "
                                                     "training into"):
            check_not_busy(out)
    check_not_busy(out)
    with out_dir_lock(out):
        check_not_busy(out)  # this process's own run: re-entrant, as the lock is
        with open(out / LOCK_FILE) as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # still held
