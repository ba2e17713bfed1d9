"""Synthetic datasets drawn on the fly: classification, semantic segmentation, detection.

Three views of one :class:`~deformconv.data.scene.SceneGenerator`. Sample ``i`` is a pure
function of ``(seed, i)`` (nothing is downloaded or stored); random training transforms,
if given, draw from torch's global RNG afterwards.

Example::

    >>> ds = SyntheticDetection(length=100, seed=0, image_size=96)
    >>> image, target = ds[0]  # (3, 96, 96) float32, {"boxes", "labels", "area", ...}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ._common import IGNORE_INDEX, Transform, box_sizes, sample_index
from .scene import Scene, SceneConfig, SceneGenerator

__all__ = [
    "SyntheticClassification",
    "SyntheticDetection",
    "SyntheticSegmentation",
    "semantic_mask",
    "synthetic_dataset",
]


def semantic_mask(scene: Scene, ignore_border: int = 0) -> Tensor:
    """(H, W) int64 mask: 0 background, class index + 1 on objects, 255 near boundaries.

    ``ignore_border`` > 0 marks every pixel within that many pixels (Chebyshev distance) of
    a label change as ignore, like the VOC annotations' object outlines.
    """
    h, w = scene.image.shape[:2]
    mask = np.zeros((h, w), dtype=np.int64)
    for label, pixels in zip(scene.labels, scene.masks, strict=True):
        mask[pixels] = label + 1
    if ignore_border > 0:
        border = _window_max(mask, ignore_border) != -_window_max(-mask, ignore_border)
        mask[border] = IGNORE_INDEX
    return torch.from_numpy(mask)


def _window_max(a: np.ndarray, r: int) -> np.ndarray:
    """Maximum over the (2r+1) x (2r+1) window around each pixel (edges replicated)."""
    for axis in (0, 1):
        padded = np.pad(a, [(r, r) if ax == axis else (0, 0) for ax in (0, 1)], mode="edge")
        n = a.shape[axis]
        a = np.max([padded.take(np.arange(k, k + n), axis=axis) for k in range(2 * r + 1)], 0)
    return a


def _image(scene: Scene) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(scene.image.transpose(2, 0, 1)))


class _Synthetic(Dataset):
    def __init__(
        self,
        length: int,
        seed: int,
        transforms: Transform | None,
        config: SceneConfig | None,
        overrides: dict[str, Any],
    ) -> None:
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        config = (config or SceneConfig()).replace(**overrides)
        self.length = length
        self.transforms = transforms
        self.generator = SceneGenerator(config, seed)

    @property
    def config(self) -> SceneConfig:
        return self.generator.config

    @property
    def seed(self) -> int:
        return self.generator.seed

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the C classes, in label order."""
        return self.config.classes

    @property
    def num_classes(self) -> int:
        """C, the number of object classes (background not counted)."""
        return len(self.config.classes)

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        """The full scene behind sample ``index``: instance masks, scales, angles, aspects.
        Indices are a Sequence's: ints (numpy, torch integer scalars too), negative from the end."""
        return self.generator(sample_index(index, self.length))

    def _apply(self, image: Tensor, target: Any) -> tuple[Tensor, Any]:
        return (image, target) if self.transforms is None else self.transforms(image, target)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(length={self.length}, seed={self.seed}, "
                f"image_size={self.config.image_size}, classes={self.num_classes})")


class SyntheticClassification(_Synthetic):
    """``(image (3, H, W) float32, label int)`` with one class object among clutter.

    Labels are 0..C-1 (``class_names[label]``). ``scene(i).scales`` gives the object size.
    Keyword ``overrides`` set :class:`SceneConfig` fields (``image_size=64`` ...).
    """

    def __init__(
        self,
        length: int = 1000,
        seed: int = 0,
        transforms: Transform | None = None,
        config: SceneConfig | None = None,
        **overrides: Any,
    ) -> None:
        fixed = sorted({"min_objects", "max_objects"} & set(overrides))
        if fixed:
            raise TypeError(f"{fixed}: a classification scene always holds exactly one object")
        super().__init__(length, seed, transforms, config, {"min_objects": 1, "max_objects": 1,
                                                            **overrides})

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        scene = self.scene(index)
        return self._apply(_image(scene), int(scene.labels[0]))


class SyntheticSegmentation(_Synthetic):
    """``(image (3, H, W) float32, mask (H, W) int64)``: 0 background, 1..C objects, 255 ignore.

    ``ignore_border`` px around every object boundary are 255 (default 0: none).
    """

    def __init__(
        self,
        length: int = 1000,
        seed: int = 0,
        transforms: Transform | None = None,
        config: SceneConfig | None = None,
        *,
        ignore_border: int = 0,
        **overrides: Any,
    ) -> None:
        if not isinstance(ignore_border, int) or ignore_border < 0:
            raise ValueError(f"ignore_border must be an int >= 0, got {ignore_border!r}")
        super().__init__(length, seed, transforms, config, overrides)
        self.ignore_border = ignore_border

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        scene = self.scene(index)
        return self._apply(_image(scene), semantic_mask(scene, self.ignore_border))


class SyntheticDetection(_Synthetic):
    """``(image (3, H, W) float32, target)`` with a torchvision detection target:

    boxes    (K, 4) float32 x1y1x2y2, tight around the visible pixels (x2, y2 exclusive)
    labels   (K,) int64 in 1..C (``class_names[label - 1]``)
    masks    (K, H, W) uint8, only with ``masks=True``
    image_id int, the sample index
    area     (K,) float32 visible pixel count (what COCO evaluation buckets by)
    iscrowd  (K,) int64 zeros
    sizes    (K,) float32 ``sqrt(box w * box h)``, the object size in pixels
    """

    def __init__(
        self,
        length: int = 1000,
        seed: int = 0,
        transforms: Transform | None = None,
        config: SceneConfig | None = None,
        *,
        masks: bool = False,
        **overrides: Any,
    ) -> None:
        super().__init__(length, seed, transforms, config, overrides)
        self.masks = masks

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        index = sample_index(index, self.length)
        scene = self.scene(index)
        boxes = torch.from_numpy(scene.boxes)
        target: dict[str, Any] = {
            "boxes": boxes,
            "labels": torch.from_numpy(scene.labels + 1),
            "image_id": index,
            "area": torch.from_numpy(scene.masks.sum(axis=(1, 2)).astype(np.float32)),
            "iscrowd": torch.zeros(len(boxes), dtype=torch.int64),
            "sizes": box_sizes(boxes),
        }
        if self.masks:
            target["masks"] = torch.from_numpy(scene.masks.astype(np.uint8))
        return self._apply(_image(scene), target)


SYNTHETIC_VIEWS: dict[str, type[_Synthetic]] = {
    "classification": SyntheticClassification,
    "segmentation": SyntheticSegmentation,
    "detection": SyntheticDetection,
}


def synthetic_dataset(task: str, length: int = 1000, seed: int = 0, **kwargs: Any) -> _Synthetic:
    """The synthetic dataset for ``task`` ("classification", "segmentation" or "detection").

    ``kwargs`` go to the view's constructor (``transforms``, ``masks``, ``ignore_border``,
    and any :class:`SceneConfig` field such as ``image_size``).
    """
    if task not in SYNTHETIC_VIEWS:
        raise ValueError(f"task must be one of {sorted(SYNTHETIC_VIEWS)}, got {task!r}")
    return SYNTHETIC_VIEWS[task](length=length, seed=seed, **kwargs)
