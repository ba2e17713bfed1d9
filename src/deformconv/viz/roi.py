"""Offsets of deformable RoI pooling: capture hooks and the displaced bin grid of a RoI.

Paper Fig. 7: each bin of a RoI's regular k×k grid moves by its learned offset. Offsets are
normalised (docs/OPS.md, deform_roi_pool / deform_psroi_pool): a bin moves by
``scale * (Δx̂ * roi_w, Δŷ * roi_h)`` with ``scale`` = γ (DeformRoIPool) or ``trans_std``
(DeformPSRoIPool), RoI sizes in feature pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..nn import DeformPSRoIPool, DeformRoIPool
from ..ops.arguments import rois_to_tensor
from ..ops.geometry import part_cells, psroi_grid, roi_align_grid

__all__ = ["RoIBins", "RoIOffsetRecord", "RoIPoolGeometry", "install_roi_hooks", "roi_bins"]


@dataclass(frozen=True)
class RoIPoolGeometry:
    """What locates a RoI's bins.

    ``kind`` is ``"roi"`` (DeformRoIPool, RoIAlign rules) or ``"psroi"`` (DeformPSRoIPool,
    rounded RoI corners); ``offset_scale`` is γ or ``trans_std``; ``part_size`` is the offset
    grid of ``"psroi"`` (``pooled_size`` for ``"roi"``).
    """

    kind: str
    pooled_size: tuple[int, int]
    spatial_scale: float
    offset_scale: float
    aligned: bool = True
    sampling_ratio: int = 0
    part_size: int | None = None

    @classmethod
    def of(cls, module: DeformRoIPool | DeformPSRoIPool) -> RoIPoolGeometry:
        if isinstance(module, DeformRoIPool):
            return cls("roi", module.output_size, module.spatial_scale, module.gamma,
                       module.aligned, module.sampling_ratio)
        if isinstance(module, DeformPSRoIPool):
            pooled = (module.pooled_size, module.pooled_size)
            return cls("psroi", pooled, module.spatial_scale, module.trans_std,
                       part_size=module.part_size)
        raise TypeError(f"module must be a DeformRoIPool or DeformPSRoIPool, got "
                        f"{type(module).__name__}")


@dataclass(frozen=True)
class RoIOffsetRecord:
    """RoIs and normalised offsets a deformable RoI pooling used in one forward pass.

    ``rois`` ``(K, 5)`` [batch_index, x1, y1, x2, y2] in image coordinates; ``offset``
    ``(K, 2, ph, pw)`` for ``"roi"`` or ``(K, 2*classes, part, part)`` for ``"psroi"``
    (channel ``2c`` is Δx̂, ``2c+1`` is Δŷ); ``mask`` the sigmoid mask or None.
    """

    name: str
    geometry: RoIPoolGeometry
    rois: Tensor
    offset: Tensor
    mask: Tensor | None = None
    image_size: tuple[int, int] | None = None

    def select(self, keep: Tensor) -> RoIOffsetRecord:
        """The record restricted to the RoIs where ``keep`` (K,) is True."""
        mask = None if self.mask is None else self.mask[keep]
        return replace(self, rois=self.rois[keep], offset=self.offset[keep], mask=mask)


def install_roi_hooks(
    name: str,
    module: DeformRoIPool | DeformPSRoIPool,
    sink: Callable[[RoIOffsetRecord], object],
    wanted: Callable[[str], bool] = lambda name: True,
) -> list[torch.utils.hooks.RemovableHandle]:
    """Hook ``module`` so that each forward pass hands a :class:`RoIOffsetRecord` to ``sink``
    (while ``wanted(name)``). Returns the hook handles."""
    geometry = RoIPoolGeometry.of(module)
    pending: dict[str, Tensor] = {}

    def keep_rois(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        rois = args[1] if len(args) > 1 else kwargs["rois"]
        pending["rois"] = rois_to_tensor(rois).detach().float().cpu()

    def emit(offset: Tensor, mask: Tensor | None) -> None:
        sink(RoIOffsetRecord(name, geometry, pending.pop("rois"), offset.float().cpu(),
                             None if mask is None else mask.float().cpu()))

    def on_offset_fc(mod: nn.Module, args: tuple, out: Tensor) -> None:
        if not wanted(name) or "rois" not in pending:
            return
        ph, pw = geometry.pooled_size
        out = out.detach()  # (K, (2|3)*ph*pw)
        mask = out[:, 2 * ph * pw:].reshape(-1, 1, ph, pw).sigmoid() if module.modulated else None
        emit(out[:, : 2 * ph * pw].reshape(-1, 2, ph, pw), mask)

    def on_conv_offset(mod: nn.Module, args: tuple, maps: Tensor) -> None:
        if not wanted(name) or "rois" not in pending:
            return
        # The module pools these maps onto the part grid itself; redo it to read the offsets.
        rois = pending["rois"].to(maps)
        split = 2 * module.offset_classes * module.part_size**2
        with torch.no_grad():
            offset = module._pool_maps(maps[:, :split], rois, 2 * module.offset_classes)
            mask = None
            if module.modulated:
                mask = module._pool_maps(maps[:, split:], rois, module.offset_classes).sigmoid()
        emit(offset, mask)

    handles = [module.register_forward_pre_hook(keep_rois, with_kwargs=True)]
    if isinstance(module, DeformRoIPool):
        handles.append(module.offset_fc.register_forward_hook(on_offset_fc))
    else:
        handles.append(module.conv_offset.register_forward_hook(on_conv_offset))
    return handles


@dataclass(frozen=True)
class RoIBins:
    """A RoI's regular bin grid and its learned displacement, in image pixel coordinates
    (pixel-index convention of :mod:`deformconv.viz.coords`).

    Attributes:
        roi: ``(4,)`` x1, y1, x2, y2 outline of the RoI as the pooling sees it.
        bins: ``(ph, pw, 4)`` x1, y1, x2, y2 of each regular bin.
        shifts: ``(ph, pw, 2)`` (dx, dy) displacement of each bin.
    """

    roi: Tensor
    bins: Tensor
    shifts: Tensor

    @property
    def shifted(self) -> Tensor:
        """``(ph, pw, 4)`` the displaced bins."""
        return self.bins + self.shifts.repeat(1, 1, 2)


def roi_bins(record: RoIOffsetRecord, index: int, class_index: int = 0) -> RoIBins:
    """Regular and displaced bins of RoI ``index`` of ``record``.

    ``class_index`` picks the offset set of a ``"psroi"`` record with class-specific offsets.
    """
    count = record.rois.shape[0]
    if not 0 <= index < count:
        raise IndexError(f"index must be in [0, {count}), got {index}")
    geo = record.geometry
    rois = record.rois[index : index + 1].double()
    offset = record.offset[index].double()  # (2*classes, p, p)
    classes = offset.shape[0] // 2
    if not 0 <= class_index < classes:
        raise IndexError(f"class_index must be in [0, {classes}), got {class_index}")
    ph, pw = geo.pooled_size
    if geo.kind == "roi":
        grid = roi_align_grid(rois, geo.pooled_size, geo.spatial_scale, geo.sampling_ratio,
                              geo.aligned)
        start_h, start_w, roi_h, roi_w = grid.start_h, grid.start_w, grid.roi_h, grid.roi_w
        parts_h, parts_w = torch.arange(ph), torch.arange(pw)
    else:
        grid = psroi_grid(rois, geo.spatial_scale)
        start_h, start_w, roi_h, roi_w = grid.start_h, grid.start_w, grid.roi_h, grid.roi_w
        parts_h, parts_w = part_cells(ph, geo.part_size), part_cells(pw, geo.part_size)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    y0 = start_h + torch.arange(ph, dtype=torch.float64) * bin_h  # (ph,) feature coords
    x0 = start_w + torch.arange(pw, dtype=torch.float64) * bin_w
    y0, x0 = torch.meshgrid(y0, x0, indexing="ij")
    corners = torch.stack([y0, x0, y0 + bin_h, x0 + bin_w], dim=-1)  # (ph, pw, 4) y, x, y, x
    stride = 1.0 / geo.spatial_scale
    # RoIAlign's feature coordinates (aligned: box * scale - 0.5, so a cell centres on image
    # pixel (f + 0.5) * stride - 0.5), so that the bins tile the box as it is drawn
    corners = (corners + 0.5) * stride - 0.5
    bins = corners[..., [1, 0, 3, 2]]  # x1, y1, x2, y2
    chosen = offset[2 * class_index : 2 * class_index + 2][:, parts_h][:, :, parts_w]
    shifts = torch.stack([chosen[0] * roi_w, chosen[1] * roi_h], dim=-1)  # (ph, pw, 2)
    shifts = shifts * geo.offset_scale * stride
    outline = torch.stack([bins[0, 0, 0], bins[0, 0, 1], bins[-1, -1, 2], bins[-1, -1, 3]])
    return RoIBins(outline, bins, shifts)
