"""What differs between the three tasks: batching, the training loss and the evaluation metric.

Conventions (torchvision's):
    classification  image (3, H, W), target int64 class id; ``model(images) -> (N, C)``.
    segmentation    image (3, H, W), target int64 mask (H, W), 255 = ignore (or the
                    model's ``ignore_index``: :func:`ignore_index_of`);
                    ``model(images) -> (N, C, H, W)``.
    detection       image (3, H, W), target {"boxes" (K, 4) x1y1x2y2, "labels" (K,), ...};
                    train: ``model(images, targets) -> dict of losses``;
                    eval: ``model(images) -> [{"boxes", "labels", "scores"}]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import default_collate

from .._extras import require
from ..conventions import TASKS
from ..data import detection_collate
from ..data.collate import check_pairs
from ..ops.arguments import integer
from .coco import coco_map, detection_record
from .distributed import all_gather_objects, all_reduce_sum, unwrap_parallel
from .metrics import IGNORE_INDEX, confusion_matrix, iou_from_confusion, top1_correct

__all__ = [
    "PRIMARY_METRIC",
    "ClassificationEvaluator",
    "DetectionEvaluator",
    "Evaluator",
    "SegmentationEvaluator",
    "collate_fn",
    "compute_loss",
    "ignore_index_of",
    "make_evaluator",
    "num_images",
    "to_device",
]

# The val metric that decides best.pt (higher is better for all three).
PRIMARY_METRIC = {"classification": "top1", "segmentation": "miou", "detection": "AP"}


def _stack_collate(batch: Sequence[Any]) -> Any:
    check_pairs(batch)
    try:
        return default_collate(batch)
    except RuntimeError as err:
        shapes = sorted({tuple(item[0].shape) for item in batch if isinstance(item[0], Tensor)})
        raise RuntimeError(
            f"cannot stack a batch of samples: {err}. Image shapes in this batch: {shapes}; "
            "images (and masks) in one batch must share a size: resize them in the dataset "
            "or use batch_size=1"
        ) from err


def collate_fn(task: str) -> Callable[[Sequence[Any]], Any]:
    """Stacked tensors for classification/segmentation, lists of images and dicts for
    detection; the samples must be ``(image, target)`` pairs."""
    return detection_collate if task == "detection" else _stack_collate


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors, and tensors inside lists/tuples/dicts, to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def num_images(images: Tensor | Sequence[Tensor]) -> int:
    return images.shape[0] if isinstance(images, Tensor) else len(images)


# What a classification / segmentation model returns, and what its targets are.
_LOGITS = {"classification": (2, "(N, C)"), "segmentation": (4, "(N, C, H, W)")}
_TARGETS = {"classification": (1, "(N,) class ids"), "segmentation": (3, "(N, H, W) masks")}


def checked_logits(outputs: Any, task: str) -> Tensor:
    """A classification or segmentation model's output, refused with what it must be."""
    dims, shape = _LOGITS[task]
    if not isinstance(outputs, Tensor):
        what = type(outputs).__name__
        if isinstance(outputs, dict):
            what += f" with keys {list(outputs)}"
        hint = (" (torchvision's segmentation models return {'out': logits}: wrap the model "
                "to return output['out'])" if isinstance(outputs, dict) and "out" in outputs
                else "")
        raise TypeError(f"a {task} model must return its logits {shape} as one tensor, got "
                        f"{what}{hint}")
    if outputs.dim() != dims:
        raise ValueError(f"{task} logits must be {shape}, got shape {tuple(outputs.shape)}")
    return outputs


def checked_targets(targets: Any, task: str) -> Tensor:
    """Classification or segmentation targets as int64, refused with what they must be."""
    dims, shape = _TARGETS[task]
    if not isinstance(targets, Tensor):
        raise TypeError(f"{task} targets must be a tensor of {shape} (integers), got "
                        f"{type(targets).__name__}; the dataset must give (image, target) "
                        "with an int or tensor target")
    if targets.is_floating_point() or targets.dtype == torch.bool or targets.dim() != dims:
        raise ValueError(f"{task} targets must be {shape} of an integer dtype, got shape "
                         f"{tuple(targets.shape)} of {targets.dtype}")
    return targets.long()  # uint8 masks (as PIL gives them), 255 ignored, are common


def ignore_index_of(model: nn.Module | None) -> int:
    """The mask value a segmentation model leaves out of its loss and metric: its
    ``ignore_index`` (inside DDP too), or 255 (VOC's "void") for a model without one or
    for no model. The engine's loss, class-id check and mIoU all take it from here.

    Raises:
        TypeError: the model's ``ignore_index`` is not an int.
    """
    value = getattr(unwrap_parallel(model), "ignore_index", None) if model is not None else None
    return IGNORE_INDEX if value is None else integer(value, "the model's ignore_index")


