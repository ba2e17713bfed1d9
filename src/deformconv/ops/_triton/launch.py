"""Launch helpers of the Triton backend: dtypes, device guard, block sizes, limits, and
the grid every kernel is launched on (``flat_grid`` on the host, ``program_ids`` in the
kernel)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._dispatch import triton_interpreted

INT32_MAX = 2**31 - 1

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def dot_dtype(dtype: torch.dtype):
    """Operand dtype of ``tl.dot`` for data of ``dtype``.

    The interpreter's ``tl.dot`` does not handle bfloat16 operands, so there they are
    multiplied in float32 (same inputs, exact products, float32 accumulation as on GPUs).
    """
    if dtype == torch.bfloat16 and triton_interpreted():
        return tl.float32
    return _TL_DTYPES[dtype]


def input_precision() -> str:
    """``tl.dot`` precision of float32 operands: TF32 only where torch allows it for matmuls
    (``torch.backends.cuda.matmul.allow_tf32``, off by default), else IEEE float32."""
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def block(size: int, low: int, high: int) -> int:
    """The power of two covering ``size``, kept within ``[low, high]``."""
    return max(low, min(high, triton.next_power_of_2(max(1, size))))


def flat_grid(grid: tuple[int, ...], what: str) -> tuple[int]:
    """The programs of ``grid`` (at most 3 axes) all on axis 0, which holds up to
    ``INT32_MAX`` (axes 1 and 2 only 65535: channel, kernel-point or bin counts can pass
    that); the kernel recovers its indices with ``program_ids``."""
    total = math.prod(grid)
    if total > INT32_MAX:
        raise ValueError(f"{what}: launch grid {grid} has {total} programs, more than CUDA's "
                         f"{INT32_MAX}")
    return (total,)


@triton.jit
def program_ids(size0, size1):
    """This program's indices ``(i0, i1, i2)`` in the grid ``(size0, size1, size2)`` that
    ``flat_grid`` flattened. ``i0`` varies fastest, so programs run in the same order as
    on the 3-axis grid."""
    pid = tl.program_id(0)
    rest = pid // size0
    return pid % size0, rest % size1, rest // size1


def check_index_range(count: int, what: str) -> None:
    """Kernels index pixels and RoIs with int32 (element offsets are int64)."""
    if count > INT32_MAX:
        raise ValueError(f"{what} = {count} exceeds the Triton kernels' int32 index range")


@contextlib.contextmanager
def on_device(tensor: Tensor) -> Iterator[None]:
    """Launch on ``tensor``'s GPU (Triton launches on the current device)."""
    if tensor.device.type == "cuda":
        with torch.cuda.device(tensor.device):
            yield
    else:
        yield


def programs_per_wave(tensor: Tensor) -> int:
    """About how many programs keep the device busy (1 in the interpreter)."""
    if tensor.device.type != "cuda":
        return 1
    return 4 * torch.cuda.get_device_properties(tensor.device).multi_processor_count


def channels_last(input: Tensor) -> Tensor:
    """``input`` (N, C, H, W) stored channels-last (a no-op when it already is)."""
    return input.contiguous(memory_format=torch.channels_last)
