"""Batching for detection: images differ in size and targets in object count."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

__all__ = ["detection_collate"]


def detection_collate(
    batch: Sequence[tuple[Tensor, dict[str, Any]]],
) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """``[(image, target), ...] -> ([image, ...], [target, ...])`` (torchvision's convention)."""
    images, targets = [], []
    for i, sample in enumerate(batch):
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise ValueError(f"batch item {i} must be an (image, target) pair, got {type(sample)}")
        images.append(sample[0])
        targets.append(sample[1])
    return images, targets
