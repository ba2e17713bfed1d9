"""Metrics as JSON lines (``<out>/metrics.jsonl``) and, when installed, TensorBoard scalars."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from .checkpoint import write_atomically

__all__ = ["MetricsLogger", "read_metrics"]


def _jsonable(value: Any) -> Any:
    """nan/inf -> None (strict JSON), tensors/numpy scalars -> Python numbers."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


class MetricsLogger:
    """Append one JSON object per line to ``<out_dir>/metrics.jsonl`` (rank 0 only).

    Every record has ``"split"`` ("train" or "val") and ``"iter"``. ``resume_at`` drops the
    lines an interrupted run wrote after its last checkpoint, so a resumed run's file reads
    as one uninterrupted run; that rewrite (and a new run's emptying of an earlier run's
    file) is atomic, so one that fails (a full disk) leaves the earlier file whole. Nothing
    is written before the first record (no file, no folder; an earlier file is rewritten
    then): a run that fails in its first step leaves the folder as it found it. Lines are
    appended as they come.
    ``tensorboard=True`` also writes scalars to ``<out_dir>/tensorboard`` (from the first
    record on) if ``torch.utils.tensorboard`` imports, else prints why not.
    """

    def __init__(
        self,
        out_dir: str | Path,
        enabled: bool = True,
        tensorboard: bool = False,
        resume_at: int | None = None,
    ) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        self._writer_class: Any = None  # SummaryWriter, made at the first record
        self._kept: str | None = None  # what an earlier file keeps, written at the first record
        if not enabled:
            return
        if self.path.exists():
            kept = ([] if resume_at is None else
                    [r for r in read_metrics(self.path) if r.get("iter", 0) <= resume_at])
            self._kept = "".join(json.dumps(r) + "\n" for r in kept)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                print(
                    f"TensorBoard logging is off: {err}. Install the 'tensorboard' package to "
                    f"enable it; metrics are still written to {self.path}.",
                    file=sys.stderr,
                )
            else:
                self._writer_class = SummaryWriter

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = _jsonable(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._kept is not None:
            kept, self._kept = self._kept.encode(), None
            write_atomically(self.path, lambda f: f.write(kept))
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is None and self._writer_class is not None:
            self.writer = self._writer_class(log_dir=str(self.path.parent / "tensorboard"))
        if self.writer is not None:
            split, step = record.get("split", "train"), record.get("iter", 0)
            for key, value in record.items():
                if key not in ("split", "iter") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file. A line that is no record is skipped: a torn
    last line from a crash, valid JSON other than an object (``null``), an object whose
    ``"iter"`` is no integer (a resume compares it with its checkpoint's)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and _is_count(record.get("iter", 0)):
            records.append(record)
    return records


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
