"""A dataset's samples computed once and kept in memory, with random transforms on top.

Synthetic scenes are rendered on the fly, which can cost more than a training step of a
small network. :class:`InMemory` renders each one once; random training transforms then
vary the copies that are handed out.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.utils.data import Dataset, default_collate

from ._common import NoReadableSamplesError, Transform, next_readable, readable_sample

__all__ = ["InMemory"]


class InMemory(Dataset):
    """Every readable sample of ``source``, computed at construction and stored as stacked
    tensors.

    ``source[i]`` must be ``(image (3, H, W), target)`` with images of one size and targets
    that ``default_collate`` stacks (class ids, segmentation masks) or detection target
    dicts (kept as a list). ``transforms`` (see :mod:`deformconv.data.transforms`) run on
    each sample handed out. Attributes the class does not define (``class_names``,
    ``num_classes``, ``scene(i)``, ``skipped`` ...) are the source's. A sample the source
    cannot read (see :class:`~deformconv.data.VOCSegmentation`) keeps its index: as in the
    source, ``load_or_skip`` gives None for it, so evaluation leaves it out, and indexing
    gives the next readable sample.

    Example::

        >>> from deformconv.data import synthetic_dataset, transforms as T
        >>> train = InMemory(synthetic_dataset("segmentation", 100, image_size=64),
        ...                  T.RandomHorizontalFlip())
    """

    def __init__(self, source: Dataset, transforms: Transform | None = None) -> None:
        length = len(source)  # type: ignore[arg-type]
        if length == 0:
            raise ValueError("source is empty: nothing to keep in memory")
        loaded = [readable_sample(source, i) for i in range(length)]
        samples = [sample for sample in loaded if sample is not None]
        if not samples:
            raise NoReadableSamplesError.of(source)
        targets = [target for _, target in samples]
        try:
            images = default_collate([image for image, _ in samples])
            if not isinstance(targets[0], dict):
                targets = default_collate(targets)
        except RuntimeError as err:
            raise ValueError(f"cannot stack the samples of {type(source).__name__}: {err}; "
                             "InMemory needs images of one size and stackable targets") from err
        self.source = source
        self.images: Tensor = images  # (readable samples, 3, H, W)
        self.targets: Tensor | list[dict[str, Any]] = targets  # (readable samples,) labels,
        # (readable samples, H, W) masks, or detection target dicts
        rows = iter(range(len(samples)))
        self._rows = [-1 if sample is None else next(rows) for sample in loaded]
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        return next_readable(self, index)

    def load_or_skip(self, index: int) -> tuple[Tensor, Any] | None:
        """Sample ``index`` (in ``[0, len)``), or None where the source could not read it (it
        warned and counted that already)."""
        row = self._rows[index]
        if row < 0:
            return None
        image, target = self.images[row], self.targets[row]
        if isinstance(target, Tensor) and target.dim() == 0:
            target = int(target)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __getattr__(self, name: str) -> Any:
        if name == "source":  # not set yet (during construction or unpickling)
            raise AttributeError(name)
        return getattr(self.source, name)

    def __repr__(self) -> str:
        return f"InMemory({self.source!r}, transforms={self.transforms!r})"
