"""RoI geometry of the pooling ops: where each bin of each RoI samples (tensors ``(K,)`` or
``(M,)``); the backends and ``deformconv.viz`` compute it here."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PSRoIBins", "PSRoIGrid", "RoIAlignGrid", "part_cells", "psroi_bins", "psroi_grid",
           "roi_align_grid", "round_half_away"]

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


def round_half_away(values: Tensor) -> Tensor:
    """``values`` rounded to integers, halves away from zero (C ``round``), as
    ``sign(v)·floor(|v| + 0.5)`` in their own dtype (docs/OPS.md)."""
    return torch.sign(values) * torch.floor(values.abs() + 0.5)


def psroi_grid(rois: Tensor, spatial_scale: float) -> PSRoIGrid:
    """Rounded RoI corners (halves away from zero, like C ``round``) -> start and size."""
    box = round_half_away(rois[:, 1:])
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


def part_cells(pooled_size: int, part_size: int) -> Tensor:
    """``(pooled_size,)`` int64: the offset part cell of each bin row (or column),
    floor(i / P * part_size) computed exactly; in floating point (the original kernel's
    float32, or float64) some bins of P >= 22 would read their neighbour's part."""
    return torch.arange(pooled_size) * part_size // pooled_size


def psroi_bins(output_dim: int, group_size: int, pooled_size: int, part_size: int,
               num_classes: int, device: torch.device) -> PSRoIBins:
    """Index tables of every bin (see ``PSRoIBins``), int64 on ``device``."""
    size = pooled_size
    ctop, row, col = (t.reshape(-1) for t in torch.meshgrid(
        torch.arange(output_dim), torch.arange(size), torch.arange(size), indexing="ij"))
    group_h = (row * group_size // size).clamp(0, group_size - 1)
    group_w = (col * group_size // size).clamp(0, group_size - 1)
    part = part_cells(size, part_size)
    tables = PSRoIBins(
        channel=(ctop * group_size + group_h) * group_size + group_w,
        cls=ctop // (output_dim // num_classes),
        part_h=part[row], part_w=part[col], row=row, col=col,
    )
    return PSRoIBins(*(t.to(device) for t in vars(tables).values()))
