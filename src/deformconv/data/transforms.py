"""Joint image + target transforms for training: flip, quarter turns, resize, scale jitter, crop.

Every transform is ``(image (3, H, W), target) -> (image, target)`` where ``target`` is
    a class label (int or 0-d tensor)  -> passed through,
    a segmentation mask (H, W) int64    -> moved with the image (nearest), padding = 255,
    a detection dict                    -> ``boxes`` moved, clipped, empty ones dropped with
                                          their ``labels``/``masks``/``area``/``iscrowd``/
                                          ``sizes``; ``area`` and ``sizes`` kept consistent;
                                          integer ``boxes``/``area`` come back float32.
A mask or detection ``masks`` of another size than the image, a mask dtype that cannot hold
255 (int8, bool, float), a dict without (K, 4) ``boxes`` or per-object entries of another
length raise ``ValueError``.
Random draws use torch's global RNG, so wrapping the dataset in
``deformconv.engine.seeding.SeededSamples`` makes them reproducible per sample.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.arguments import count, finite_float, integer, pair
from ._common import IGNORE_INDEX, Transform, box_sizes

__all__ = [
    "Compose",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomRot90",
    "RandomScale",
    "Resize",
    "crop",
    "hflip",
    "resize",
    "rot90",
]

# Target entries with one row per object, filtered together when boxes are dropped.
_PER_OBJECT = ("boxes", "labels", "masks", "area", "iscrowd", "sizes")


def _is_mask(target: Any) -> bool:
    return isinstance(target, Tensor) and target.dim() == 2


# Mask dtypes that hold the padding value IGNORE_INDEX (255).
_MASK_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


def _check(image: Tensor, target: Any) -> None:
    """Raise ValueError unless ``image`` is (C, H, W) and ``target`` fits it: a mask or
    detection ``masks`` of the image's (H, W), one row per box in each per-object entry.
    Shapes and dtypes only: nothing is read from the tensors."""
    if not isinstance(image, Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a (C, H, W) tensor, got {shape}")
    size = tuple(image.shape[-2:])
    if isinstance(target, Tensor):
        if target.dim() == 2:
            if tuple(target.shape) != size:
                raise ValueError(f"target mask must have the image's size {size}, got "
                                 f"{tuple(target.shape)}")
            if target.dtype not in _MASK_DTYPES:
                raise ValueError(f"target mask must have an integer dtype that holds "
                                 f"{IGNORE_INDEX} {_MASK_DTYPES}, got {target.dtype}")
        elif target.dim() != 0:
            raise ValueError("target tensor must be a 0-d class label or an (H, W) mask, got "
                             f"shape {tuple(target.shape)}")
    elif isinstance(target, dict):
        boxes = target.get("boxes")
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise ValueError(f"target['boxes'] must be a (K, 4) tensor, got {got}")
        masks = target.get("masks")
        if masks is not None and (not isinstance(masks, Tensor) or masks.dim() != 3
                                  or tuple(masks.shape[-2:]) != size):
            got = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
            raise ValueError(f"target['masks'] must be a (K, H, W) tensor of the image's size "
                             f"(H, W) = {size}, got {got}")
        for key in _PER_OBJECT:
            value = target.get(key)
            if isinstance(value, Tensor) and (value.dim() == 0 or len(value) != len(boxes)):
                raise ValueError(f"target[{key!r}] must have one row per box ({len(boxes)}), "
                                 f"got shape {tuple(value.shape)}")


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    """An output ``(H, W)`` from a pair of ints or one int (a square), both > 0."""
    hw = pair(size, "size")
    if min(hw) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return hw


def _resize_nearest(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of integer maps (..., H, W), keeping the dtype."""
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:]).float()
    if flat.shape[0] == 0:
        return x.new_zeros(*lead, *size)
    out = F.interpolate(flat, size=size, mode="nearest-exact")
    return out.reshape(*lead, *size).to(x.dtype)


