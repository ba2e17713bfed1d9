"""deformconv.runs.results: JSON results written whole or not at all."""

from __future__ import annotations

import json
import os

import pytest

from deformconv.engine import checkpoint
from deformconv.runs import write_json


def test_write_json_writes_nan_as_null_and_creates_folders(tmp_path):
    path = write_json({"a": float("nan"), "b": (1, 2)}, tmp_path / "x" / "r.json")
    assert json.loads(path.read_text()) == {"a": None, "b": [1, 2]}


def test_write_json_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    """A summary.json is replaced in one step: a failure (a full disk, a kill) before the
    rename leaves the old file, not an empty or half-written one, and no temporary file."""
    path = write_json({"old": 1}, tmp_path / "summary.json")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_json({"new": 2}, path)
    assert json.loads(path.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["summary.json"]
