"""Atomic checkpoint files: never a half-written ``last.pt``, clear errors for bad ones
(changed bytes included: each record's CRC-32 is checked on reading)."""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from .._folder_lock import TEMP_NAME_PART, remove_stale
from .._paths import check_folder_possible, naming_the_file
from .config import describe_type, is_of_type

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "check_writable",
    "checkpoint_iteration",
    "load_checkpoint",
    "load_weights",
    "remove_stale_temp_files",
    "save_checkpoint",
    "write_atomically",
]

CHECKPOINT_FORMAT = "deformconv-train-v1"
REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "iteration", "rng", "config")
# The type of each field a resume reads (those not in REQUIRED_KEYS where present: older
# checkpoints lack some).
FIELD_TYPES: dict[str, Any] = {
    "model": dict, "optimizer": dict, "scheduler": dict, "config": dict, "iteration": int,
    "rng": list, "world_size": int, "log_window": list, "finished": bool,
    "best_metric": float | None, "train_seconds": float, "train_cpu_seconds": float | None,
    "threads": int | None,
}
# What each process's entry of "rng" (engine.seeding.get_rng_state) and "log_window" holds.
PER_PROCESS_KEYS = {"rng": ("torch", "numpy", "python"), "log_window": ("loss", "images", "start")}


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or is not a deformconv training checkpoint."""


def checkpoint_iteration(path: str | os.PathLike) -> float:
    """The iteration a checkpoint was saved at, without reading its tensors; inf for a file
    that is not a readable checkpoint (so it counts as later than any: stale, or not to be
    replaced unasked)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                   ["iteration"])
    except Exception:  # torch raises several types for foreign or corrupt files
        return math.inf


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically and durably (:func:`write_atomically`)."""
    return write_atomically(path, lambda f: torch.save(state, f))


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` by ``write(file)`` atomically and durably; returns ``path``.

    The bytes go to a temporary file in the same folder, are flushed and fsync'ed, then the
    file is renamed over ``path`` with ``os.replace`` (atomic on POSIX and Windows) and the
    folder is fsync'ed so the rename survives a power loss. A crash at any point leaves
    either the old file or the new one, never a mix; the temporary file is removed on error.
    An OSError of the write (or the one torch's zip writer wraps) names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _make_temp_file(path)
    try:
        with naming_the_file(path), os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; give it the mode any other new file would have
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _make_temp_file(path: Path) -> tuple[int, str]:
    """``mkstemp`` of the temporary file :func:`write_atomically` writes ``path`` through:
    ``.<name>.<8 random characters>.tmp`` beside it."""
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def _temp_file_pattern(path: Path) -> re.Pattern[str]:
    """The names :func:`_make_temp_file` gives for ``path``."""
    return re.compile(re.escape(f".{path.name}.") + TEMP_NAME_PART + re.escape(".tmp"))


def check_writable(path: str | os.PathLike, what: str | None = None) -> None:
    """Raise ``PermissionError`` naming the folder if :func:`write_atomically` may not
    create its temporary file for ``path`` there, or, where ``path``'s folder is yet to be
    created, in the nearest existing folder above, where it would be (checked by creating
    and removing one); another failure (a full disk, a read-only file system) is raised as
    it is, naming ``path``, not the temporary file. With ``what``, a file in the way of
    ``path``'s folder is refused first (:func:`check_folder_possible`, naming ``what``)."""
    path = Path(path)
    if what is not None:
        check_folder_possible(path.parent, what)
    folder = next(f for f in (path.parent, *path.parent.parents) if f.is_dir())
    try:
        fd, tmp = _make_temp_file(folder / path.name)
    except PermissionError as err:
        raise PermissionError(
            f"cannot create files in {folder} (to write {path.name}): "
            f"{err.strerror or err}; make the folder writable or choose another one") from err
    except OSError as err:
        if err.errno is not None:
            err.filename, err.filename2 = os.fspath(path), None
        raise
    os.close(fd)
    os.unlink(tmp)


def remove_stale_temp_files(paths: list[Path]) -> list[Path]:
    """Remove the temporary files that :func:`write_atomically` left for ``paths`` when its
    process was killed mid-write (nothing else: only names of its exact pattern); returns
    those removed. Only for a caller that alone writes ``paths`` (holding their folder's
    lock): another process's temporary file would be removed under it."""
    return [found for path in paths
            for found in remove_stale(path.parent, _temp_file_pattern(path))]


