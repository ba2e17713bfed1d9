"""What Faster R-CNN and R-FCN share: torchvision's detection machinery around a ResNet.

Layout of the DCN paper (section 4): the RPN runs on res4 (stride 16); res5 runs at stride
16 with dilation 2 and a 1×1 conv (``neck``, "conv_new_1") feeds the RoI head. Transform,
anchors, RPN, proposal sampling, box coding, losses, NMS and post-processing are
torchvision's (``torchvision.models.detection``); this file only wires them.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ..ops.arguments import boolean, count, finite_float
from ._backbone import build_backbone
from .resnet import ResNet

__all__ = ["DetectionConfig", "TwoStageDetector", "build_detector", "split_detection_kwargs"]

RPN_KEY, HEAD_KEY = "res4", "head"  # feature dict keys: RPN input, RoI head input


@dataclass(frozen=True)
class DetectionConfig:
    """Options of the torchvision parts; defaults follow the original DCN code (COCO)."""

    min_size: float | tuple[float, ...] = 600  # shorter image side after resizing (or choices)
    max_size: float = 1000  # longer side cap
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # torchvision ImageNet stats
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    anchor_sizes: tuple[float, ...] = (32, 64, 128, 256, 512)  # scales 2..32 at stride 16
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 6000
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_train: int = 300  # RoIs per image given to the head
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 128  # sampled RoIs per image in training
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05  # detections below are dropped (use ~1e-3 for mAP)
    box_nms_thresh: float = 0.3
    box_detections_per_img: int = 100

    def __post_init__(self) -> None:
        """Refuse a value that torchvision would take and turn into NaN losses or a failure
        at the first forward pass."""
        counts = ("rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test",
                  "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test",
                  "rpn_batch_size_per_image", "box_batch_size_per_image",
                  "box_detections_per_img")
        for name in counts:
            count(getattr(self, name), name)
        # torchvision's transform takes a list of shorter sides (one drawn per training
        # batch, the last at test time) and sizes that are not ints
        if isinstance(self.min_size, (tuple, list)):
            _sequence(self.min_size, "min_size", positive=True)
            largest_min_size = max(self.min_size)
        else:
            largest_min_size = finite_float(self.min_size, "min_size", positive=True)
        if largest_min_size > finite_float(self.max_size, "max_size", positive=True):
            raise ValueError(f"min_size must be <= max_size ({self.max_size!r}), got "
                             f"{self.min_size!r}")
        _sequence(self.image_mean, "image_mean", length=3)
        _sequence(self.image_std, "image_std", length=3, positive=True)
        _sequence(self.anchor_sizes, "anchor_sizes", positive=True)
        _sequence(self.aspect_ratios, "aspect_ratios", positive=True)
        fractions = ("rpn_nms_thresh", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh",
                     "rpn_positive_fraction", "box_fg_iou_thresh", "box_bg_iou_thresh",
                     "box_positive_fraction", "box_nms_thresh")
        for name in fractions:
            value = getattr(self, name)
            try:
                within = 0 <= finite_float(value, name) <= 1
            except (TypeError, ValueError):
                within = False
            if not within:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        # scores are probabilities: a threshold below 0 keeps every detection
        if not finite_float(self.box_score_thresh, "box_score_thresh") <= 1:
            raise ValueError(f"box_score_thresh must be a finite number <= 1, got "
                             f"{self.box_score_thresh!r}")
        for stage in ("rpn", "box"):
            low = getattr(self, f"{stage}_bg_iou_thresh")
            high = getattr(self, f"{stage}_fg_iou_thresh")
            if low > high:
                raise ValueError(f"{stage}_bg_iou_thresh must be <= {stage}_fg_iou_thresh "
                                 f"({high!r}), got {low!r}")


def _sequence(values: Any, name: str, length: int | None = None,
              positive: bool = False) -> None:
    """Refuse ``values`` unless a non-empty tuple or list (of ``length`` items when given)
    of finite numbers (> 0 with ``positive``)."""
    expected = (f"{length} finite numbers" if length else "a non-empty sequence of finite "
                "numbers") + (" > 0" if positive else "")
    if (not isinstance(values, (tuple, list)) or not values
            or (length is not None and len(values) != length)):
        raise ValueError(f"{name} must be {expected}, got {values!r}")
    for value in values:
        try:
            finite_float(value, name, positive=positive)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be {expected}, got {values!r}") from None


def split_detection_kwargs(kwargs: dict[str, Any]) -> tuple[DetectionConfig, dict[str, Any]]:
    """Entry-point kwargs -> (config, the rest for the model class): the config is a given
    ``config`` (default ``DetectionConfig()``) with the kwargs named as its fields applied
    on top."""
    names = {f.name for f in dataclasses.fields(DetectionConfig)}
    base = kwargs.get("config") or DetectionConfig()
    if not isinstance(base, DetectionConfig):
        raise TypeError(f"config must be a DetectionConfig or None, got {type(base).__name__}")
    config = dataclasses.replace(base, **{k: v for k, v in kwargs.items() if k in names})
    return config, {k: v for k, v in kwargs.items() if k not in names and k != "config"}


class _Features(nn.Module):
    """ResNet body -> {"res4": stage-3 output for the RPN, "head": neck(stage-4 output)}."""

    def __init__(self, body: ResNet, head_channels: int) -> None:
        super().__init__()
        self.body = body
        self.neck = nn.Sequential(nn.Conv2d(body.num_features, head_channels, 1),
                                  nn.ReLU(inplace=True))
        nn.init.normal_(self.neck[0].weight, std=0.01)
        nn.init.zeros_(self.neck[0].bias)
        self.out_channels = head_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        *_, res4, res5 = self.body.forward_stages(images)
        return OrderedDict([(RPN_KEY, res4), (HEAD_KEY, self.neck(res5))])


class _Res4RPN(RegionProposalNetwork):
    """torchvision's RPN fed with res4 only (it would otherwise run on every feature map)."""

    def forward(self, images, features: dict[str, Tensor], targets=None):
        return super().forward(images, {RPN_KEY: features[RPN_KEY]}, targets)


