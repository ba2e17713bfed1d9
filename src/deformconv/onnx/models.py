"""Export whole models of ``deformconv.models`` to ONNX (what ``deformconv export`` runs).

Classification and segmentation models export as one graph ``images -> logits``. A
two-stage detector is not one static graph (proposal selection, NMS and the per-image
box lists have data-dependent sizes), so it exports as the two graphs that carry all of
its weights, the parts a deployment runs in onnxruntime:

- features: ``images (N, 3, H, W)`` in [0, 1], already resized -> ``rpn_objectness``
  ``(N, A, h, w)``, ``rpn_box_deltas`` ``(N, 4A, h, w)`` and ``features``, the RoI head's
  feature map. Like the detector's transform, the graph normalises, then pads with zeros at
  the bottom and right to multiples of ``detector.transform.size_divisible`` (32): H and W
  may be any size;
- RoI head: ``features``, ``rois (K, 5)`` ``[batch_index, x1, y1, x2, y2]`` in image
  pixels -> ``class_logits (K, classes)`` and ``box_deltas (K, 4 * classes)``.

Those are the graphs' input and output names; classification and segmentation graphs take
``images`` and give ``logits``.

Anchors, proposal decoding, NMS and box post-processing stay in torchvision's Python code.
The detector's detections for images resized to ``sizes = [(H, W)] * N`` are then
(``ImageList`` and ``concat_box_prediction_layers`` from ``torchvision.models.detection``)::

    objectness, deltas, features = features_graph(images)
    padded = torch.empty(N, 3, ceil(H / 32) * 32, ceil(W / 32) * 32)  # anchors: padded size
    anchors = detector.rpn.anchor_generator(ImageList(padded, sizes), [objectness])
    scores, deltas = concat_box_prediction_layers([objectness], [deltas])
    proposals = detector.rpn.box_coder.decode(deltas, anchors).view(N, -1, 4)
    boxes, _ = detector.rpn.filter_proposals(proposals, scores, sizes, [objectness[0].numel()])
    rois = torch.cat([torch.cat([torch.full((len(b), 1), i), b], 1) for i, b in enumerate(boxes)])
    logits, box_deltas = roi_head_graph(features, rois)
    detector.roi_heads.postprocess_detections(logits, box_deltas, boxes, sizes)

followed by ``detector.transform.postprocess`` for boxes in the original image sizes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ..nn import eval_mode
from .export import (
    MIN_OPSET,
    ExportResult,
    check,
    export,
    export_model,
    grow,
    worst,
)

__all__ = ["DetectorFeatures", "RoIHead", "export_detector", "export_registered"]

# Input and output names of the graphs (see the module docstring).
IMAGE_MODEL_NAMES = (["images"], ["logits"])
FEATURES_NAMES = (["images"], ["rpn_objectness", "rpn_box_deltas", "features"])
ROI_HEAD_NAMES = (["features", "rois"], ["class_logits", "box_deltas"])

# num_classes when none is given: ImageNet, PASCAL VOC (+ background), COCO (+ background).
DEFAULT_CLASSES = {"classification": 1000, "segmentation": 21, "detection": 81}


class DetectorFeatures(nn.Module):
    """Normalise and pad as the detector's transform does, run the backbone and the RPN head
    of a ``TwoStageDetector``.

    Padding is zeros after normalisation, at the bottom and right, up to multiples of
    ``size_divisible`` (torchvision's ``GeneralizedRCNNTransform`` pads its batch so);
    without it the feature maps, and so the detections, differ from the detector's.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.backbone = detector.backbone
        self.rpn_head = detector.rpn.head
        self.size_divisible = int(detector.transform.size_divisible)
        device = next(detector.parameters()).device  # on a CUDA detector's device too
        mean = torch.tensor(detector.transform.image_mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(detector.transform.image_std, device=device).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        from ..models.detection import HEAD_KEY, RPN_KEY

        height, width = images.shape[-2:]
        pad = (0, -width % self.size_divisible, 0, -height % self.size_divisible)
        features = self.backbone(nn.functional.pad((images - self.mean) / self.std, pad))
        (objectness,), (deltas,) = self.rpn_head([features[RPN_KEY]])
        return objectness, deltas, features[HEAD_KEY]


class RoIHead(nn.Module):
    """The RoI head of a ``TwoStageDetector`` (pooling -> box head -> predictor) on one feature
    map and (K, 5) RoIs, instead of a feature dict and per-image proposal lists."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.box_roi_pool = detector.roi_heads.box_roi_pool
        self.box_head = detector.roi_heads.box_head
        self.box_predictor = detector.roi_heads.box_predictor

    def forward(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        from ..models.detection import HEAD_KEY

        # The poolers take (K, 5) RoIs as well as per-image lists; image sizes are unused.
        pooled = self.box_roi_pool({HEAD_KEY: features}, rois, [])
        return self.box_predictor(self.box_head(pooled))


def example_rois(count: int, batch: int, height: int, width: int, seed: int = 0) -> Tensor:
    """(count, 5) random boxes inside an image of ``height`` x ``width``, spread over images."""
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, 2, generator=generator) * torch.tensor([width, height])
    low, high = corners.min(dim=1).values, corners.max(dim=1).values + 1.0
    index = torch.arange(count, dtype=torch.float32).remainder(batch)[:, None]
    return torch.cat([index, low, high], dim=1)


def export_detector(
    detector: nn.Module, images: Tensor, path: str | os.PathLike, *, opset: int = MIN_OPSET,
    dynamic_size: bool = True, rois: int = 8, verify: bool = True,
) -> tuple[ExportResult, ExportResult]:
    """Export a two-stage detector as ``path`` (features) and ``<stem>.roi_head.onnx``.

    Both graphs have a dynamic batch size and, with ``dynamic_size``, a dynamic image /
    feature-map size; the RoI head also a dynamic RoI count. With ``verify`` each graph is
    checked in onnxruntime on the example and on a larger input. Both run in eval mode; the
    detector's mode is left as it was.
    """
    path = Path(path)
    features = DetectorFeatures(detector)
    first = export_model(features, images, path, opset=opset, dynamic_size=dynamic_size,
                         verify=verify, input_names=FEATURES_NAMES[0],
                         output_names=FEATURES_NAMES[1])
    head = RoIHead(detector)
    head_path = path.with_name(f"{path.stem}.roi_head.onnx")
    with eval_mode(features), torch.no_grad():
        feature_map = features(images)[2]
    height, width = images.shape[-2:]
    boxes = example_rois(rois, images.shape[0], height, width)
    export(head, (feature_map, boxes), head_path, opset=opset, dynamic_size=dynamic_size,
           input_names=ROI_HEAD_NAMES[0], output_names=ROI_HEAD_NAMES[1])
    if not verify:
        return first, ExportResult(str(head_path), None, ())
    more_features = grow(feature_map, batch=True, spatial=dynamic_size)
    more_boxes = example_rois(rois + 3, more_features.shape[0], height, width, seed=1)
    diff = worst([check(head, (feature_map, boxes), head_path),
                  check(head, (more_features, more_boxes), head_path)])
    shapes = (tuple(feature_map.shape), tuple(more_features.shape))
    return first, ExportResult(str(head_path), diff, shapes)


def export_registered(
    name: str, path: str | os.PathLike, *, num_classes: int | None = None,
    image_size: int | tuple[int, int] = 224, batch: int = 2, opset: int = MIN_OPSET,
    dynamic_size: bool = True, verify: bool = True, seed: int = 0,
    model: nn.Module | None = None, **model_kwargs,
) -> list[ExportResult]:
    """Build registered model ``name`` (or take ``model``, e.g. with loaded weights) and export it.

    ``deformconv export MODEL --out model.onnx`` calls this and prints each result's
    ``max_abs_diff`` (onnxruntime vs PyTorch on random images). Batch size and, with
    ``dynamic_size``, image size are dynamic. Detection models give two files (see
    :func:`export_detector`).
    """
    from ..models import create, model_task

    task = model_task(name)
    if model is None:
        classes = DEFAULT_CLASSES[task] if num_classes is None else num_classes
        with torch.random.fork_rng():  # reproducible weights, caller's RNG left untouched
            torch.manual_seed(seed)
            model = create(name, num_classes=classes, **model_kwargs)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    if task == "detection":
        return list(export_detector(model, images, path, opset=opset,
                                    dynamic_size=dynamic_size, verify=verify))
    return [export_model(model, images, path, opset=opset, dynamic_size=dynamic_size,
                         verify=verify, input_names=IMAGE_MODEL_NAMES[0],
                         output_names=IMAGE_MODEL_NAMES[1])]

