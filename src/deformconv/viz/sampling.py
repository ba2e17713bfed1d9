"""Where deformable convs sample: per layer, and back-projected through stacked layers.

Paper Fig. 5: from one activation unit of the top layer, its kh*kw sampling points; from each
of them, the sampling points of the layer below; ... giving ``(kh*kw)^L`` points for L layers,
drawn in image coordinates (convention in :mod:`deformconv.viz.coords`).

Offset groups: one set of points is shown, that of a chosen group or, by default, the mean
over groups of the offsets (the same as the mean of the groups' positions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .capture import LayerGeometry, OffsetRecord
from .coords import feature_to_image, image_to_feature

__all__ = ["BackProjection", "back_project", "sampling_locations", "sampling_positions",
           "unit_at"]

LOOKUPS = ("bilinear", "nearest")


def sampling_positions(offset: Tensor, geometry: LayerGeometry) -> Tensor:
    """Sampling positions of every output pixel, float64.

    Args:
        offset: ``(N, 2*G*kh*kw, Hout, Wout)``, the layout of docs/OPS.md.
        geometry: the layer's kernel, stride, padding, dilation.

    Returns:
        ``(N, G, kh*kw, 2, Hout, Wout)``: (y, x) in the layer's input coordinates,
        ``(y*stride_h - pad_h + i*dil_h + Δh, x*stride_w - pad_w + j*dil_w + Δw)``.
    """
    if offset.dim() != 4:
        raise ValueError(f"offset must be (N, 2*G*kh*kw, Hout, Wout), got shape "
                         f"{tuple(offset.shape)}")
    n, channels, hout, wout = offset.shape
    kk = geometry.kernel_points
    if channels % (2 * kk):
        raise ValueError(f"offset.shape[1] is not valid: got {channels}, expected a multiple "
                         f"of 2*kh*kw = {2 * kk}")
    kernel = geometry.kernel_offsets()  # (kk, 2)
    ys = torch.arange(hout, dtype=torch.float64) * geometry.stride[0]
    xs = torch.arange(wout, dtype=torch.float64) * geometry.stride[1]
    base_y = ys.view(1, hout, 1) + kernel[:, 0].view(kk, 1, 1)
    base_x = xs.view(1, 1, wout) + kernel[:, 1].view(kk, 1, 1)
    base = torch.stack(torch.broadcast_tensors(base_y, base_x), dim=1)  # (kk, 2, Hout, Wout)
    offset = offset.detach().cpu().double().view(n, channels // (2 * kk), kk, 2, hout, wout)
    return offset + base


def _offset_field(record: OffsetRecord, image: int, group: int | None) -> Tensor:
    """``(kk, 2, Hout, Wout)`` offsets of one kept image: one group, or the groups' mean."""
    count = record.offset.shape[0]
    if not 0 <= image < count:
        raise IndexError(f"image must index the {count} kept image(s) of layer "
                         f"{record.name!r}, got {image}")
    groups = record.geometry.offset_groups
    kk = record.geometry.kernel_points
    field = record.offset[image].double().view(groups, kk, 2, *record.output_size)
    if group is None:
        return field.mean(dim=0)
    if not 0 <= group < groups:
        raise IndexError(f"group must be in [0, {groups}) for layer {record.name!r}, got {group}")
    return field[group]


def _lookup(field: Tensor, points: Tensor, lookup: str) -> Tensor:
    """Values of ``field`` ``(C, H, W)`` at real (y, x) ``points`` ``(M, 2)`` -> ``(M, C)``.

    Points are clamped into the map first; ``bilinear`` interpolates the 4 neighbours,
    ``nearest`` rounds.
    """
    height, width = field.shape[-2:]
    y = points[:, 0].clamp(0, height - 1)
    x = points[:, 1].clamp(0, width - 1)
    if lookup == "nearest":
        return field[:, y.round().long(), x.round().long()].T
    y0, x0 = y.floor().long(), x.floor().long()
    y1, x1 = (y0 + 1).clamp(max=height - 1), (x0 + 1).clamp(max=width - 1)
    ly, lx = (y - y0)[:, None], (x - x0)[:, None]
    return ((1 - ly) * (1 - lx) * field[:, y0, x0].T + (1 - ly) * lx * field[:, y0, x1].T
            + ly * (1 - lx) * field[:, y1, x0].T + ly * lx * field[:, y1, x1].T)


def _points_from(record: OffsetRecord, units: Tensor, image: int, group: int | None,
                 lookup: str) -> Tensor:
    """Sampling points ``(M*kk, 2)`` (input coordinates) of output positions ``units``
    ``(M, 2)``; the kk points of unit m are rows ``m*kk : (m+1)*kk``."""
    geometry = record.geometry
    kk = geometry.kernel_points
    field = _offset_field(record, image, group).reshape(kk * 2, *record.output_size)
    offsets = _lookup(field, units, lookup).view(-1, kk, 2)  # (M, kk, 2)
    stride = torch.tensor(geometry.stride, dtype=torch.float64)
    base = (units * stride)[:, None] + geometry.kernel_offsets()[None]  # (M, kk, 2)
    return (base + offsets).reshape(-1, 2)