def _segmentation_loss(logits: Tensor, masks: Tensor, weight: Tensor | None = None,
                       ignore_index: int = IGNORE_INDEX) -> Tensor:
    if logits.shape[-2:] != masks.shape[-2:]:
        # Models with an output stride predict coarse maps: compare at the mask's resolution.
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear",
                               align_corners=False)
    return _cross_entropy(logits, masks, weight, ignore_index)


_REDUCTION_SUM = 2  # the reduction argument of the aten nll_loss ops (none 0, mean 1, sum 2)


def _cross_entropy(logits: Tensor, targets: Tensor, weight: Tensor | None,
                   ignore_index: int = -100) -> Tensor:
    """``F.cross_entropy``'s (weighted) mean in float32, bit for bit, but 0 with a zero
    gradient where no target has a weight above 0 (all ignored, or only classes of weight
    0), where that mean is 0/0 = nan.

    No Python branch on the data, so that ``torch.compile(fullgraph=True)`` traces it: the
    weighted sum and the total weight come from the op ``F.cross_entropy`` reduces with
    (``nll_loss``, which returns both), in its summation order, and the sum is divided by
    the total weight, or by 1 where it is 0 (the sum is 0 there).
    """
    log_probs = F.log_softmax(logits.float(), 1)
    nll = (torch.ops.aten.nll_loss2d_forward if log_probs.dim() == 4
           else torch.ops.aten.nll_loss_forward)
    total, total_weight = nll(log_probs, targets, weight, _REDUCTION_SUM, ignore_index)
    return total / torch.where(total_weight > 0, total_weight, torch.ones_like(total_weight))


def check_class_ids(targets: Tensor, num_classes: int, task: str,
                    ignore_index: int = IGNORE_INDEX) -> None:
    """Refuse target class ids that the model's ``num_classes`` outputs cannot score
    (``ignore_index``, the model's, is ignored in segmentation masks: with another one than
    255, VOC's 255 borders are refused)."""
    outside = (targets < 0) | (targets >= num_classes)
    if task == "segmentation":
        outside &= targets != ignore_index
    if bool(outside.any()):
        ids = sorted(set(targets[outside].tolist()))
        ignored = f" other than {ignore_index} (ignored)" if task == "segmentation" else ""
        void = (f"; {IGNORE_INDEX} (VOC's void) is not ignored: the model's ignore_index is "
                f"{ignore_index}" if task == "segmentation" and IGNORE_INDEX in ids else "")
        raise ValueError(f"{task} targets hold class ids outside [0, {num_classes}){ignored}, "
                         f"the model's {num_classes} outputs: {ids[:8]}{void}")


