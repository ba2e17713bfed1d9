"""Argument normalisation, input checks and workspace tiling shared by the ops."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

# Largest column buffer (bytes) a kernel may hold at once; tiles are sized to fit it.
WORKSPACE_BYTES = int(float(os.environ.get("DEFORMCONV_WORKSPACE_MB", "32")) * 2**20)

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


def finite_float(name: str, value: object, *, positive: bool = False) -> float:
    """``float(value)``, refused with an error naming ``name`` unless finite (and > 0 with
    ``positive``): a NaN scale would pass ``value <= 0`` checks and pool silent zeros."""
    expected = "a finite number > 0" if positive else "a finite number"
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be {expected}, got {value!r}") from None
    if not math.isfinite(number) or (positive and not number > 0):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


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


def float32_under_autocast(device_type: str, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Cast ``tensors`` to float32 when autocast is on for ``device_type``, else return them.

    Under autocast an offset branch (a conv) yields bf16/fp16 while the features stay
    float32; sampling positions need full precision, so these ops run in float32 there.
    """
    if not (torch.amp.is_autocast_available(device_type)
            and torch.is_autocast_enabled(device_type)):
        return tensors
    return tuple(t.float() if isinstance(t, Tensor) and t.is_floating_point() else t
                 for t in tensors)


def register_float32_autocast(*op_names: str) -> None:
    """Under autocast, run the ops in float32 and keep their inner GEMMs out of autocast."""
    for name in op_names:
        for device_type in ("cpu", "cuda"):
            torch.library.register_autocast(name, device_type, torch.float32)


def check_no_nan(name: str, tensor: Tensor) -> None:
    """NaN positions make sampling meaningless: refuse them instead of returning garbage."""
    # max() propagates NaN: one reduction without a bool temporary (15 vs 77 µs at res5).
    if tensor.numel() and bool(torch.isnan(tensor.max())):
        count = int(torch.isnan(tensor).sum())
        raise ValueError(f"{name} contains {count} NaN value(s); sample positions must not be NaN")


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


def rois_to_tensor(rois: Tensor | list[Tensor] | tuple[Tensor, ...]) -> Tensor:
    """RoIs as ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]``.

    Accepts that layout directly or, like torchvision, a list of N per-image ``(Ki, 4)``
    box tensors whose list position is the batch index. Only shapes are checked here
    (trace-friendly); ``check_rois_values`` checks the numbers.
    """
    if isinstance(rois, Tensor):
        if rois.dim() != 2 or rois.shape[1] != 5:
            raise ValueError(
                f"rois must have shape (K, 5) [batch_index, x1, y1, x2, y2], "
                f"got {tuple(rois.shape)}"
            )
        return rois
    if not isinstance(rois, (list, tuple)):
        raise TypeError(
            f"rois must be a Tensor (K, 5) or a list of (Ki, 4) Tensors, got {type(rois).__name__}"
        )
    if len(rois) == 0:
        raise ValueError("rois is an empty list: give one (Ki, 4) Tensor per image")
    for i, boxes in enumerate(rois):
        if not isinstance(boxes, Tensor):
            raise TypeError(f"rois[{i}] must be a Tensor, got {type(boxes).__name__}")
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(
                f"rois[{i}] must have shape (Ki, 4) [x1, y1, x2, y2], got {tuple(boxes.shape)}"
            )
    boxes = torch.cat([b.to(rois[0]) for b in rois], dim=0)
    index = torch.cat([torch.full_like(b[:, :1], i, dtype=boxes.dtype, device=boxes.device)
                       for i, b in enumerate(rois)], dim=0)
    return torch.cat([index, boxes], dim=1)


def check_rois_values(rois: Tensor, batch: int) -> None:
    """Refuse non-finite coordinates and batch indices that are not integers in ``[0, batch)``.

    Data-dependent, so the ops call it inside their registered kernels (not while tracing).
    """
    if rois.numel() == 0:
        return
    bad = ~torch.isfinite(rois)
    if bool(bad.any()):
        row = int(bad.any(dim=1).nonzero()[0, 0])
        raise ValueError(
            f"rois must be finite, got NaN or inf in row {row}: {rois[row].tolist()}"
        )
    index = rois[:, 0]
    fractional = index != torch.round(index)
    if bool(fractional.any()):
        row = int(fractional.nonzero()[0, 0])
        raise ValueError(
            f"rois[:, 0] (batch index) must hold integers, got {index[row].item()} in row {row}"
        )
    outside = (index < 0) | (index >= batch)
    if bool(outside.any()):
        row = int(outside.nonzero()[0, 0])
        raise ValueError(
            f"rois[:, 0] (batch index) must be in [0, {batch - 1}] for an input of batch size "
            f"{batch}, got {int(index[row].item())} in row {row}"
        )


