"""Argument normalisation shared by the ops and the modules, models and viz built on them."""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["boolean", "count", "counts", "finite_float", "integer", "is_bool", "is_integer",
           "memory_format", "pair", "rois_to_tensor"]


def is_bool(value: object) -> bool:
    """Whether ``value`` is a bool, Python's or NumPy's."""
    if isinstance(value, bool):
        return True
    numpy = sys.modules.get("numpy")  # a NumPy bool exists only once NumPy is imported
    return numpy is not None and isinstance(value, numpy.bool_)


def boolean(value: object, name: str) -> bool:
    """``value`` as a Python bool, refused with a ``TypeError`` naming ``name`` unless a bool
    (Python's or NumPy's): ``bool("no")`` is True, so a truthy string or number would turn
    an option on."""
    if is_bool(value):
        return bool(value)
    raise TypeError(f"{name} must be a bool (True or False), got {value!r}")


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (Python's or NumPy's, as torchvision and ``nn.Conv2d``
    take them), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def integer(value: object, name: str) -> int:
    """``value`` as a Python int, refused with an error naming ``name`` unless an integer:
    a ``TypeError``, or a ``ValueError`` outside int64 (the ops' schemas, torch's convs and
    the kernels take no other)."""
    if not is_integer(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not INT64_MIN <= value <= INT64_MAX:  # type: ignore[operator]
        raise ValueError(f"{name} must be an int64, from -2**63 to 2**63 - 1, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def count(value: object, name: str, minimum: int = 1) -> int:
    """``integer(value, name)``, also refused unless >= ``minimum`` (1 for a size or a
    count; 0 where zero means something, such as an adaptive ``sampling_ratio``)."""
    number = integer(value, name)
    if number < minimum:
        bound = "> 0" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return number


def counts(values: object, name: str, minimum: int = 1, *, length: int | None = None,
           hint: str = "") -> tuple[int, ...]:
    """``values`` as a tuple of Python ints, each checked by ``count(value, f"{name}[{i}]",
    minimum)``. A ``TypeError`` naming ``name`` (and ``hint``, when given) unless an iterable
    other than a string (a bare int too: ``hidden_dims=2`` may mean two layers), a
    ``ValueError`` unless of ``length`` items when that is given."""
    bound = "> 0" if minimum == 1 else f">= {minimum}"
    expected = f"a sequence of {'' if length is None else f'{length} '}ints {bound}"
    expected += f", {hint}" if hint else ""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be {expected}, got {values!r}")
    items = tuple(values)
    if length is not None and len(items) != length:
        raise ValueError(f"{name} must be {expected}, got {values!r}")
    return tuple(count(value, f"{name}[{i}]", minimum) for i, value in enumerate(items))


def pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """``3 -> (3, 3)``; a pair is checked and returned as a tuple of Python ints. A
    ``ValueError`` for an int outside int64 (:func:`integer`), naming the entry of a pair."""
    if is_integer(value):
        number = integer(value, name)
        return number, number
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(map(is_integer, value)):
        return integer(value[0], f"{name}[0]"), integer(value[1], f"{name}[1]")
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def memory_format(images: Tensor) -> torch.memory_format:
    """The layout a conv's result and input gradient take from its (N, C, H, W) input, as in
    ``torch.nn.functional.conv2d``: ``torch.channels_last`` for images stored channels-last,
    ``torch.contiguous_format`` otherwise, and for images that are both (C = 1, H = W = 1)."""
    if images.is_contiguous():
        return torch.contiguous_format
    try:
        channels_last = images.is_contiguous(memory_format=torch.channels_last)
    except RuntimeError:  # torch.func.vmap's batched tensors answer for the default only
        return torch.contiguous_format
    return torch.channels_last if channels_last else torch.contiguous_format


def conv_memory_format(input: Tensor, weight: Tensor) -> torch.memory_format:
    """The layout of a conv's result and input gradient, as ``torch.nn.functional.conv2d``
    picks it on the CPU: channels-last when the input (N, C, H, W) or the weight
    (Cout, Cin/groups, kh, kw) is stored channels-last."""
    if memory_format(input) == torch.channels_last:
        return torch.channels_last
    return memory_format(weight)


def finite_float(value: object, name: str, *, positive: bool = False,
                 nonnegative: bool = False) -> float:
    """``float(value)``, refused with an error naming ``name`` unless finite (and > 0 with
    ``positive``, >= 0 with ``nonnegative``): a NaN scale would pass ``value <= 0`` checks
    and pool silent zeros. A bool is no number here (``True`` would be taken as 1.0): a
    ``TypeError``."""
    expected = "a finite number" + (" > 0" if positive else " >= 0" if nonnegative else "")
    if is_bool(value) or (isinstance(value, Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{name} must be {expected}, not a bool, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be {expected}, got {value!r}") from None
    # comparisons, not math.isfinite: torch.compile(dynamic=True) traces floats symbolically
    if (not -math.inf < number < math.inf or (positive and not number > 0)
            or (nonnegative and not number >= 0)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def rois_to_tensor(rois: Tensor | list[Tensor] | tuple[Tensor, ...]) -> Tensor:
    """RoIs as ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]``.

    Accepts that layout directly or, like torchvision, a list of N per-image ``(Ki, 4)``
    box tensors whose list position is the batch index, on one device; their dtypes are
    promoted as ``torch.cat`` promotes them (float16 and float64 boxes give float64 rows).
    Only shapes and devices are checked here (trace-friendly); ``check_rois_values`` checks
    the numbers.
    """
    if isinstance(rois, Tensor):
        if rois.dim() != 2 or rois.shape[1] != 5:
            raise ValueError(
                f"rois must have shape (K, 5) [batch_index, x1, y1, x2, y2], "
                f"got {tuple(rois.shape)}"
            )
        return rois
    if not isinstance(rois, (list, tuple)):
        raise TypeError(
            f"rois must be a Tensor (K, 5) or a list of (Ki, 4) Tensors, got {type(rois).__name__}"
        )
    if len(rois) == 0:
        raise ValueError("rois is an empty list: give one (Ki, 4) Tensor per image")
    for i, boxes in enumerate(rois):
        if not isinstance(boxes, Tensor):
            raise TypeError(f"rois[{i}] must be a Tensor, got {type(boxes).__name__}")
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(
                f"rois[{i}] must have shape (Ki, 4) [x1, y1, x2, y2], got {tuple(boxes.shape)}"
            )
        if boxes.device != rois[0].device:
            raise RuntimeError(f"rois[{i}] is on {boxes.device} but rois[0] is on "
                               f"{rois[0].device}; all boxes must be on one device")
    boxes = torch.cat(list(rois), dim=0)  # promotes: a cast to rois[0]'s dtype lost digits
    index = torch.cat([torch.full_like(b[:, :1], i, dtype=boxes.dtype, device=boxes.device)
                       for i, b in enumerate(rois)], dim=0)
    return torch.cat([index, boxes], dim=1)