def _umask() -> int:
    """The process's umask; read from /proc where it can be, since os.umask can only read
    it by setting it, which other threads creating files at that moment would see."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # Directory fsync is not available everywhere (Windows): best effort.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read(path: str | os.PathLike, map_location: str | torch.device) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file."""
    path = Path(path)
    if path.is_dir():
        found = [name for name in ("last.pt", "best.pt") if (path / name).is_file()]
        hint = f"; give a file in it: {', '.join(str(path / n) for n in found)}" if found else ""
        raise FileNotFoundError(f"checkpoint {path} is a folder{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); delete it or pick "
                              "another one")
    _check_crcs(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated/corrupt archives
        reason = _load_error_reason(err)
        if reason.startswith("Unsupported global"):
            raise CheckpointError(
                f"checkpoint {path} holds objects other than tensors and plain containers "
                f"({reason}); it was not written by deformconv's trainer, and is not loaded, "
                "as loading it could run code it holds") from err
        kind = _other_file_kind(path)
        if kind:
            raise CheckpointError(
                f"{path} is {kind}, not a checkpoint; give a checkpoint that train or demo "
                "wrote (last.pt or best.pt in a run's folder)") from err
        detail = f"{type(err).__name__}: {reason}" if reason else type(err).__name__
        raise CheckpointError(
            f"could not read checkpoint {path}: {detail}. "
            "The file is corrupt or not a torch checkpoint; delete it or pick another one."
        ) from err


# Files that lie beside checkpoints and are given in their place: suffix -> what they are.
OTHER_FILES = {".json": "a JSON file", ".jsonl": "a JSON-lines file (a metrics log)",
               ".onnx": "an ONNX model", ".md": "a markdown file", ".png": "a PNG image",
               ".yaml": "a YAML file", ".yml": "a YAML file", ".toml": "a TOML file",
               ".txt": "a text file"}


def _other_file_kind(path: Path) -> str | None:
    """What a file torch cannot load is, when its suffix or first bytes tell (a run's
    metrics.json, an exported model.onnx, ...); None otherwise."""
    kind = OTHER_FILES.get(path.suffix.lower())
    if kind:
        return kind
    with contextlib.suppress(OSError), open(path, "rb") as file:
        start = file.read(64).lstrip()
        if start[:1] in (b"{", b"["):
            return "a JSON file (by its contents)"
        if start.startswith(b"\x89PNG"):
            return "a PNG image (by its contents)"
    return None


def _load_error_reason(err: Exception) -> str:
    """What ``torch.load`` says went wrong, on one line: for a weights-only refusal its
    reason alone, without torch's advice around it to load with ``weights_only=False``
    (which would run whatever code the file holds)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        text = text.split(" Please use ")[0]
    return " ".join(text.split())


def _check_crcs(path: Path) -> None:
    """Raise :class:`CheckpointError` if a record of the zip archive ``torch.save`` wrote does
    not match its CRC-32: torch's reader does not check them, so bytes changed on disk or in
    transfer would load as silently wrong weights. Files that are not zip archives (torch's
    legacy format, truncated files) are left to ``torch.load``."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        return
    with archive:
        for record in archive.infolist():
            if record.CRC == 0:  # written with torch.serialization.set_crc32_options(False)
                continue
            try:
                with archive.open(record) as f:
                    while f.read(1 << 24):  # the CRC is checked at the end of the record
                        pass
            except (zipfile.BadZipFile, OSError) as err:
                raise CheckpointError(
                    f"checkpoint {path} is corrupt: record {record.filename!r} does not match "
                    "its CRC-32, its bytes changed after it was written; delete it or pick "
                    "another one") from err


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by the trainer.

    Loads with ``weights_only=True`` (no arbitrary code from the file). Raises
    ``FileNotFoundError`` for a missing file and :class:`CheckpointError` naming the path for
    a truncated/corrupt file, one without the trainer's keys, or one whose fields a resume
    reads are malformed (naming the field): of another type, an iteration below 0, not one
    RNG state (and log window) per process of its run.
    """
    state = _read(path, map_location)
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
    problem = _malformed_field(state)
    if problem:
        raise CheckpointError(f"checkpoint {path} is malformed: {problem}; it was changed "
                              "since the trainer wrote it: delete it or pick another one")
    return state


def _malformed_field(state: dict[str, Any]) -> str | None:
    """What is wrong with the first field of a trainer checkpoint that a resume could not
    use (its type, its range, one entry per process), or None."""
    for key, hint in FIELD_TYPES.items():
        if key in state and not is_of_type(state[key], hint):
            value, kind = state[key], type(state[key]).__name__
            scalar = isinstance(value, (int, float, str, type(None)))
            return f"{key} must be {describe_type(hint)}, got " + (f"{value!r} ({kind})" if scalar
                                                                else kind)
    if state["iteration"] < 0:
        return f"iteration must be >= 0, got {state['iteration']}"
    processes = state.get("world_size", 1)
    if processes < 1:
        return f"world_size must be >= 1, got {processes}"
    for key, keys in PER_PROCESS_KEYS.items():
        if key not in state:  # log_window: checkpoints before 2026-12-02 lack it
            continue
        entries = state[key]
        if len(entries) != processes:
            return (f"{key} must hold one entry per process of its run (world_size "
                    f"{processes}), got {len(entries)}")
        if not all(isinstance(entry, dict) and all(k in entry for k in keys)
                   for entry in entries):
            return f"{key} must hold a dict with keys {list(keys)} per process"
    seconds = state.get("train_seconds", 0.0)
    if not (math.isfinite(seconds) and seconds >= 0):
        return f"train_seconds must be finite and >= 0, got {seconds}"
    return None


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict:
    """Load weights into ``model`` from a trainer checkpoint or a plain ``state_dict`` file.

    Returns what the file holds (the whole checkpoint, or the state dict). Raises
    :class:`CheckpointError` naming the path when the file is unreadable, holds no state
    dict, or its tensors do not fit ``model`` (missing/unexpected keys, wrong shapes).
    """
    obj = _read(path, "cpu")
    is_trainer = isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT
    state = obj.get("model") if is_trainer else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path} holds no model weights: expected a trainer checkpoint or a state_dict "
            f"(dict of tensors), got {type(obj).__name__}"
        )
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        raise CheckpointError(
            f"weights in {path} do not fit {type(model).__name__}: {err}"
        ) from err
    return obj
