"""Where a segmentation model is right: per image, and per object scale on synthetic scenes.

- :func:`predict_masks`: a model's label maps ``(N, H, W)`` for (some of) a dataset.
- :func:`image_mious`: mIoU of each image on its own, to compare two models image by image.
- :func:`object_recalls`: for each object of a synthetic scene, the share of its visible
  pixels labelled with its class, with the object's scale (longer side of the unrotated
  shape, in pixels); :func:`recall_by_scale` averages them per scale bucket. An object's
  recall does not depend on what else is in the image, so buckets can be compared directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..nn import eval_mode

__all__ = ["image_mious", "object_recalls", "predict_masks", "recall_by_scale", "scale_edges"]


@torch.no_grad()
def predict_masks(model: nn.Module, dataset: Dataset, indices: Sequence[int] | None = None,
                  batch_size: int = 32) -> Tensor:
    """``(N, H, W)`` int64 arg-max labels of ``model`` (eval mode, restored after) on samples
    ``indices`` (default: all) of a segmentation ``dataset``."""
    indices = list(range(len(dataset))) if indices is None else list(indices)  # type: ignore[arg-type]
    device = next(model.parameters()).device
    with eval_mode(model):
        out = []
        for start in range(0, len(indices), batch_size):
            images = torch.stack([dataset[i][0] for i in indices[start:start + batch_size]])
            out.append(model(images.to(device)).argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def image_mious(predictions: Tensor, masks: Tensor, num_classes: int) -> list[float]:
    """mIoU of each image ``(N, H, W)`` alone (classes absent from both prediction and
    mask left out, 255 ignored)."""
    from ..engine import confusion_matrix, iou_from_confusion

    return [float(iou_from_confusion(confusion_matrix(p, m, num_classes))["miou"])
            for p, m in zip(predictions, masks, strict=True)]


def object_recalls(predictions: Tensor, dataset: Dataset, indices: Sequence[int] | None = None
                   ) -> list[dict[str, Any]]:
    """One row per object of the scenes behind samples ``indices`` (default: all) of a
    synthetic segmentation dataset (one with ``scene(i)``): ``image``, ``label`` (class
    index, 0-based), ``scale`` (px), ``pixels`` (visible) and ``recall`` (share of them
    predicted as ``label + 1``; predictions ``(N, H, W)`` in the order of ``indices``)."""
    if not hasattr(dataset, "scene"):
        raise ValueError(f"{type(dataset).__name__} has no scene(i): object scales are known "
                         "for synthetic scenes only")
    indices = list(range(len(dataset))) if indices is None else list(indices)  # type: ignore[arg-type]
    if len(indices) != len(predictions):
        raise ValueError(f"got {len(predictions)} predictions for {len(indices)} images")
    rows = []
    for index, prediction in zip(indices, predictions, strict=True):
        scene = dataset.scene(index)  # type: ignore[attr-defined]
        for label, scale, mask in zip(scene.labels, scene.scales, scene.masks, strict=True):
            pixels = torch.from_numpy(mask)
            count = int(pixels.sum())
            if count == 0:
                continue
            hits = int((prediction[pixels] == int(label) + 1).sum())
            rows.append({"image": index, "label": int(label), "scale": float(scale),
                         "pixels": count, "recall": hits / count})
    return rows


def scale_edges(low: float, high: float, buckets: int = 5) -> list[float]:
    """``buckets + 1`` log-spaced bucket edges from ``low`` to ``high`` (pixels)."""
    if not 0 < low < high or buckets < 1:
        raise ValueError(f"need 0 < low < high and buckets >= 1, got {low}, {high}, {buckets}")
    step = math.log(high / low) / buckets
    return [low * math.exp(step * i) for i in range(buckets + 1)]


def recall_by_scale(rows: Sequence[dict[str, Any]], edges: Sequence[float]
                    ) -> list[dict[str, Any]]:
    """Mean object recall per scale bucket ``[edges[i], edges[i+1])`` (the last bucket also
    takes objects at or above its upper edge, the first those below its lower one):
    ``{"low", "high", "objects", "recall"}`` (recall NaN for an empty bucket)."""
    if len(edges) < 2 or list(edges) != sorted(edges):
        raise ValueError(f"edges must be >= 2 increasing values, got {list(edges)}")
    sums = [[0, 0.0] for _ in range(len(edges) - 1)]
    for row in rows:
        bucket = sum(row["scale"] >= e for e in edges[1:-1])
        sums[bucket][0] += 1
        sums[bucket][1] += row["recall"]
    return [{"low": edges[i], "high": edges[i + 1], "objects": count,
             "recall": total / count if count else math.nan}
            for i, (count, total) in enumerate(sums)]
