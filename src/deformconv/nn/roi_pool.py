"""Deformable RoI pooling with its own offset branch (the Faster R-CNN head of DCN).

Dai et al., "Deformable Convolutional Networks", ICCV 2017, section 2.2
(https://arxiv.org/abs/1703.06211); modulated variant from DCN v2 (Zhu et al., CVPR 2019).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .. import ops
from ..ops.arguments import boolean, counts, finite_float, integer, pair, rois_to_tensor
from ._offset import (
    OffsetBranchMixin,
    ZeroInitLinear,
    check_counts,
    check_matches_parameters,
    check_positive,
    nan_offsets_propagate,
)

__all__ = ["DeformRoIPool"]

# what a bare int as hidden_dims is refused with
HIDDEN_DIMS_HINT = "one width per hidden layer (e.g. (1024,) or (1024, 1024))"


class DeformRoIPool(nn.Module, OffsetBranchMixin):
    """RoIAlign-style pooling whose bins move by offsets learned from the RoI itself.

    A first pass pools each RoI without offsets; fully connected layers map it to
    normalised offsets ``(K, 2, ph, pw)`` (``+ (K, 1, ph, pw)`` mask logits through a
    sigmoid when ``modulated``); a second pass pools with bins shifted by
    ``gamma * offset * (roi_w, roi_h)`` (paper eq. 6). The last layer is zero-initialised,
    so the module starts as ``torchvision.ops.roi_align`` (a modulated one at half of it;
    after an init loop over ``nn.Linear`` layers, call :meth:`zero_init_offsets` to zero it
    again).

    Args:
        in_channels: C of the pooled feature map.
        output_size: (ph, pw) bins per RoI.
        spatial_scale: feature size / image size (1/16 for a stride-16 map).
        sampling_ratio: samples per bin side; 0 or less (torchvision's -1) = adaptive.
        gamma: offset scale γ (paper: 0.1).
        aligned: RoIAlign's half-pixel shift (True here, False by default in torchvision's
            ``RoIAlign``).
        hidden_dims: widths (ints > 0) of hidden fc layers before the offset layer. ``()`` is the
            original single layer; mmcv's DeformRoIPoolPack uses ``(1024, 1024)``. A sequence
            even for one layer: ``(1024,)``, not ``1024`` (a ``TypeError``).
        modulated: also predict a per-bin modulation mask (DCN v2).
        offset_lr_mult: learning-rate multiplier (finite, >= 0) of the fc layers (paper: 0.01).
        device, dtype: of the fc layers' parameters, as in ``nn.Linear``.

    Shape:
        ``forward(input (N, C, H, W), rois (K, 5) or list of (Ki, 4)) -> (K, C, ph, pw)``;
        RoIs are ``[batch_index, x1, y1, x2, y2]`` in image coordinates.
    """

    def __init__(
        self,
        in_channels: int,
        output_size: int | tuple[int, int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        gamma: float = 0.1,
        aligned: bool = True,
        *,
        hidden_dims: Sequence[int] = (),
        modulated: bool = False,
        offset_lr_mult: float = 0.01,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_counts(in_channels=in_channels)
        check_positive(spatial_scale=spatial_scale)
        self.in_channels = in_channels
        self.output_size = pair(output_size, "output_size")
        check_positive(output_size=self.output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = integer(sampling_ratio, "sampling_ratio")  # <= 0: adaptive
        self.gamma = finite_float(gamma, "gamma")
        self.aligned = boolean(aligned, "aligned")
        self.hidden_dims = counts(hidden_dims, "hidden_dims", hint=HIDDEN_DIMS_HINT)
        self.modulated = boolean(modulated, "modulated")
        self.offset_lr_mult = offset_lr_mult
        bins = self.output_size[0] * self.output_size[1]
        widths = [in_channels * bins, *self.hidden_dims]
        factory = {"device": device, "dtype": dtype}
        layers: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(widths):
            layers += [nn.Linear(width_in, width_out, **factory), nn.ReLU(inplace=True)]
        layers.append(ZeroInitLinear(widths[-1], (3 if self.modulated else 2) * bins, **factory))
        self.offset_fc = nn.Sequential(*layers)

    @property
    def offset_branch(self) -> nn.Module:
        return self.offset_fc

    def _pool(self, input: Tensor, rois: Tensor, offset: Tensor | None = None,
              mask: Tensor | None = None) -> Tensor:
        return ops.deform_roi_pool(
            input, rois, offset, output_size=self.output_size, spatial_scale=self.spatial_scale,
            sampling_ratio=self.sampling_ratio, gamma=self.gamma, aligned=self.aligned, mask=mask,
        )

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        if input.dim() != 4 or input.shape[1] != self.in_channels:
            raise ValueError(
                f"input must be (N, {self.in_channels}, H, W), got shape {tuple(input.shape)}"
            )
        check_matches_parameters(self, input=input)  # before the fc fails naming neither
        rois = rois_to_tensor(rois)
        ph, pw = self.output_size
        predicted = self.offset_fc(self._pool(input, rois).flatten(1))  # (K, (2|3)*ph*pw)
        offset = predicted[:, : 2 * ph * pw].reshape(-1, 2, ph, pw)
        mask = None
        if self.modulated:
            mask = predicted[:, 2 * ph * pw :].reshape(-1, 1, ph, pw).sigmoid()
        return nan_offsets_propagate(lambda o: self._pool(input, rois, o, mask), offset)

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, output_size={self.output_size}, "
                f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
                f"gamma={self.gamma}")
        if not self.aligned:
            text += ", aligned=False"
        if self.hidden_dims:
            text += f", hidden_dims={self.hidden_dims}"
        if self.modulated:
            text += ", modulated=True"
        return text + f", offset_lr_mult={self.offset_lr_mult}"
