"""Results on disk: pretty JSON with non-finite floats as null and paths as text."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..engine.checkpoint import write_atomically

__all__ = ["write_json"]


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """Pretty JSON (NaN written as null) to ``path``, folders created; atomically (a
    reader or a crash sees the old file or the new one, never a part)."""
    text = json.dumps(_plain(data), indent=2) + "\n"
    return write_atomically(path, lambda f: f.write(text.encode()))


def _plain(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return obj.as_posix()
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _plain(obj.item())
    return obj