@dataclass(frozen=True)
class RoIAlignGrid:
    """Per-RoI sampling grid of RoIAlign (torchvision conventions), each field ``(K,)``.

    Bin ``(i, j)`` of RoI k samples ``y = start_h + i*bin_h + (iy + 0.5) * bin_h / grid_h``
    for ``iy < grid_h`` (x likewise) and averages over ``max(grid_h * grid_w, 1)`` samples.
    """

    start_h: Tensor
    start_w: Tensor
    bin_h: Tensor
    bin_w: Tensor
    roi_h: Tensor
    roi_w: Tensor
    grid_h: Tensor  # int64
    grid_w: Tensor  # int64


def roi_align_grid(rois: Tensor, pooled: tuple[int, int], spatial_scale: float,
                   sampling_ratio: int, aligned: bool) -> RoIAlignGrid:
    """RoIAlign's RoI start, size, bin size and samples per bin, in ``rois``' dtype."""
    shift = 0.5 if aligned else 0.0
    box = rois[:, 1:] * spatial_scale - shift  # (K, 4): x1, y1, x2, y2
    roi_w = box[:, 2] - box[:, 0]
    roi_h = box[:, 3] - box[:, 1]
    if not aligned:  # legacy RoIAlign: RoIs are at least 1x1
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_h = roi_h / pooled[0]
    bin_w = roi_w / pooled[1]
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.int64)
        grid_w = torch.full_like(roi_w, sampling_ratio, dtype=torch.int64)
    else:  # adaptive: about one sample per feature cell; <= 0 for degenerate RoIs (no sample)
        grid_h = torch.ceil(bin_h).long()
        grid_w = torch.ceil(bin_w).long()
    return RoIAlignGrid(box[:, 1], box[:, 0], bin_h, bin_w, roi_h, roi_w, grid_h, grid_w)


@dataclass(frozen=True)
class PSRoIGrid:
    """Per-RoI geometry of the original DeformablePSROIPooling, each field ``(K,)``."""

    start_h: Tensor
    start_w: Tensor
    roi_h: Tensor
    roi_w: Tensor


def psroi_grid(rois: Tensor, spatial_scale: float) -> PSRoIGrid:
    """Rounded RoI corners (halves away from zero, like C ``round``) -> start and size."""
    box = torch.sign(rois[:, 1:]) * torch.floor(rois[:, 1:].abs() + 0.5)
    start_w = box[:, 0] * spatial_scale - 0.5
    start_h = box[:, 1] * spatial_scale - 0.5
    end_w = (box[:, 2] + 1.0) * spatial_scale - 0.5
    end_h = (box[:, 3] + 1.0) * spatial_scale - 0.5
    return PSRoIGrid(start_h, start_w, (end_h - start_h).clamp(min=0.1),
                     (end_w - start_w).clamp(min=0.1))


@dataclass(frozen=True)
class PSRoIBins:
    """Per-bin tables of deformable PS RoI pooling over ``M = output_dim * P * P`` bins.

    Bin ``(ctop, i, j)`` (row-major) reads input ``channel`` and the offsets of class
    ``cls`` at part cell ``(part_h, part_w)``; ``row``/``col`` are ``i``/``j``. All ``(M,)``.
    """

    channel: Tensor
    cls: Tensor
    part_h: Tensor
    part_w: Tensor
    row: Tensor
    col: Tensor


def psroi_bins(output_dim: int, group_size: int, pooled_size: int, part_size: int,
               num_classes: int, device: torch.device) -> PSRoIBins:
    """Index tables of every bin (see ``PSRoIBins``), int64 on ``device``."""
    size = pooled_size
    ctop, row, col = (t.reshape(-1) for t in torch.meshgrid(
        torch.arange(output_dim), torch.arange(size), torch.arange(size), indexing="ij"))
    group_h = (row * group_size // size).clamp(0, group_size - 1)
    group_w = (col * group_size // size).clamp(0, group_size - 1)
    # floor(i / P * part_size) in floating point, as the original kernel computes it
    part = torch.tensor([int(i / size * part_size) for i in range(size)])
    tables = PSRoIBins(
        channel=(ctop * group_size + group_h) * group_size + group_w,
        cls=ctop // (output_dim // num_classes),
        part_h=part[row], part_w=part[col], row=row, col=col,
    )
    return PSRoIBins(*(t.to(device) for t in vars(tables).values()))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in (and RoI ops take RoIs in) for ``dtype`` data."""
    return torch.float32 if dtype in UPCAST_DTYPES else dtype


def check_compute_dtype(input: Tensor, rois: Tensor) -> None:
    """A registered RoI op takes RoIs in the input's compute dtype (``compute_dtype``).

    Coordinates in float16/bfloat16 would be off by pixels; the public functions convert
    them, this guards direct calls of ``torch.ops.deformconv.*``.
    """
    expected = compute_dtype(input.dtype)
    if rois.dtype != expected:
        raise TypeError(
            f"rois has dtype {rois.dtype} but must be {expected} for input of {input.dtype}; "
            "call the public function, which converts them"
        )


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
