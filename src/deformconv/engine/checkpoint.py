"""Atomic checkpoint files: never a half-written ``last.pt``, clear errors for bad ones."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "deformconv-train-v1"
REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "iteration", "rng", "config")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or is not a deformconv training checkpoint."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically and durably.

    The bytes go to a temporary file in the same folder, are flushed and fsync'ed, then the
    file is renamed over ``path`` with ``os.replace`` (atomic on POSIX and Windows) and the
    folder is fsync'ed so the rename survives a power loss. A crash at any point leaves
    either the old file or the new one, never a mix; the temporary file is removed on error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # Directory fsync is not available everywhere (Windows): best effort.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by the trainer.

    Loads with ``weights_only=True`` (no arbitrary code from the file). Raises
    ``FileNotFoundError`` for a missing file and :class:`CheckpointError` naming the path for
    a truncated/corrupt file or one without the trainer's keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated/corrupt archives
        raise CheckpointError(
            f"could not read checkpoint {path}: {type(err).__name__}: {err}. "
            "The file is corrupt or not a torch checkpoint; delete it or pick another one."
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}, expected a dict from the trainer"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is not a deformconv training checkpoint: missing keys {missing}"
        )
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {state['format']!r}, expected {CHECKPOINT_FORMAT!r}"
        )
    return state
