"""Class-balanced loss weights from label counts.

When one class dominates (background holds most pixels of a segmentation set), an
unweighted cross-entropy is lowest for a model that predicts it everywhere, and the rare
classes are learned late. Weighting class c by ``(1 / frequency_c) ** power`` evens that
out: power 1 is full inverse-frequency balancing, 0.5 a softer version that still favours
the frequent classes' precision.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .metrics import IGNORE_INDEX

__all__ = ["balanced_class_weights", "label_counts"]


def label_counts(targets: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``(C,)`` int64 counts of each class id in ``targets`` (any shape; ``ignore_index``
    left out)."""
    labels = targets[targets != ignore_index].long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"targets hold class ids outside [0, {num_classes}) other than "
                         f"{ignore_index}: min {int(labels.min())}, max {int(labels.max())}")
    return torch.bincount(labels.flatten(), minlength=num_classes)


def balanced_class_weights(counts: Tensor, power: float = 0.5) -> list[float]:
    """Loss weight of each class, ``(1 / frequency) ** power``, scaled so that the mean weight
    of a labelled sample is 1 (the loss keeps its unweighted scale). A class with no
    labels gets the largest weight of the others."""
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"counts must be a non-empty (C,) tensor, got shape {tuple(counts.shape)}")
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    counts = counts.double()
    if not bool((counts > 0).any()):
        raise ValueError("counts are all zero: no labels to balance")
    freq = counts / counts.sum()
    weights = torch.where(freq > 0, freq.clamp(min=1e-12) ** -power, torch.zeros_like(freq))
    weights = weights / (freq * weights).sum()
    weights[freq == 0] = weights.max()
    return weights.tolist()