def _check_unit(record: OffsetRecord, unit: tuple[int, int]) -> Tensor:
    hout, wout = record.output_size
    y, x = unit
    if not (0 <= y < hout and 0 <= x < wout):
        raise ValueError(f"unit {unit} is outside the {hout}x{wout} output of layer "
                         f"{record.name!r}")
    return torch.tensor([[float(y), float(x)]], dtype=torch.float64)


def sampling_locations(record: OffsetRecord, unit: tuple[int, int], image: int = 0,
                       group: int | None = None) -> Tensor:
    """The ``(kh*kw, 2)`` (y, x) sampling positions of output pixel ``unit`` = (y, x), in the
    layer's input coordinates, row ``k = i*kw + j``.

    ``image`` indexes the record's kept images; ``group`` picks an offset group, None
    averages the groups' offsets.
    """
    return _points_from(record, _check_unit(record, unit), image, group, "nearest")


@dataclass(frozen=True)
class BackProjection:
    """Sampling points of one activation unit, back-projected through stacked layers.

    Attributes:
        unit: ``(2,)`` (y, x) image coordinates of the activation unit.
        levels: ``levels[l]`` is ``((kh*kw)^(l+1), 2)`` (y, x) image coordinates: level 0 are
            the top layer's points, the last level those of the bottom layer.
        layers: layer names, top first (one per level).
    """

    unit: Tensor
    levels: list[Tensor]
    layers: tuple[str, ...]

    @property
    def points(self) -> Tensor:
        """The bottom level: where the whole stack reads the image."""
        return self.levels[-1]


def back_project(
    records: Sequence[OffsetRecord],
    unit: tuple[int, int],
    image: int = 0,
    *,
    group: int | None = None,
    lookup: str = "bilinear",
) -> BackProjection:
    """Back-project output pixel ``unit`` = (y, x) of the top layer through stacked layers.

    Args:
        records: the layers' records from one forward pass, bottom layer first (e.g. the
            three deformable 3x3 convs of res5; records that say when their layer ran,
            as captured ones do, are refused out of that order). Layers between them
            (1x1 convs, norms) are assumed not to move positions; resolutions may differ,
            up or down (points go through image coordinates, using each record's
            cumulative strides).
        unit: output position in the top layer.
        image: index into the records' kept images.
        group: offset group, or None for the mean over groups.
        lookup: how a real-valued point of layer l reads the offsets of layer l-1 below it:
            ``"bilinear"`` interpolates the offset field (clamped into the map), ``"nearest"``
            rounds to the nearest output pixel.

    Returns:
        :class:`BackProjection` with ``(kh*kw)^l`` points at level l (9^L at the bottom for
        L stacked 3x3 layers).
    """
    if not records:
        raise ValueError("records must hold at least one OffsetRecord")
    if lookup not in LOOKUPS:
        raise ValueError(f"lookup must be one of {LOOKUPS}, got {lookup!r}")
    kept = {rec.images for rec in records}
    if len(kept) != 1:
        raise ValueError(f"records must come from one capture of the same images, got kept "
                         f"images {sorted(kept)}")
    stack = list(reversed(records))  # top first
    top = stack[0]
    units = _check_unit(top, unit)
    levels = []
    above: OffsetRecord | None = None
    for record in stack:
        if above is not None:  # points in the input of `above` -> output of `record`
            _check_below(record, above)
            image_points = feature_to_image(units, above.input_stride)
            units = image_to_feature(image_points, record.output_stride)
        units = _points_from(record, units, image, group, lookup)
        levels.append(feature_to_image(units, record.input_stride))
        above = record
    unit_image = feature_to_image(_check_unit(top, unit)[0], top.output_stride)
    return BackProjection(unit_image, levels, tuple(rec.name for rec in stack))


def _check_below(record: OffsetRecord, above: OffsetRecord) -> None:
    """Refuse ``record`` as the layer below ``above`` when it ran after it (records given
    top layer first). Records that do not say when they ran pass."""
    if record.call is not None and above.call is not None and record.call > above.call:
        raise ValueError(
            f"records must be given bottom layer first, in the order the layers ran: layer "
            f"{record.name!r} ran after layer {above.name!r} (calls {record.call} and "
            f"{above.call}) but is given before it; reverse the records' order")


def unit_at(record: OffsetRecord, point: tuple[float, float]) -> tuple[int, int]:
    """The output pixel (y, x) of ``record``'s layer nearest to image point (y, x)."""
    where = image_to_feature(torch.tensor(point, dtype=torch.float64), record.output_stride)
    hout, wout = record.output_size
    return (int(where[0].round().clamp(0, hout - 1)), int(where[1].round().clamp(0, wout - 1)))
