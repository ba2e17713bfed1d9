"""Effective dilation of deformable convs, per object size (paper Table 2 analog).

The effective dilation of an output pixel is the mean distance between adjacent sampling
locations of its kernel: the ``kh*(kw-1)`` horizontal and ``(kh-1)*kw`` vertical neighbour
pairs (12 for 3x3), in input-feature pixels. It equals the layer's dilation at zero offset.
Each output pixel is put in a bucket (small / medium / large object, or background) by the
smallest ground-truth box containing its centre, or by the instance its centre falls on in a
mask, and the values are aggregated per bucket as mean ± std.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..conventions import IGNORE_INDEX
from .capture import LayerGeometry, OffsetRecord
from .coords import cumulative_stride, feature_to_image
from .sampling import sampling_positions
from .table import markdown_table

__all__ = [
    "COCO_AREA_THRESHOLDS",
    "SIZE_BUCKETS",
    "DilationStats",
    "effective_dilation",
    "effective_dilation_table",
    "format_dilation_table",
    "paint_instances",
    "scale_thresholds",
    "size_buckets",
]

SIZE_BUCKETS = ("small", "medium", "large", "background")  # codes 0..3; -1 = ignored
# COCO's object-size limits: area < 32² small, < 96² medium, else large (image pixels).
COCO_AREA_THRESHOLDS = (32.0**2, 96.0**2)
COCO_IMAGE_SIZE = (480, 640)  # a typical COCO image (H, W), the scale those limits fit


def effective_dilation(offset: Tensor, geometry: LayerGeometry) -> Tensor:
    """Per-pixel effective dilation ``(N, Hout, Wout)`` float64 from offsets
    ``(N, 2*G*kh*kw, Hout, Wout)``: mean adjacent-point distance per offset group, then the
    mean over groups."""
    kh, kw = geometry.kernel_size
    if kh * kw < 2:
        raise ValueError(f"effective dilation needs a kernel with >= 2 points, got {kh}x{kw}")
    pos = sampling_positions(offset, geometry)  # (N, G, kk, 2, Hout, Wout)
    n, groups, _, _, hout, wout = pos.shape
    pos = pos.view(n, groups, kh, kw, 2, hout, wout)
    horizontal = (pos[:, :, :, 1:] - pos[:, :, :, :-1]).norm(dim=4)  # (N, G, kh, kw-1, H, W)
    vertical = (pos[:, :, 1:] - pos[:, :, :-1]).norm(dim=4)  # (N, G, kh-1, kw, H, W)
    pairs = torch.cat([horizontal.flatten(2, 3), vertical.flatten(2, 3)], dim=2)
    return pairs.mean(dim=2).mean(dim=1)


def scale_thresholds(image_size: tuple[int, int],
                     thresholds: tuple[float, float] = COCO_AREA_THRESHOLDS,
                     reference_size: tuple[int, int] = COCO_IMAGE_SIZE) -> tuple[float, float]:
    """Area thresholds for images of ``image_size``: ``thresholds`` as they are for images at
    least as large as ``reference_size``, scaled by the area ratio for smaller images."""
    ratio = min(1.0, image_size[0] * image_size[1] / (reference_size[0] * reference_size[1]))
    return thresholds[0] * ratio, thresholds[1] * ratio


def _bucket_of(area: Tensor, thresholds: tuple[float, float]) -> Tensor:
    return (area >= thresholds[0]).long() + (area >= thresholds[1]).long()


def size_buckets(
    output_size: tuple[int, int],
    image_size: tuple[int, int],
    *,
    boxes: Tensor | None = None,
    instance_mask: Tensor | None = None,
    thresholds: tuple[float, float] = COCO_AREA_THRESHOLDS,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Bucket code (index into :data:`SIZE_BUCKETS`, -1 = ignored) of each output pixel.

    Args:
        output_size: ``(Hout, Wout)`` of the feature map.
        image_size: ``(H, W)`` of the image; the feature cell ``(y, x)`` covers image pixels
            ``[y*s, (y+1)*s)`` with ``s = H / Hout`` (likewise x).
        boxes: ``(M, 4)`` x1, y1, x2, y2 in pixel-edge coordinates (``[0, 0, W, H]`` is the
            whole image); a cell belongs to the smallest box containing its centre, by the
            box area.
        instance_mask: ``(H, W)`` integer ids, 0 = background, ``ignore_index`` = ignored,
            or ``(K, H, W)`` binary masks, one per instance (where they overlap the smallest
            wins); a cell takes the instance under its centre, bucketed by its pixel count.
            A semantic mask (class ids) makes each class one object. Give exactly one of
            ``boxes`` and ``instance_mask``.
        thresholds: object areas (image pixels²) separating small | medium | large.
        ignore_index: the id of ignored pixels in a ``(H, W)`` ``instance_mask``; cells
            on them get -1.

    Returns:
        ``(Hout, Wout)`` int64.
    """
    if (boxes is None) == (instance_mask is None):
        raise ValueError("give exactly one of boxes and instance_mask")
    if not thresholds[0] <= thresholds[1]:
        raise ValueError(f"thresholds must be increasing, got {thresholds}")
    hout, wout = output_size
    stride_y = cumulative_stride(image_size[0], hout)
    stride_x = cumulative_stride(image_size[1], wout)
    # cell centres (image pixel indices) in pixel-edge coordinates
    cy = feature_to_image(torch.arange(hout, dtype=torch.float64), stride_y) + 0.5
    cx = feature_to_image(torch.arange(wout, dtype=torch.float64), stride_x) + 0.5
    background = len(SIZE_BUCKETS) - 1
    if boxes is not None:
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (M, 4) x1, y1, x2, y2, got shape "
                             f"{tuple(boxes.shape)}")
        boxes = boxes.detach().cpu().double()
        area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
        inside_y = (cy[None] >= boxes[:, 1:2]) & (cy[None] < boxes[:, 3:4])  # (M, Hout)
        inside_x = (cx[None] >= boxes[:, 0:1]) & (cx[None] < boxes[:, 2:3])  # (M, Wout)
        inside = inside_y[:, :, None] & inside_x[:, None, :]  # (M, Hout, Wout)
        covering = torch.where(inside, area.view(-1, 1, 1), math.inf)
        smallest = (covering.min(dim=0).values if len(boxes)
                    else torch.full(output_size, math.inf, dtype=torch.float64))
        buckets = _bucket_of(smallest, thresholds)
        return torch.where(torch.isinf(smallest), torch.full_like(buckets, background), buckets)
    if instance_mask.dim() not in (2, 3) or tuple(instance_mask.shape[-2:]) != tuple(image_size):
        raise ValueError(f"instance_mask must be (H, W) or (K, H, W) with (H, W) = "
                         f"{tuple(image_size)}, got shape {tuple(instance_mask.shape)}")
    if instance_mask.dim() == 3:
        ids, ignore_index = paint_instances(instance_mask.detach().cpu().bool()), -1
    else:
        ids = instance_mask.detach().cpu().long()
    area = torch.bincount(ids.flatten()).double()  # pixels per id
    rows = cy.floor().long().clamp(0, image_size[0] - 1)  # the pixel holding the centre
    cols = cx.floor().long().clamp(0, image_size[1] - 1)
    under = ids[rows][:, cols]  # (Hout, Wout)
    buckets = _bucket_of(area[under], thresholds)
    buckets = torch.where(under == 0, torch.full_like(buckets, background), buckets)
    return torch.where(under == ignore_index, torch.full_like(buckets, -1), buckets)


