"""Position-sensitive RoI pooling (R-FCN) and its deformable version with an offset branch.

Dai et al., "R-FCN", NIPS 2016 (https://arxiv.org/abs/1605.06409); deformable PS RoI
pooling from "Deformable Convolutional Networks", ICCV 2017, section 2.2.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops
from ..ops.arguments import boolean, finite_float, rois_to_tensor
from ..ops.geometry import part_cells
from ._offset import (
    OffsetBranchMixin,
    ZeroInitConv2d,
    check_counts,
    check_matches_parameters,
    check_positive,
    nan_offsets_propagate,
)

__all__ = ["DeformPSRoIPool", "PSRoIPool"]


class PSRoIPool(nn.Module):
    """Position-sensitive RoI pooling without offsets (R-FCN), the plain twin of
    :class:`DeformPSRoIPool`.

    Bin (ph, pw) of output channel c averages ``sample_per_part²`` bilinear samples of score
    map ``(c*group_size + gh)*group_size + gw``, following the original
    DeformablePSROIPooling with ``no_trans`` (``deformconv.ops.deform_psroi_pool``).

    Args:
        output_dim: channels out (classes for score maps, 4 for box maps).
        group_size: k, the position-sensitive grid (score maps have ``output_dim*k²``
            channels).
        spatial_scale: feature size / image size.
        pooled_size: bins per side (default ``group_size``).
        sample_per_part: samples per bin side.

    Shape:
        ``forward(input (N, output_dim*k², H, W), rois (K, 5) or list of (Ki, 4),
        features=None) -> (K, output_dim, pooled, pooled)``. ``features`` is accepted and
        ignored, so both classes share one call signature.
    """

    def __init__(self, output_dim: int, group_size: int, spatial_scale: float,
                 pooled_size: int | None = None, sample_per_part: int = 4) -> None:
        super().__init__()
        pooled_size = group_size if pooled_size is None else pooled_size
        check_counts(output_dim=output_dim, group_size=group_size, pooled_size=pooled_size,
                     sample_per_part=sample_per_part)
        check_positive(spatial_scale=spatial_scale)
        self.output_dim = output_dim
        self.group_size = group_size
        self.spatial_scale = spatial_scale
        self.pooled_size = pooled_size
        self.sample_per_part = sample_per_part

    def _check_input(self, input: Tensor) -> None:
        expected = self.output_dim * self.group_size**2
        if input.dim() != 4 or input.shape[1] != expected:
            raise ValueError(
                f"input must be (N, output_dim*group_size² = {expected}, H, W), "
                f"got shape {tuple(input.shape)}"
            )

    def forward(self, input: Tensor, rois: Tensor | list[Tensor],
                features: Tensor | None = None) -> Tensor:
        self._check_input(input)
        out = ops.deform_psroi_pool(
            input, rois_to_tensor(rois), None, spatial_scale=self.spatial_scale,
            output_dim=self.output_dim, group_size=self.group_size,
            pooled_size=self.pooled_size, sample_per_part=self.sample_per_part,
        )
        return out

    def extra_repr(self) -> str:
        return (f"output_dim={self.output_dim}, group_size={self.group_size}, "
                f"spatial_scale={self.spatial_scale}, pooled_size={self.pooled_size}, "
                f"sample_per_part={self.sample_per_part}")


class DeformPSRoIPool(PSRoIPool, OffsetBranchMixin):
    """Deformable position-sensitive RoI pooling with its own offset branch (R-FCN + DCN).

    As in the original code: a 1×1 conv ``conv_offset`` on ``features`` gives
    ``2*offset_classes*part_size²`` maps; position-sensitive pooling without offsets
    (group_size = part_size) turns them into per-RoI offsets
    ``(K, 2*offset_classes, part_size, part_size)``; the score maps are then pooled with
    bins shifted by ``trans_std * offset * (roi_w, roi_h)``. ``offset_classes = classes``
    gives class-specific offsets for score maps, ``1`` shared ones for box maps.
    With ``modulated``, ``offset_classes*part_size²`` more maps give a sigmoid mask per
    (class, part) bin that scales the pooled value (DCN v2). The offset conv is
    zero-initialised, so the module starts as :class:`PSRoIPool` (after an init loop over
    ``nn.Conv2d`` layers, call :meth:`zero_init_offsets` to zero it again).

    Args:
        in_channels: channels of ``features``, the map the offset conv reads (of ``input``,
            ``output_dim*group_size²``, for calls without ``features``).
        output_dim, group_size, spatial_scale, pooled_size, sample_per_part: as
            :class:`PSRoIPool`.
        part_size: offset grid per side (default ``pooled_size``).
        trans_std: offset scale (paper: 0.1).
        offset_classes: number of offset sets; must divide ``output_dim``.
        modulated: also predict a modulation mask.
        offset_lr_mult: learning-rate multiplier (finite, >= 0) of ``conv_offset``.
        device, dtype: of ``conv_offset``'s parameters, as in ``nn.Conv2d``.

    Shape:
        ``forward(input (N, output_dim*k², H, W), rois (K, 5) or list of (Ki, 4),
        features (N, in_channels, H, W) or None = input) -> (K, output_dim, pooled, pooled)``.
    """

    def __init__(
        self,
        in_channels: int,
        output_dim: int,
        group_size: int,
        spatial_scale: float,
        pooled_size: int | None = None,
        sample_per_part: int = 4,
        *,
        part_size: int | None = None,
        trans_std: float = 0.1,
        offset_classes: int = 1,
        modulated: bool = False,
        offset_lr_mult: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(output_dim, group_size, spatial_scale, pooled_size, sample_per_part)
        part_size = self.pooled_size if part_size is None else part_size
        check_counts(in_channels=in_channels, part_size=part_size, offset_classes=offset_classes)
        if output_dim % offset_classes:
            raise ValueError(
                f"offset_classes ({offset_classes}) must divide output_dim ({output_dim})"
            )
        self.in_channels = in_channels
        self.part_size = part_size
        self.trans_std = finite_float(trans_std, "trans_std")
        self.offset_classes = offset_classes
        self.modulated = boolean(modulated, "modulated")
        self.offset_lr_mult = offset_lr_mult
        maps = (3 if self.modulated else 2) * offset_classes * part_size**2
        self.conv_offset = ZeroInitConv2d(in_channels, maps, kernel_size=1, device=device,
                                          dtype=dtype)

    @property
    def offset_branch(self) -> nn.Module:
        return self.conv_offset

    def _pool_maps(self, maps: Tensor, rois: Tensor, output_dim: int) -> Tensor:
        """Position-sensitive pooling of offset/mask maps onto the part grid, no offsets."""
        out = ops.deform_psroi_pool(
            maps, rois, None, spatial_scale=self.spatial_scale, output_dim=output_dim,
            group_size=self.part_size, pooled_size=self.part_size,
            sample_per_part=self.sample_per_part,
        )
        return out

    def _bin_mask(self, part_mask: Tensor) -> Tensor:
        """(K, offset_classes, part, part) -> (K, output_dim, pooled, pooled), like the op's
        lookup of a bin's part: part_h = ph * part_size // pooled."""
        pooled, part = self.pooled_size, self.part_size
        device = part_mask.device
        per_class = self.output_dim // self.offset_classes
        cls = torch.arange(self.output_dim, device=device) // per_class
        parts = part_cells(pooled, part).to(device)  # the op's, so mask and offset agree
        return part_mask[:, cls][:, :, parts][:, :, :, parts]

    def forward(self, input: Tensor, rois: Tensor | list[Tensor],
                features: Tensor | None = None) -> Tensor:
        self._check_input(input)
        if features is None:  # the offset conv reads the score maps themselves
            if input.shape[1] != self.in_channels:
                raise ValueError(
                    f"input has {input.shape[1]} channels but the offset conv reads "
                    f"in_channels={self.in_channels}: without features it reads input, so "
                    f"in_channels must be output_dim*group_size² = {input.shape[1]}, or pass "
                    f"features (N, {self.in_channels}, H, W)")
            features = input
        n, _, height, width = input.shape
        if features.dim() != 4 or features.shape[1] != self.in_channels or (
                features.shape[0], *features.shape[2:]) != (n, height, width):
            raise ValueError(
                f"features must be (N, {self.in_channels}, H, W) with input's N, H, W, i.e. "
                f"({n}, {self.in_channels}, {height}, {width}), got shape "
                f"{tuple(features.shape)}")
        # both before the offset conv fails naming neither: its offsets meet input in the op
        check_matches_parameters(self, input=input, features=features)
        rois = rois_to_tensor(rois)
        maps = self.conv_offset(features)  # (N, (2|3)*classes*part², H, W)
        offset_maps = 2 * self.offset_classes * self.part_size**2
        offset = self._pool_maps(maps[:, :offset_maps], rois, 2 * self.offset_classes)
        out = nan_offsets_propagate(lambda o: ops.deform_psroi_pool(
            input, rois, o, spatial_scale=self.spatial_scale, output_dim=self.output_dim,
            group_size=self.group_size, pooled_size=self.pooled_size, part_size=self.part_size,
            sample_per_part=self.sample_per_part, trans_std=self.trans_std,
        ), offset, per_position=self.part_size == self.pooled_size)
        if self.modulated:
            part_mask = self._pool_maps(maps[:, offset_maps:], rois, self.offset_classes)
            out = out * self._bin_mask(part_mask.sigmoid())
        return out

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, " + super().extra_repr()
        text += f", part_size={self.part_size}, trans_std={self.trans_std}"
        if self.offset_classes != 1:
            text += f", offset_classes={self.offset_classes}"
        if self.modulated:
            text += ", modulated=True"
        return text + f", offset_lr_mult={self.offset_lr_mult}"
