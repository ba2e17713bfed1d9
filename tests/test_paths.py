"""_paths: the checks and error messages about the paths the package writes."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import pytest
import torch

from deformconv._paths import naming_the_file, os_errors


class FullDisk(io.BytesIO):
    """A file whose writes past 1000 bytes fail as on a full disk."""

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_a_failed_write_names_the_file(tmp_path: Path) -> None:
    """A write on an open file that failed (a full disk) named no file."""
    path = tmp_path / "figure.png"
    with pytest.raises(OSError, match=r"\[Errno 28\] No space left on device: '.*figure.png'"
                       ) as raised, naming_the_file(path):
        file = FullDisk()
        file.write(b"x" * 2000)
        file.write(b"y")
    assert raised.value.filename == str(path)


def test_torch_saves_failed_write_names_the_file(tmp_path: Path) -> None:
    """torch's zip writer replaces the OSError with its own RuntimeError ('unexpected pos
    ...'); the OSError it holds names the file."""
    path = tmp_path / "last.pt"
    with pytest.raises(RuntimeError) as raised, naming_the_file(path):
        torch.save({"weights": torch.zeros(10_000)}, FullDisk())
    (found, *_) = os_errors(raised.value)
    assert (found.errno, found.filename) == (errno.ENOSPC, str(path))


def test_a_file_an_error_names_is_kept_and_one_without_errno_left(tmp_path: Path) -> None:
    with pytest.raises(OSError) as raised, naming_the_file(tmp_path / "b"):
        raise OSError(errno.ENOSPC, "No space left on device", "a")
    assert raised.value.filename == "a"
    with pytest.raises(OSError, match=r"^disk full$"), naming_the_file(tmp_path / "b"):
        raise OSError("disk full")
