"""Classification and segmentation metrics: top-1 accuracy and mIoU from a confusion matrix."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..conventions import IGNORE_INDEX
from ..ops.arguments import count

__all__ = ["IGNORE_INDEX", "confusion_matrix", "iou_from_confusion", "top1_correct"]


def _check_class_ids(ids: Tensor, name: str) -> None:
    """Refuse floating-point class ids, which comparisons and ``.long()`` would truncate
    silently (a dtype check: no sync with the device)."""
    if ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"{name} must hold integer class ids, got dtype {ids.dtype}")


def top1_correct(logits: Tensor, targets: Tensor) -> int:
    """Number of rows whose highest logit is the target class.

    Args:
        logits: ``(N, C)`` scores.
        targets: ``(N,)`` int64 class ids.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(
            f"targets must have shape {tuple(logits.shape[:1])} to match logits "
            f"{tuple(logits.shape)}, got {tuple(targets.shape)}"
        )
    _check_class_ids(targets, "targets")
    return int((logits.argmax(dim=1) == targets).sum())


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """``(C, C)`` int64 counts: entry ``[t, p]`` is the number of pixels of class t predicted p.

    Pixels whose target is ``ignore_index`` are skipped. Targets outside ``[0, C)`` (other
    than ``ignore_index``) and predictions outside ``[0, C)`` raise ``ValueError`` rather than
    being counted silently (as another class's), as do floating-point ids and ``C < 1``.

    Args:
        pred: ``(N, H, W)`` (or any shape) predicted class ids.
        target: same shape as ``pred``, true class ids.
        num_classes: C, the size of the matrix (an int > 0).
        ignore_index: the target id of pixels left out (255, VOC's "void", by default).
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    num_classes = count(num_classes, "num_classes")
    _check_class_ids(pred, "pred")
    _check_class_ids(target, "target")
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(
            f"target holds class ids outside [0, {num_classes}) other than {ignore_index}: "
            f"min {int(t.min())}, max {int(t.max())}"
        )
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= num_classes):
        raise ValueError(
            f"pred holds class ids outside [0, {num_classes}): min {int(p.min())}, max "
            f"{int(p.max())}; a model with more outputs than num_classes={num_classes}?"
        )
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def iou_from_confusion(confusion: Tensor, ignore_index: int | None = None
                       ) -> dict[str, object]:
    """Per-class IoU, mIoU and pixel accuracy from a ``(C, C)`` confusion matrix.

    IoU_c = TP_c / (TP_c + FP_c + FN_c). A class that appears neither in the targets nor in
    the predictions (zero union) has IoU ``nan`` and is left out of the mean, so mIoU is
    the mean over the classes present. So is the class ``ignore_index``, when it is one
    (a model that leaves out the pixels of one of its classes): its pixels were not counted
    (:func:`confusion_matrix`), so its IoU would score only its false positives; those
    still count as misses of the true classes. A matrix that is not square or holds
    negative counts raises ``ValueError``.

    Returns:
        ``{"miou": float, "iou": list[float], "pixel_acc": float}``.
    """
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix, got shape "
                         f"{tuple(confusion.shape)}")
    if bool((confusion < 0).any()):
        raise ValueError(f"confusion must hold counts >= 0, got min {confusion.min().item()}")
    conf = confusion.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = tp / union  # 0/0 -> nan for absent classes
    if ignore_index is not None and 0 <= ignore_index < len(iou):
        iou[ignore_index] = math.nan
    present = ~iou.isnan()
    miou = float(iou[present].mean()) if bool(present.any()) else float("nan")
    total = conf.sum()
    pixel_acc = float(tp.sum() / total) if total > 0 else float("nan")
    return {"miou": miou, "iou": iou.tolist(), "pixel_acc": pixel_acc}
