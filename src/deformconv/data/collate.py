"""Batching for detection: images differ in size and targets in object count."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

__all__ = ["check_pairs", "detection_collate"]


def detection_collate(
    batch: Sequence[tuple[Tensor, dict[str, Any]]],
) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """``[(image, target), ...] -> ([image, ...], [target, ...])`` (torchvision's convention)."""
    check_pairs(batch)
    return [sample[0] for sample in batch], [sample[1] for sample in batch]


def check_pairs(batch: Sequence[Any]) -> None:
    """Raise ValueError, naming the first offender, unless every sample of ``batch`` is an
    ``(image, target)`` pair (a tuple or list of two)."""
    for i, sample in enumerate(batch):
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            what = (f"a {type(sample).__name__} of {len(sample)}"
                    if isinstance(sample, (tuple, list)) else type(sample).__name__)
            raise ValueError(f"the dataset must give (image, target) pairs; batch item {i} is "
                             f"{what}")
