"""The one place that decides which backend runs an op: Numba, Triton or plain torch.

Every registered op calls ``run(op, kernel, args)``. The backend comes from the device of the
op's first tensor argument (``DEFAULT_BACKEND``: Numba on the CPU, Triton on CUDA, the
vectorised torch kernels anywhere else), unless the environment variable
``DEFORMCONV_BACKEND`` (``auto|numba|triton|torch``, read at each call) forces one.
``DEFORMCONV_BACKEND=triton`` on CPU tensors runs the Triton kernels in Triton's interpreter,
which needs ``TRITON_INTERPRET=1`` before the kernels are first imported (tests use this).

Numba and torch compute float16/bfloat16 in float32 (``run`` casts on the way in and out);
Triton computes them natively with float32 accumulation. float64 never runs on Triton: it
takes the torch kernels on CUDA.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ._checks import UPCAST_DTYPES

BACKEND_ENV = "DEFORMCONV_BACKEND"
BACKENDS = ("numba", "triton", "torch")
# Device type -> backend under ``auto``; device types not listed run the torch kernels.
DEFAULT_BACKEND = {"cpu": "numba", "cuda": "triton"}

# (op, backend) -> module with that op's ``forward`` and ``backward`` kernels, imported on
# first use (Triton's kernels decide at import time whether they are interpreted).
_KERNEL_MODULES = {
    (op, backend): f"deformconv.ops._{backend}.{module}"
    for op, module in (("deform_conv2d", "deform_conv"), ("deform_roi_pool", "deform_roi_pool"),
                       ("deform_psroi_pool", "deform_psroi_pool"))
    for backend in BACKENDS
}
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def requested_backend() -> str:
    """``DEFORMCONV_BACKEND`` checked: one of ``auto`` and ``BACKENDS``."""
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value != "auto" and value not in BACKENDS:
        raise ValueError(
            f"{BACKEND_ENV} must be one of auto, {', '.join(BACKENDS)}; got {value!r}"
        )
    return value


def triton_available() -> bool:
    """Whether the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _triton_imported_compiled() -> bool:
    """Whether triton was imported in compiled mode (TRITON_INTERPRET unset then): its
    standard-library functions are then not interpreted, and an interpreted kernel that
    calls one fails with a Triton-internal error."""
    standard = sys.modules.get("triton.language.standard")
    cdiv = getattr(standard, "cdiv", None)
    return cdiv is not None and type(cdiv).__name__ != "InterpretedFunction"


def select_backend(device: torch.device, dtype: torch.dtype) -> str:
    """The backend for tensors of ``device`` and ``dtype`` (see the module docstring)."""
    requested = requested_backend()
    if requested == "auto":
        backend = DEFAULT_BACKEND.get(device.type, "torch")
        if backend == "triton" and not triton_available():
            backend = "torch"
    else:
        backend = requested
        _check_forced(backend, device)
    if backend == "triton" and dtype not in _TRITON_DTYPES:
        backend = "torch"
    return backend


def _check_forced(backend: str, device: torch.device) -> None:
    if backend == "numba" and device.type != "cpu":
        raise RuntimeError(
            f"{BACKEND_ENV}=numba runs on CPU tensors only, got tensors on {device}; "
            "use auto, triton or torch"
        )
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(f"{BACKEND_ENV}=triton, but the triton package is not installed")
        if device.type == "cpu" and not triton_interpreted():
            raise RuntimeError(
                f"{BACKEND_ENV}=triton on CPU tensors runs Triton's interpreter, which needs "
                "TRITON_INTERPRET=1 set before the kernels are imported"
            )
        if device.type == "cpu" and _triton_imported_compiled():
            raise RuntimeError(
                f"{BACKEND_ENV}=triton on CPU tensors runs Triton's interpreter, but triton "
                "was imported before TRITON_INTERPRET=1 was set (torchvision and "
                "torch.compile import it), so its own functions are not interpreted; set "
                "TRITON_INTERPRET=1 before importing torch, e.g. in the shell"
            )
        if device.type not in ("cpu", "cuda"):
            raise RuntimeError(f"{BACKEND_ENV}=triton runs on CUDA tensors, got {device}")


# (op, backend) pairs whose non-determinism warning was given (warn_only: once per process)
_warned_not_deterministic: set[tuple[str, str]] = set()


def alert_not_deterministic(op: str, backend: str) -> None:
    """Alert as torch does for its own ops without a deterministic implementation, for a
    backward that adds its input gradient with float32 atomics (their order, and so the
    rounding, varies run to run): under ``torch.use_deterministic_algorithms(True)`` raise a
    RuntimeError; with ``warn_only=True`` warn, once per op and backend; else nothing."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = (
        f"{op} backward on the {backend} backend adds its input gradient with float32 "
        "atomics, so it is not deterministic, but torch.use_deterministic_algorithms(True) "
        f"is set; {BACKEND_ENV}=torch gives a deterministic backward (slower), or "
        "use_deterministic_algorithms(True, warn_only=True) accepts this one with a warning"
    )
    if not torch.is_deterministic_algorithms_warn_only_enabled():
        raise RuntimeError(message)
    if (op, backend) not in _warned_not_deterministic:
        _warned_not_deterministic.add((op, backend))
        warnings.warn(message, UserWarning, stacklevel=2)


def kernel(op: str, backend: str, name: str) -> Callable[..., Any]:
    """The ``name`` kernel (``forward`` or ``backward``) of ``op`` in ``backend``."""
    return getattr(importlib.import_module(_KERNEL_MODULES[op, backend]), name)


def run(op: str, name: str, args: Sequence[Any], in_compute_dtype: Sequence[int] = ()) -> Any:
    """Run kernel ``name`` of ``op`` on ``args`` with the backend of the first tensor.

    On Numba and torch, float16/bfloat16 tensors are computed in float32 and the results
    come back in the first tensor's dtype, except those at ``in_compute_dtype`` (of a tuple
    of results), which stay float32 (``_checks.compute_dtype``).
    """
    first = next(a for a in args if isinstance(a, Tensor))
    backend = select_backend(first.device, first.dtype)
    fn = kernel(op, backend, name)
    if backend == "triton" or first.dtype not in UPCAST_DTYPES:
        return fn(*args)
    upcast = [a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args]
    result = fn(*upcast)
    if isinstance(result, Tensor):
        return result.to(first.dtype)
    return type(result)(r if i in in_compute_dtype else r.to(first.dtype)
                        for i, r in enumerate(result))