def paint_instances(masks: Tensor) -> Tensor:
    """``(K, H, W)`` bool -> ``(H, W)`` ids ``1..K`` (0 = none), larger ones painted first."""
    ids = torch.zeros(masks.shape[-2:], dtype=torch.long)
    for k in masks.flatten(1).sum(dim=1).argsort(descending=True, stable=True).tolist():
        ids[masks[k]] = k + 1
    return ids


class DilationStats:
    """Running mean ± std of effective dilation per (layer, size bucket), over many images.

    Args:
        thresholds: area thresholds in image pixels²; None = :func:`scale_thresholds` of
            each record's image size (COCO's, scaled down for small images).
        ignore_index: instance-mask id to leave out.
    """

    def __init__(self, thresholds: tuple[float, float] | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        self.thresholds = thresholds
        self.ignore_index = ignore_index
        # per layer: (buckets, 3) float64 [count, sum, sum of squares]
        self._sums: dict[str, Tensor] = {}

    def update(self, record: OffsetRecord, *, boxes: Sequence[Tensor] | None = None,
               masks: Sequence[Tensor] | None = None) -> None:
        """Add a record's pixels; ``boxes[i]`` or ``masks[i]`` (see :func:`size_buckets`)
        describe its i-th kept image (``record.images[i]``)."""
        targets = boxes if boxes is not None else masks
        if targets is None or (boxes is not None and masks is not None):
            raise ValueError("give exactly one of boxes and masks")
        if len(targets) != record.offset.shape[0]:
            raise ValueError(f"layer {record.name!r} kept {record.offset.shape[0]} image(s), "
                             f"got targets for {len(targets)}")
        if record.image_size is None:
            raise ValueError(f"layer {record.name!r}: image_size is unknown; needed to map "
                             "boxes or masks to the feature map")
        thresholds = self.thresholds or scale_thresholds(record.image_size)
        values = effective_dilation(record.offset, record.geometry)  # (n, Hout, Wout)
        sums = self._sums.setdefault(record.name,
                                     torch.zeros(len(SIZE_BUCKETS), 3, dtype=torch.float64))
        for value, target in zip(values, targets, strict=True):
            kind = "boxes" if boxes is not None else "instance_mask"
            codes = size_buckets(record.output_size, record.image_size, thresholds=thresholds,
                                 ignore_index=self.ignore_index, **{kind: target})
            for code in range(len(SIZE_BUCKETS)):
                chosen = value[codes == code]
                sums[code] += torch.stack([torch.tensor(float(chosen.numel()),
                                                        dtype=torch.float64),
                                           chosen.sum(), (chosen**2).sum()])

    def rows(self) -> list[dict[str, object]]:
        """One dict per (layer, bucket): ``layer``, ``bucket``, ``count``, ``mean``, ``std``
        (population std; NaN for an empty bucket)."""
        rows = []
        for name, sums in self._sums.items():
            for code, bucket in enumerate(SIZE_BUCKETS):
                count, total, squares = sums[code].tolist()
                mean = total / count if count else math.nan
                std = math.sqrt(max(squares / count - mean**2, 0.0)) if count else math.nan
                rows.append({"layer": name, "bucket": bucket, "count": int(count),
                             "mean": mean, "std": std})
        return rows


def effective_dilation_table(
    records: Mapping[str, OffsetRecord],
    *,
    boxes: Sequence[Tensor] | None = None,
    masks: Sequence[Tensor] | None = None,
    thresholds: tuple[float, float] | None = None,
) -> list[dict[str, object]]:
    """:meth:`DilationStats.rows` for the records of one capture (e.g.
    ``capture.latest()``), all with the same kept images and targets."""
    stats = DilationStats(thresholds)
    for record in records.values():
        stats.update(record, boxes=boxes, masks=masks)
    return stats.rows()


def format_dilation_table(rows: Sequence[Mapping[str, object]], digits: int = 2) -> str:
    """Markdown, one line per layer, one ``mean ± std (n cells)`` column per bucket (paper
    Table 2)."""
    by_layer: dict[str, dict[str, object]] = {}
    for row in rows:
        line = by_layer.setdefault(str(row["layer"]), {"layer": row["layer"]})
        mean, std = float(row["mean"]), float(row["std"])  # type: ignore[arg-type]
        line[str(row["bucket"])] = ("–" if math.isnan(mean) else
                                    f"{mean:.{digits}f} ± {std:.{digits}f} ({row['count']})")
    return markdown_table(list(by_layer.values()), ["layer", *SIZE_BUCKETS])