def model_classes(model: nn.Module) -> int | None:
    """A classifier's class count as its ``num_classes`` says (inside DDP too; deformconv's
    models have one), known before a forward pass; None where it has none (0: a backbone)."""
    value = getattr(unwrap_parallel(model), "num_classes", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def check_class_weights(task: str, class_weights: Sequence[float] | Tensor | None,
                        num_classes: int | None) -> None:
    """Refuse ``class_weights`` for detection, whose models compute their own losses, or
    that do not hold one weight per class of ``num_classes`` (None: not known yet)."""
    if class_weights is None:
        return
    if task == "detection":
        raise ValueError("class_weights are for classification and segmentation; "
                         "detection models compute their own losses")
    shape = (tuple(class_weights.shape) if isinstance(class_weights, Tensor)
             else (len(class_weights),))
    if num_classes is not None and shape != (num_classes,):
        raise ValueError(f"class_weights must hold one weight per class of the model's "
                         f"{num_classes} outputs, got shape {shape}")


def compute_loss(
    task: str, model: nn.Module, images: Any, targets: Any, class_weights: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Forward ``model`` in train mode; return the total loss and its named parts (detached).

    ``class_weights`` ``(C,)`` weight the cross-entropy of classification and segmentation
    per target class (detection models compute their own losses and refuse them).
    Segmentation leaves out the pixels of the model's ``ignore_index``
    (:func:`ignore_index_of`: 255 for a model without one); other ids outside ``[0, C)``
    are refused.
    """
    if task == "detection":
        check_class_weights(task, class_weights, None)  # refused: its models have their own
        losses = model(list(images), list(targets))
        if not isinstance(losses, dict) or not losses:
            raise TypeError(
                "a detection model in train mode must return a non-empty dict of losses, got "
                f"{type(losses).__name__}"
            )
        total = sum(losses.values())
        return total, {k: v.detach() for k, v in losses.items()}
    logits = checked_logits(model(images), task)
    soft = (task == "classification" and isinstance(targets, Tensor)
            and targets.is_floating_point() and targets.shape == logits.shape)
    # class probabilities (N, C) (mixup, cutmix, label smoothing in the data) stay as they are
    targets = targets.float() if soft else checked_targets(targets, task)
    check_class_weights(task, class_weights, logits.shape[1])
    ignore_index = ignore_index_of(model) if task == "segmentation" else IGNORE_INDEX
    if not soft:
        check_class_ids(targets, logits.shape[1], task, ignore_index)
    if task == "segmentation":
        return _segmentation_loss(logits, targets, class_weights, ignore_index), {}
    if soft:
        return F.cross_entropy(logits.float(), targets, weight=class_weights), {}
    return _cross_entropy(logits, targets, class_weights), {}


class Evaluator:
    """Accumulates one task's metric over batches; ``compute()`` reduces across ranks.

    ``update`` takes a batch and the dataset indices of its samples (None: the order of the
    updates).
    """

    def update(self, images: Any, targets: Any, outputs: Any,
               indices: Sequence[int] | None = None) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, Any]:
        raise NotImplementedError


class ClassificationEvaluator(Evaluator):
    """Top-1 accuracy (fraction of images whose arg-max logit is the target)."""

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, images: Tensor, targets: Tensor, outputs: Tensor,
               indices: Sequence[int] | None = None) -> None:
        outputs = checked_logits(outputs, "classification")
        targets = checked_targets(targets, "classification")
        check_class_ids(targets, outputs.shape[1], "classification")
        self.correct += top1_correct(outputs, targets)
        self.total += targets.numel()

    def compute(self) -> dict[str, Any]:
        counts = all_reduce_sum(torch.tensor([self.correct, self.total], dtype=torch.float64))
        correct, total = (int(v) for v in counts)
        return {"top1": correct / total if total else float("nan"), "num_images": total}


class SegmentationEvaluator(Evaluator):
    """mIoU over a confusion matrix, pixels of ``ignore_index`` left out (the model's:
    :func:`make_evaluator`); the class count comes from the logits. An ``ignore_index``
    that is one of the classes is left out of the mean too: it has no labelled pixels."""

    def __init__(self, num_classes: int | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion: Tensor | None = None

    def update(self, images: Tensor, targets: Tensor, outputs: Tensor,
               indices: Sequence[int] | None = None) -> None:
        outputs = checked_logits(outputs, "segmentation")
        targets = checked_targets(targets, "segmentation")
        if outputs.shape[-2:] != targets.shape[-2:]:
            outputs = F.interpolate(outputs.float(), size=targets.shape[-2:], mode="bilinear",
                                    align_corners=False)
        if self.num_classes is None:
            self.num_classes = outputs.shape[1]
        conf = confusion_matrix(outputs.argmax(1), targets, self.num_classes, self.ignore_index)
        self.confusion = conf if self.confusion is None else self.confusion + conf

    def compute(self) -> dict[str, Any]:
        # A rank that saw no images learns the class count from the others.
        counts = {c for c in all_gather_objects(self.num_classes) if c is not None}
        if len(counts) != 1:
            raise ValueError(f"segmentation evaluation needs one class count, got {counts}")
        num_classes = counts.pop()
        conf = self.confusion
        if conf is None:
            conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        conf = all_reduce_sum(conf.clone())
        return {**iou_from_confusion(conf, self.ignore_index), "num_pixels": int(conf.sum())}


class DetectionEvaluator(Evaluator):
    """COCO box mAP; predictions from every rank are gathered, COCOeval runs once over them
    in dataset order, or by image id where each target has a distinct one (COCO breaks score
    ties by image order: :func:`~deformconv.engine.coco.coco_map`)."""

    def __init__(self) -> None:
        require("pycocotools.cocoeval", "detection evaluation")  # missing: fail here, early
        self.records: list[tuple[int, dict[str, Any]]] = []

    def update(self, images: Sequence[Tensor], targets: Sequence[dict], outputs: Sequence[dict],
               indices: Sequence[int] | None = None) -> None:
        if indices is None:
            indices = range(len(self.records), len(self.records) + len(images))
        for image, target, output, index in zip(images, targets, outputs, indices, strict=True):
            self.records.append(
                (index, detection_record(tuple(image.shape[-2:]), target, output)))

    def compute(self) -> dict[str, Any]:
        gathered = [r for rank_records in all_gather_objects(self.records) for r in rank_records]
        records = [record for _, record in sorted(gathered, key=lambda item: item[0])]
        if not records:
            raise ValueError("detection evaluation saw no images")
        return {**coco_map(records), "num_images": len(records)}


def make_evaluator(task: str, model: nn.Module | None = None) -> Evaluator:
    """A fresh :class:`Evaluator` for ``task`` (one of ``TASKS``): top-1 accuracy for
    classification, mIoU for segmentation (leaving out the pixels of ``model``'s
    ``ignore_index``: :func:`ignore_index_of`), COCO box mAP for detection.

    Raises:
        ValueError: ``task`` is not one of ``TASKS``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "segmentation":
        return SegmentationEvaluator(ignore_index=ignore_index_of(model))
    return ClassificationEvaluator() if task == "classification" else DetectionEvaluator()
