"""Bounded workspaces: tiles that keep a kernel's column buffer within ``WORKSPACE_BYTES``,
and reusable per-thread CPU buffers."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

WORKSPACE_ENV = "DEFORMCONV_WORKSPACE_MB"


def _workspace_bytes() -> int:
    """``DEFORMCONV_WORKSPACE_MB`` (default 32) in bytes, refused unless a number >= 0."""
    text = os.environ.get(WORKSPACE_ENV, "32")
    try:
        mib = float(text)
    except ValueError:
        mib = math.nan
    if not 0 <= mib < math.inf:
        raise ValueError(f"{WORKSPACE_ENV} must be a number of MiB >= 0 (e.g. 32), got {text!r}")
    return int(mib * 2**20)


# Largest column buffer (bytes) a kernel may hold at once; tiles are sized to fit it.
WORKSPACE_BYTES = _workspace_bytes()


@dataclass(frozen=True)
class Tile:
    """Images ``n0:n1`` and output rows ``y0:y1`` (all rows when the tile spans images)."""

    n0: int
    n1: int
    y0: int
    y1: int


def _balanced_step(total: int, most: int) -> int:
    """The step that cuts ``total`` into as few parts of at most ``most`` as possible, evenly
    (an uneven last part makes a GEMM tile with poor efficiency)."""
    parts = max(1, -(-total // max(1, most)))
    return max(1, -(-total // parts))


def tiles(batch: int, rows: int, bytes_per_row: int, budget: int | None = None) -> Iterator[Tile]:
    """Split ``batch`` images × ``rows`` output rows into tiles of at most ``budget`` bytes.

    Whole images are grouped while they fit; a single image too large for the budget is
    cut into bands of rows (at least one row per tile, whatever the budget). Tiles are as
    even as possible. The budget defaults to the module's ``WORKSPACE_BYTES``, read at
    call time.
    """
    budget = WORKSPACE_BYTES if budget is None else budget
    image_bytes = max(1, bytes_per_row * rows)
    if image_bytes <= budget:
        step = _balanced_step(batch, budget // image_bytes)
        for n0 in range(0, batch, step):
            yield Tile(n0, min(batch, n0 + step), 0, rows)
        return
    band = _balanced_step(rows, budget // max(1, bytes_per_row))
    for n in range(batch):
        for y0 in range(0, rows, band):
            yield Tile(n, n + 1, y0, min(rows, y0 + band))


_workspace = threading.local()


def workspace(shape: tuple[int, ...], dtype: torch.dtype, slot: str = "columns") -> Tensor:
    """An uninitialised CPU tensor of ``shape`` backed by this thread's reusable ``slot``.

    Column tiles are tens of MiB; a fresh allocation of that size is a fresh mmap whose
    page faults cost as much as sampling the tile. Each slot's buffer grows to the largest
    request (bounded by the tiling budget, or by the largest weight) and is reused by the
    next call on the same thread, so a caller must be done with one tensor of a slot before
    asking for another.
    """
    numel = 1
    for size in shape:
        numel *= size
    nbytes = numel * torch.finfo(dtype).bits // 8
    buffers: dict[str, Tensor] = _workspace.__dict__.setdefault("buffers", {})
    buffer = buffers.get(slot)
    if buffer is None or buffer.numel() < nbytes:
        buffers.pop(slot, None)  # free the old one before allocating the new
        buffers[slot] = buffer = torch.empty(nbytes, dtype=torch.uint8)
    return buffer[:nbytes].view(dtype).view(shape)