def _detection_copy(target: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy whose integer ``boxes`` and ``area`` are float32: scaled or cut in
    their own dtype they would round (a box halved to nothing, an area ratio to 0)."""
    target = dict(target)
    for key in ("boxes", "area"):
        value = target.get(key)
        if isinstance(value, Tensor) and not value.is_floating_point():
            target[key] = value.float()
    return target


def hflip(image: Tensor, target: Any) -> tuple[Tensor, Any]:
    """Mirror left-right."""
    _check(image, target)
    width = image.shape[-1]
    if _is_mask(target):
        return image.flip(-1), target.flip(-1)
    if isinstance(target, dict):
        target = _detection_copy(target)
        boxes = target["boxes"]
        target["boxes"] = torch.stack(
            [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1
        )
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


def rot90(image: Tensor, target: Any, k: int = 1) -> tuple[Tensor, Any]:
    """Turn by ``k`` quarter turns (an int, negative turns clockwise), counter-clockwise as
    displayed (``torch.rot90`` on the last two dims); boxes and masks turn with the image."""
    _check(image, target)
    k = integer(k, "k") % 4
    for _ in range(k):
        width = image.shape[-1]
        image = image.rot90(1, (-2, -1))
        if _is_mask(target):
            target = target.rot90(1, (-2, -1))
        elif isinstance(target, dict):
            target = _detection_copy(target)
            x1, y1, x2, y2 = target["boxes"].unbind(1)
            # rot90 = flip left-right, then transpose: (x, y) -> (y, width - x)
            target["boxes"] = torch.stack([y1, width - x2, y2, width - x1], dim=1)
            if "masks" in target:
                target["masks"] = target["masks"].rot90(1, (-2, -1))
    return image, target


def resize(image: Tensor, target: Any, size: int | tuple[int, int]) -> tuple[Tensor, Any]:
    """Resize to ``size = (H, W)`` (an int: a square, as :class:`Resize` takes it): bilinear
    image, nearest masks, scaled boxes and areas."""
    _check(image, target)
    height, width = image.shape[-2:]
    size = _size(size)
    antialias = size[0] < height or size[1] < width
    out = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                        antialias=antialias)[0].clamp_(0, 1)
    if _is_mask(target):
        return out, _resize_nearest(target, size)
    if isinstance(target, dict):
        sy, sx = size[0] / height, size[1] / width
        target = _detection_copy(target)
        scale = torch.tensor([sx, sy, sx, sy], dtype=target["boxes"].dtype)
        target["boxes"] = target["boxes"] * scale
        if "area" in target:
            target["area"] = target["area"] * (sx * sy)
        if "sizes" in target:
            target["sizes"] = box_sizes(target["boxes"])
        if "masks" in target:
            target["masks"] = _resize_nearest(target["masks"], size)
    return out, target


def _scalar(value: Any) -> Any:
    """A one-element integer tensor (``torch.randint(0, 3, ())``) as its int; other values
    as they are."""
    if isinstance(value, Tensor) and value.numel() == 1 and not (
            value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        return int(value)
    return value


def crop(
    image: Tensor, target: Any, top: int, left: int, height: int, width: int, fill: float = 0.0
) -> tuple[Tensor, Any]:
    """Cut ``[top:top+height, left:left+width]``; parts outside the image are padded
    (image with ``fill``, segmentation with 255, instance masks with 0). Boxes are clipped
    and those left empty dropped; ``area`` is recounted from masks, else scaled with the box.
    ``top`` and ``left`` are ints (negative: above or left of the image), ``height`` and
    ``width`` ints > 0; one-element integer tensors are taken as their ints.
    """
    _check(image, target)
    top, left = integer(_scalar(top), "top"), integer(_scalar(left), "left")
    height, width = count(_scalar(height), "height"), count(_scalar(width), "width")
    h, w = image.shape[-2:]
    pads = (max(0, -left), max(0, left + width - w), max(0, -top), max(0, top + height - h))

    def cut(x: Tensor, value: float) -> Tensor:
        x = F.pad(x, pads, value=value) if any(pads) else x
        y0, x0 = top + pads[2], left + pads[0]
        return x[..., y0:y0 + height, x0:x0 + width]

    out = cut(image, fill)
    if _is_mask(target):
        return out, cut(target, IGNORE_INDEX)
    if isinstance(target, dict):
        target = _detection_copy(target)
        old = target["boxes"]
        boxes = old - torch.tensor([left, top, left, top], dtype=old.dtype)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if "masks" in target:
            target["masks"] = cut(target["masks"], 0)
            if "area" in target:
                target["area"] = target["masks"].flatten(1).sum(1).to(target["area"].dtype)
        elif "area" in target:
            ratio = _box_area(boxes) / _box_area(old).clamp(min=1e-6)
            target["area"] = target["area"] * ratio.to(target["area"].dtype)
        target["boxes"] = boxes
        if "sizes" in target:
            target["sizes"] = box_sizes(boxes)
        for key in _PER_OBJECT:
            if key in target:
                target[key] = target[key][keep]
    return out, target


def _box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


class Compose:
    """Apply transforms in order; each must be a callable ``(image, target) -> (image,
    target)``."""

    def __init__(self, transforms: Iterable[Transform]) -> None:
        if not isinstance(transforms, Iterable):
            raise TypeError(f"transforms must be a list of transforms, got {transforms!r}")
        self.transforms = list(transforms)
        for i, transform in enumerate(self.transforms):
            if not callable(transform):
                raise TypeError(f"transforms[{i}] must be a callable (image, target) -> "
                                f"(image, target), got {transform!r}")

    def __call__(self, image: Tensor, target: Any) -> tuple[Tensor, Any]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0 <= finite_float(p, "p") <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, image: Tensor, target: Any) -> tuple[Tensor, Any]:
        if torch.rand(()) < self.p:
            return hflip(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomRot90:
    """Turn by 0, 1, 2 or 3 quarter turns, uniformly (with a flip: the 8 symmetries of a
    square, for data whose statistics do not change under them)."""

    def __call__(self, image: Tensor, target: Any) -> tuple[Tensor, Any]:
        return rot90(image, target, int(torch.randint(4, ())))

    def __repr__(self) -> str:
        return "RandomRot90()"


class Resize:
    """Resize to a fixed ``(H, W)`` (or a square side)."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = _size(size)

    def __call__(self, image: Tensor, target: Any) -> tuple[Tensor, Any]:
        return resize(image, target, self.size)

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class RandomScale:
    """Scale jitter: resize by a factor drawn uniformly from ``scale_range`` (aspect kept)."""

    def __init__(self, scale_range: tuple[float, float] = (0.5, 2.0)) -> None:
        expected = f"scale_range must be two finite numbers 0 < low <= high, got {scale_range!r}"
        try:
            low, high = (finite_float(value, "scale_range") for value in scale_range)
        except (TypeError, ValueError):  # not a pair, or not numbers
            raise ValueError(expected) from None
        if not 0 < low <= high:
            raise ValueError(expected)
        self.scale_range = (low, high)

    def __call__(self, image: Tensor, target: Any) -> tuple[Tensor, Any]:
        low, high = self.scale_range
        s = low + (high - low) * float(torch.rand(()))
        h, w = image.shape[-2:]
        return resize(image, target, (max(1, round(h * s)), max(1, round(w * s))))

    def __repr__(self) -> str:
        return f"RandomScale(scale_range={self.scale_range})"


class RandomCrop:
    """Crop a random ``(H, W)`` window, padding first where the image is smaller.

    After :class:`RandomScale` it brings images back to one size so they can be stacked.
    """

    def __init__(self, size: int | tuple[int, int], fill: float = 0.0) -> None:
        self.size = _size(size)
        self.fill = fill

    def __call__(self, image: Tensor, target: Any) -> tuple[Tensor, Any]:
        h, w = image.shape[-2:]
        th, tw = self.size
        top = int(torch.randint(0, h - th + 1, ())) if h > th else -((th - h) // 2)
        left = int(torch.randint(0, w - tw + 1, ())) if w > tw else -((tw - w) // 2)
        return crop(image, target, top, left, th, tw, self.fill)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size})"
