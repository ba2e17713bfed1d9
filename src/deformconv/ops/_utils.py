"""Argument normalisation, input checks and workspace tiling shared by the ops."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

# Largest column buffer (bytes) a kernel may hold at once; tiles are sized to fit it.
WORKSPACE_BYTES = int(float(os.environ.get("DEFORMCONV_WORKSPACE_MB", "48")) * 2**20)

FLOAT_DTYPES = (torch.float32, torch.float64)
UPCAST_DTYPES = (torch.float16, torch.bfloat16)


def pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """``3 -> (3, 3)``; a pair is checked and returned as a tuple."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def check_tensor(name: str, tensor: object, ndim: int | None = None) -> Tensor:
    """Raise a clear error unless ``tensor`` is a floating tensor with ``ndim`` dims."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if ndim is not None and tensor.dim() != ndim:
        raise ValueError(
            f"{name} must be {ndim}-D, got {tensor.dim()}-D tensor of shape {tuple(tensor.shape)}"
        )
    if tensor.dtype not in FLOAT_DTYPES + UPCAST_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {tensor.dtype}"
        )
    return tensor


def check_same_dtype_device(
    reference_name: str, reference: Tensor, **others: Tensor | None
) -> None:
    """All tensors in ``others`` must share ``reference``'s dtype and device."""
    for name, tensor in others.items():
        if tensor is None:
            continue
        if tensor.device != reference.device:
            raise RuntimeError(
                f"{name} is on {tensor.device} but {reference_name} is on {reference.device}; "
                "all tensors must be on the same device"
            )
        if tensor.dtype != reference.dtype:
            raise TypeError(
                f"{name} has dtype {tensor.dtype} but {reference_name} has {reference.dtype}; "
                "all tensors must share one dtype"
            )


def check_no_nan(name: str, tensor: Tensor) -> None:
    """NaN positions make sampling meaningless: refuse them instead of returning garbage."""
    if tensor.numel() and bool(torch.isnan(tensor).any()):
        count = int(torch.isnan(tensor).sum())
        raise ValueError(f"{name} contains {count} NaN value(s); sample positions must not be NaN")


@dataclass(frozen=True)
class Tile:
    """Images ``n0:n1`` and output rows ``y0:y1`` (all rows when the tile spans images)."""

    n0: int
    n1: int
    y0: int
    y1: int


def tiles(batch: int, rows: int, bytes_per_row: int, budget: int | None = None) -> Iterator[Tile]:
    """Split ``batch`` images × ``rows`` output rows into tiles of at most ``budget`` bytes.

    Whole images are grouped while they fit; a single image too large for the budget is
    cut into bands of rows (at least one row per tile, whatever the budget). The budget
    defaults to the module's ``WORKSPACE_BYTES``, read at call time.
    """
    budget = WORKSPACE_BYTES if budget is None else budget
    image_bytes = max(1, bytes_per_row * rows)
    if image_bytes <= budget:
        step = max(1, budget // image_bytes)
        for n0 in range(0, batch, step):
            yield Tile(n0, min(batch, n0 + step), 0, rows)
        return
    band = max(1, budget // max(1, bytes_per_row))
    for n in range(batch):
        for y0 in range(0, rows, band):
            yield Tile(n, n + 1, y0, min(rows, y0 + band))
