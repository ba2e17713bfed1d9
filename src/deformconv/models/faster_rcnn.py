"""Faster R-CNN with a deformable RoI pooling head (DCN paper, sections 2.2 and 4).

res4 -> RPN; res5 (stride 16, dilated) -> 1×1 conv to 256 channels -> deformable RoI
pooling 7×7 (pool, fc to zero-initialised offsets, pool again with γ = 0.1) -> two 1024-d
fc layers -> class scores and class-specific boxes. The plain twin pools with RoIAlign.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import RoIAlign

from ..nn import DeformRoIPool
from ..nn._offset import check_offset_lr_mult
from ..nn.roi_pool import HIDDEN_DIMS_HINT
from ..ops.arguments import boolean, count, counts, integer
from ._backbone import basic
from ._registry import register_model
from .detection import HEAD_KEY, DetectionConfig, TwoStageDetector, build_detector
from .resnet import ResNet

__all__ = ["FasterRCNN", "faster_rcnn_resnet18", "faster_rcnn_resnet34", "faster_rcnn_resnet50",
           "faster_rcnn_resnet101"]


class _HeadPooler(nn.Module):
    """torchvision's ``box_roi_pool`` interface around one pooling layer on ``head``."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_sizes: list[tuple[int, int]]) -> Tensor:
        return self.pool(features[HEAD_KEY], proposals)  # (K, C, 7, 7)


class FasterRCNN(TwoStageDetector):
    """Faster R-CNN on a ResNet body; interface of :class:`TwoStageDetector`.

    Args:
        body: headless :class:`ResNet`, output stride 16.
        num_classes: classes including background.
        deformable_head: deformable RoI pooling (else RoIAlign, the plain twin).
        head_channels: width of the 1×1 conv before pooling (original code: 256).
        representation_size: width of the two fc layers (paper: 1024).
        pool_size: bins per side (7).
        sampling_ratio: samples per bin side (RoIAlign's; 0 = adaptive).
        offset_hidden_dims, modulated_head, offset_lr_mult: :class:`DeformRoIPool` options
            (checked for the plain twin too, as ``sampling_ratio``).
        config: torchvision parts' options.
    """

    def __init__(
        self,
        body: ResNet,
        num_classes: int,
        *,
        deformable_head: bool = True,
        head_channels: int = 256,
        representation_size: int = 1024,
        pool_size: int = 7,
        sampling_ratio: int = 2,
        offset_hidden_dims: Sequence[int] = (),
        modulated_head: bool = False,
        offset_lr_mult: float = 0.01,
        config: DetectionConfig | None = None,
    ) -> None:
        if count(num_classes, "num_classes") < 2:
            raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}")
        head_channels = count(head_channels, "head_channels")
        # 0 built a featureless box head whose scores and boxes are its biases alone
        representation_size = count(representation_size, "representation_size")
        pool_size = count(pool_size, "pool_size")
        # DeformRoIPool's checks, run for the plain head (RoIAlign) too
        sampling_ratio = integer(sampling_ratio, "sampling_ratio")
        offset_hidden_dims = counts(offset_hidden_dims, "offset_hidden_dims",
                                    hint=HIDDEN_DIMS_HINT)
        modulated_head = boolean(modulated_head, "modulated_head")
        check_offset_lr_mult(offset_lr_mult)
        scale = 1.0 / body.output_stride
        if boolean(deformable_head, "deformable_head"):
            pool: nn.Module = DeformRoIPool(
                head_channels, pool_size, scale, sampling_ratio, gamma=0.1, aligned=True,
                hidden_dims=offset_hidden_dims, modulated=modulated_head,
                offset_lr_mult=offset_lr_mult,
            )
        else:
            pool = RoIAlign(pool_size, scale, sampling_ratio, aligned=True)
        super().__init__(
            body, head_channels, _HeadPooler(pool),
            TwoMLPHead(head_channels * pool_size**2, representation_size),
            FastRCNNPredictor(representation_size, num_classes), config or DetectionConfig(),
        )


@register_model("detection")
def faster_rcnn_resnet50(num_classes: int = 81, deformable: bool = True,
                         backbone_kwargs: dict[str, Any] | None = None,
                         **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN, ResNet-50: deformable res5 3×3 convs and deformable RoI pooling.

    ``backbone_kwargs`` go to :class:`ResNet` (``deform_blocks=(0, 0, 0, 0)`` with
    ``deformable_head=True`` isolates the head, say); other ``kwargs`` are
    :class:`DetectionConfig` fields, applied on top of ``config`` when one is given, or
    :class:`FasterRCNN` options.
    """
    return build_detector(FasterRCNN, (3, 4, 6, 3), num_classes, deformable, backbone_kwargs,
                          kwargs)


@register_model("detection")
def faster_rcnn_resnet101(num_classes: int = 81, deformable: bool = True,
                          backbone_kwargs: dict[str, Any] | None = None,
                          **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN, ResNet-101, otherwise as :func:`faster_rcnn_resnet50`."""
    return build_detector(FasterRCNN, (3, 4, 23, 3), num_classes, deformable, backbone_kwargs,
                          kwargs)


@register_model("detection")
def faster_rcnn_resnet18(num_classes: int = 81, deformable: bool = True,
                         backbone_kwargs: dict[str, Any] | None = None,
                         **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN on the basic-block ResNet-18, otherwise as :func:`faster_rcnn_resnet50` (the
    deformable twin: the last three 3×3 convs of res5)."""
    return build_detector(FasterRCNN, (2, 2, 2, 2), num_classes, deformable, basic(backbone_kwargs),
                          kwargs)


@register_model("detection")
def faster_rcnn_resnet34(num_classes: int = 81, deformable: bool = True,
                         backbone_kwargs: dict[str, Any] | None = None,
                         **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN on the basic-block ResNet-34, otherwise as :func:`faster_rcnn_resnet18`."""
    return build_detector(FasterRCNN, (3, 4, 6, 3), num_classes, deformable, basic(backbone_kwargs),
                          kwargs)
