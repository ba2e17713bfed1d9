"""Input checks of the registered ops and their dtype policy (which dtypes, computed in what)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float64)
UPCAST_DTYPES = (torch.float16, torch.bfloat16)
AUTOCAST_DTYPES = (*UPCAST_DTYPES, torch.float32)  # what autocast casts to one dtype

# Samples per RoI bin beyond which sampling is refused: a bin of 8192² feature cells sampled
# adaptively, or 8192 samples per bin side, is beyond any feature map, so only absurd
# coordinates, scales or counts get there (the kernels would run for hours, as
# torchvision's would).
MAX_SAMPLES_PER_BIN = 2**26


def check_tensor(name: str, tensor: object, ndim: int | None = None) -> Tensor:
    """Raise a clear error unless ``tensor`` is a floating tensor with ``ndim`` dims."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if ndim is not None and tensor.dim() != ndim:
        raise ValueError(
            f"{name} must be {ndim}-D, got {tensor.dim()}-D tensor of shape {tuple(tensor.shape)}"
        )
    if tensor.dtype not in FLOAT_DTYPES + UPCAST_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {tensor.dtype}"
        )
    return tensor


def check_same_dtype_device(
    reference_name: str, reference: Tensor, **others: Tensor | None
) -> None:
    """All tensors in ``others`` must share ``reference``'s dtype and device."""
    for name, tensor in others.items():
        if tensor is None:
            continue
        if tensor.device != reference.device:
            raise RuntimeError(
                f"{name} is on {tensor.device} but {reference_name} is on {reference.device}; "
                "all tensors must be on the same device"
            )
        if tensor.dtype != reference.dtype:
            raise TypeError(
                f"{name} has dtype {tensor.dtype} but {reference_name} has {reference.dtype}; "
                "all tensors must share one dtype"
            )


def check_no_forward_tangent(op: str, names: Sequence[str], args: Sequence[object]) -> None:
    """Refuse arguments (``args``, called ``names``) that carry a forward-mode tangent
    (``torch.func.jvp``, ``torch.autograd.forward_ad``): the ops have reverse-mode formulas
    only, and torch would drop the tangent without a word (a zero or missing result tangent).
    """
    # Outside a dual level (every call but forward AD) this is one read of an int; both
    # forward_ad.dual_level and torch.func.jvp (and jacfwd) enter one.
    if forward_ad._current_level < 0:
        return
    for name, arg in zip(names, args, strict=False):
        if isinstance(arg, Tensor) and forward_ad.unpack_dual(arg).tangent is not None:
            raise NotImplementedError(
                f"forward-mode AD (torch.func.jvp, jacfwd / torch.autograd.forward_ad) is not "
                f"supported by {op}: {name} carries a forward tangent; use reverse mode "
                "through torch.autograd (backward, torch.autograd.grad)"
            )


class NaNOffsetError(ValueError):
    """An op was given NaN offsets (sample positions)."""


def check_no_nan(name: str, tensor: Tensor) -> None:
    """NaN positions make sampling meaningless: refuse them instead of returning garbage."""
    # amax() propagates NaN: one reduction, without isnan()'s bool temporary of offset's
    # size, and 2-3x faster than max() on the CPU.
    if tensor.numel() and bool(torch.isnan(tensor.amax())):
        count = int(torch.isnan(tensor).sum())
        raise NaNOffsetError(f"{name} contains {count} NaN value(s); sample positions must "
                             "not be NaN")


def check_samples_per_side(value: int, name: str) -> None:
    """Refuse ``value`` samples per bin side (``value``² per bin) beyond ``MAX_SAMPLES_PER_BIN``."""
    if value * value > MAX_SAMPLES_PER_BIN:
        raise ValueError(f"{name} must be at most {math.isqrt(MAX_SAMPLES_PER_BIN)} "
                         f"({MAX_SAMPLES_PER_BIN} samples per bin), got {value}")


def check_rois_values(rois: Tensor, batch: int) -> None:
    """Refuse non-finite coordinates and batch indices that are not integers in ``[0, batch)``.

    Data-dependent, so the ops call it inside their registered kernels (not while tracing).
    """
    if rois.numel() == 0:
        return
    bad = ~torch.isfinite(rois)
    if bool(bad.any()):
        row = int(bad.any(dim=1).nonzero()[0, 0])
        raise ValueError(
            f"rois must be finite, got NaN or inf in row {row}: {rois[row].tolist()}"
        )
    index = rois[:, 0]
    fractional = index != torch.round(index)
    if bool(fractional.any()):
        row = int(fractional.nonzero()[0, 0])
        raise ValueError(
            f"rois[:, 0] (batch index) must hold integers, got {index[row].item()} in row {row}"
        )
    outside = (index < 0) | (index >= batch)
    if bool(outside.any()):
        row = int(outside.nonzero()[0, 0])
        raise ValueError(
            f"rois[:, 0] (batch index) must be in [0, {batch - 1}] for an input of batch size "
            f"{batch}, got {int(index[row].item())} in row {row}"
        )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in (and RoI ops take RoIs in) for ``dtype`` data."""
    return torch.float32 if dtype in UPCAST_DTYPES else dtype


def check_compute_dtype(input: Tensor, rois: Tensor) -> None:
    """A registered RoI op takes RoIs in the input's compute dtype (``compute_dtype``).

    Coordinates in float16/bfloat16 would be off by pixels; the public functions convert
    them, this guards direct calls of ``torch.ops.deformconv.*``.
    """
    expected = compute_dtype(input.dtype)
    if rois.dtype != expected:
        raise TypeError(
            f"rois has dtype {rois.dtype} but must be {expected} for input of {input.dtype}; "
            "call the public function, which converts them"
        )


def autocast_on(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``"cpu"``, ``"cuda"``, ...)."""
    return (torch.amp.is_autocast_available(device_type)
            and torch.is_autocast_enabled(device_type))


def float32_under_autocast(device_type: str, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Cast ``tensors`` to float32 when autocast is on for ``device_type``, else return them;
    float64 stays float64, as autocast leaves it (``torch.library.register_autocast`` too).

    Under autocast an offset branch (a conv) yields bf16/fp16 while the features stay
    float32; sampling positions need full precision, so these ops run in float32 there.
    """
    if not autocast_on(device_type):
        return tensors
    return tuple(t.float() if isinstance(t, Tensor) and t.dtype in AUTOCAST_DTYPES else t
                 for t in tensors)
