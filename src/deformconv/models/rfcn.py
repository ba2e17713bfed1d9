"""R-FCN with deformable position-sensitive RoI pooling (DCN paper, sections 2.2 and 4).

res4 -> RPN; res5 (stride 16, dilated) -> 1×1 conv to 1024 channels -> 1×1 convs to
``classes·k²`` score maps and ``4·k²`` class-agnostic box maps -> deformable PS RoI pooling
(offsets from their own 1×1 conv, pooled position-sensitively: class-specific for scores,
shared for boxes; trans_std 0.1, 4 samples per bin side) -> average vote over the k×k bins.
The plain twin pools without offsets (the original R-FCN).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..nn import DeformPSRoIPool, PSRoIPool
from ..nn._offset import check_offset_lr_mult
from ..ops.arguments import boolean, count, finite_float, rois_to_tensor
from ._backbone import basic
from ._registry import register_model
from .detection import HEAD_KEY, DetectionConfig, TwoStageDetector, build_detector
from .resnet import ResNet

__all__ = ["RFCN", "rfcn_resnet18", "rfcn_resnet34", "rfcn_resnet50",
           "rfcn_resnet101"]


class _PositionSensitivePooler(nn.Module):
    """``box_roi_pool``: score and box maps from ``head``, pooled per RoI.

    Returns (K, classes + 4, k, k): the pooled score maps, then the pooled box maps.
    """

    def __init__(self, in_channels: int, num_classes: int, group_size: int,
                 spatial_scale: float, deformable: bool, sample_per_part: int,
                 trans_std: float, modulated: bool, offset_lr_mult: float) -> None:
        super().__init__()
        k = group_size
        self.cls_conv = nn.Conv2d(in_channels, num_classes * k * k, 1)  # "rfcn_cls"
        self.box_conv = nn.Conv2d(in_channels, 4 * k * k, 1)  # "rfcn_bbox", class-agnostic
        for conv in (self.cls_conv, self.box_conv):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        if deformable:
            options = {"sample_per_part": sample_per_part, "trans_std": trans_std,
                       "modulated": modulated, "offset_lr_mult": offset_lr_mult}
            self.cls_pool: nn.Module = DeformPSRoIPool(
                in_channels, num_classes, k, spatial_scale, offset_classes=num_classes,
                **options,
            )
            self.box_pool: nn.Module = DeformPSRoIPool(in_channels, 4, k, spatial_scale,
                                                       offset_classes=1, **options)
        else:
            self.cls_pool = PSRoIPool(num_classes, k, spatial_scale,
                                      sample_per_part=sample_per_part)
            self.box_pool = PSRoIPool(4, k, spatial_scale, sample_per_part=sample_per_part)

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_sizes: list[tuple[int, int]]) -> Tensor:
        x = features[HEAD_KEY]  # (N, C, H/16, W/16)
        rois = rois_to_tensor(proposals)  # (K, 5)
        scores = self.cls_pool(self.cls_conv(x), rois, x)  # (K, classes, k, k)
        boxes = self.box_pool(self.box_conv(x), rois, x)  # (K, 4, k, k)
        return torch.cat([scores, boxes], dim=1)


class _VotePredictor(nn.Module):
    """Average vote over the k×k bins -> class logits (K, classes) and box deltas.

    The class-agnostic deltas are repeated per class (K, 4·classes), the layout torchvision's
    ``RoIHeads`` decodes and trains (its loss reads only each RoI's labelled class).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        votes = pooled.mean(dim=(2, 3))  # (K, classes + 4)
        logits, deltas = votes[:, : self.num_classes], votes[:, self.num_classes :]
        return logits, deltas.repeat(1, self.num_classes)


class RFCN(TwoStageDetector):
    """R-FCN on a ResNet body; interface of :class:`TwoStageDetector`.

    Args:
        body: headless :class:`ResNet`, output stride 16.
        num_classes: classes including background.
        deformable_head: deformable PS RoI pooling (else plain PS RoI pooling, the twin).
        head_channels: width of the 1×1 conv after res5 (paper: 1024).
        group_size: k, the position-sensitive grid (7).
        sample_per_part, trans_std, modulated_head, offset_lr_mult: :class:`DeformPSRoIPool`
            options (original code: 4, 0.1, DCN v1, 1), checked for the plain twin too.
        config: torchvision parts' options.
    """

    def __init__(
        self,
        body: ResNet,
        num_classes: int,
        *,
        deformable_head: bool = True,
        head_channels: int = 1024,
        group_size: int = 7,
        sample_per_part: int = 4,
        trans_std: float = 0.1,
        modulated_head: bool = False,
        offset_lr_mult: float = 1.0,
        config: DetectionConfig | None = None,
    ) -> None:
        if count(num_classes, "num_classes") < 2:
            raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}")
        head_channels = count(head_channels, "head_channels")
        # DeformPSRoIPool's checks, run for the plain head (PSRoIPool) too
        trans_std = finite_float(trans_std, "trans_std")
        check_offset_lr_mult(offset_lr_mult)
        pooler = _PositionSensitivePooler(
            head_channels, num_classes, group_size, 1.0 / body.output_stride,
            boolean(deformable_head, "deformable_head"), sample_per_part, trans_std,
            boolean(modulated_head, "modulated_head"), offset_lr_mult,
        )
        super().__init__(body, head_channels, pooler, nn.Identity(), _VotePredictor(num_classes),
                         config or DetectionConfig())


@register_model("detection")
def rfcn_resnet50(num_classes: int = 81, deformable: bool = True,
                  backbone_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> RFCN:
    """R-FCN, ResNet-50: deformable res5 3×3 convs and deformable PS RoI pooling.

    ``backbone_kwargs`` go to :class:`ResNet`; other ``kwargs`` are
    :class:`DetectionConfig` fields, applied on top of ``config`` when one is given, or
    :class:`RFCN` options.
    """
    return build_detector(RFCN, (3, 4, 6, 3), num_classes, deformable, backbone_kwargs, kwargs)


@register_model("detection")
def rfcn_resnet101(num_classes: int = 81, deformable: bool = True,
                   backbone_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> RFCN:
    """R-FCN, ResNet-101, otherwise as :func:`rfcn_resnet50`."""
    return build_detector(RFCN, (3, 4, 23, 3), num_classes, deformable, backbone_kwargs, kwargs)


@register_model("detection")
def rfcn_resnet18(num_classes: int = 81, deformable: bool = True,
                  backbone_kwargs: dict[str, Any] | None = None,
                  **kwargs: Any) -> RFCN:
    """R-FCN on the basic-block ResNet-18, otherwise as :func:`rfcn_resnet50` (the
    deformable twin: the last three 3×3 convs of res5)."""
    return build_detector(RFCN, (2, 2, 2, 2), num_classes, deformable, basic(backbone_kwargs),
                          kwargs)


@register_model("detection")
def rfcn_resnet34(num_classes: int = 81, deformable: bool = True,
                  backbone_kwargs: dict[str, Any] | None = None,
                  **kwargs: Any) -> RFCN:
    """R-FCN on the basic-block ResNet-34, otherwise as :func:`rfcn_resnet18`."""
    return build_detector(RFCN, (3, 4, 6, 3), num_classes, deformable, basic(backbone_kwargs),
                          kwargs)