class TwoStageDetector(GeneralizedRCNN):
    """Transform -> ResNet -> RPN on res4 -> RoI head on the 1×1-reduced res5 (stride 16).

    ``forward(images: list[Tensor[3, H, W]] in [0, 1], targets: list[dict] | None)``;
    targets hold ``boxes`` (Tensor[K, 4] float, x1 y1 x2 y2 in pixels) and ``labels``
    (Tensor[K] int64, 1..classes-1; 0 is background). Train mode returns the loss dict
    ``loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg``; eval mode returns
    one dict per image with ``boxes`` (Tensor[D, 4]), ``labels`` (Tensor[D] int64) and
    ``scores`` (Tensor[D]) in the input images' coordinates, as torchvision's detectors.

    Subclasses give ``box_roi_pool(features, proposals, image_sizes)`` (reading
    ``features["head"]``), ``box_head`` and ``box_predictor`` as torchvision's ``RoIHeads``
    expects them.
    """

    def __init__(self, body: ResNet, head_channels: int, box_roi_pool: nn.Module,
                 box_head: nn.Module, box_predictor: nn.Module, config: DetectionConfig) -> None:
        c = config
        anchors = AnchorGenerator((tuple(c.anchor_sizes),), (tuple(c.aspect_ratios),))
        rpn = _Res4RPN(
            anchors, RPNHead(body.num_features // 2, anchors.num_anchors_per_location()[0]),
            c.rpn_fg_iou_thresh, c.rpn_bg_iou_thresh, c.rpn_batch_size_per_image,
            c.rpn_positive_fraction,
            {"training": c.rpn_pre_nms_top_n_train, "testing": c.rpn_pre_nms_top_n_test},
            {"training": c.rpn_post_nms_top_n_train, "testing": c.rpn_post_nms_top_n_test},
            c.rpn_nms_thresh,
        )
        roi_heads = RoIHeads(
            box_roi_pool, box_head, box_predictor, c.box_fg_iou_thresh, c.box_bg_iou_thresh,
            c.box_batch_size_per_image, c.box_positive_fraction, None, c.box_score_thresh,
            c.box_nms_thresh, c.box_detections_per_img,
        )
        transform = GeneralizedRCNNTransform(c.min_size, c.max_size, list(c.image_mean),
                                             list(c.image_std))
        super().__init__(_Features(body, head_channels), rpn, roi_heads, transform)
        self.config = config

    def load_backbone_state_dict(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Load a torchvision ResNet checkpoint into the ResNet body; see ``ResNet``."""
        return self.backbone.body.load_backbone_state_dict(state_dict)


def build_detector(cls: type[TwoStageDetector], layers: tuple[int, int, int, int],
                   num_classes: int, deformable: bool, backbone_kwargs: dict[str, Any] | None,
                   kwargs: dict[str, Any]) -> TwoStageDetector:
    """What detection entry points share: ``kwargs`` split into config and model options;
    ``deformable=False`` makes backbone and head plain whatever the options say."""
    config, model_kwargs = split_detection_kwargs(kwargs)
    deformable = boolean(deformable, "deformable")
    head = boolean(model_kwargs.get("deformable_head", True), "deformable_head")
    model_kwargs["deformable_head"] = deformable and head
    body = build_backbone(layers, deformable, backbone_kwargs)
    return cls(body, num_classes, config=config, **model_kwargs)
