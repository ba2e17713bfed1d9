"""deform_conv2d calls that may crash a process, run by ``test_deform_conv.py`` in a child one.

    NUMBA_BOUNDSCHECK=1 NUMBA_CACHE_DIR=DIR python _isolated_calls.py

prints one line per call, ``name|returned|result`` or ``name|ErrorType|message``. The Numba
kernels have no bounds checks: an out-of-bounds write must not take the test session down,
and with ``NUMBA_BOUNDSCHECK=1`` (and a cache directory of its own, else Numba loads the
unchecked machine code) an out-of-bounds read raises instead of returning whatever memory
holds. Every kernel call runs in chunks on all threads (``SERIAL_WORK = 0``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from deformconv.ops import _workspace, deform_conv2d  # also registers torch.ops.deformconv
from deformconv.ops._numba import threads


def run(n: int, cin: int, cout: int, groups: int, offset_groups: int, size: tuple[int, int],
        offset: Callable[..., torch.Tensor], padding: int = 1, budget: int | None = None) -> str:
    """Forward and backward of a 3×3 layer in float64, offsets drawn by ``offset(*shape)``,
    with a workspace of ``budget`` bytes if given."""
    saved = _workspace.WORKSPACE_BYTES
    _workspace.WORKSPACE_BYTES = saved if budget is None else budget
    try:
        x = torch.randn(n, cin, *size, dtype=torch.float64, requires_grad=True)
        w = torch.randn(cout, cin // groups, 3, 3, dtype=torch.float64, requires_grad=True)
        hout, wout = size[0] + 2 * padding - 2, size[1] + 2 * padding - 2
        off = offset(n, 2 * offset_groups * 9, hout, wout).double().requires_grad_()
        mask = torch.rand(n, offset_groups * 9, hout, wout, dtype=torch.float64,
                          requires_grad=True)
        y = deform_conv2d(x, off, w, padding=padding, mask=mask)
        y.backward(torch.randn_like(y))
    finally:
        _workspace.WORKSPACE_BYTES = saved
    return "ok"


def border(*shape: int) -> torch.Tensor:
    """Offsets that sample all around and across the borders (integers and halves included)."""
    return torch.randint(-12, 13, shape) / 2


def constant(value: float) -> Callable[..., torch.Tensor]:
    return lambda *shape: torch.full(shape, value)


IN_BOUNDS_CALLS = {
    "borders": lambda: run(2, 4, 4, 2, 2, (5, 6), border, padding=2),
    "row-bands": lambda: run(2, 4, 4, 2, 2, (5, 6), border, budget=1),
    "many-channels": lambda: run(1, 36, 8, 4, 3, (4, 5), border),
    "depthwise": lambda: run(3, 4, 4, 4, 2, (5, 6), border, padding=2),
    "depthwise-bands": lambda: run(1, 6, 6, 6, 3, (5, 6), border, padding=2, budget=1),
    "depthwise-inf": lambda: run(2, 4, 4, 4, 2, (4, 4), constant(-math.inf)),
    "huge": lambda: run(1, 4, 4, 1, 1, (4, 4), constant(-1e6)),
    "inf": lambda: run(1, 4, 4, 1, 1, (4, 4), constant(math.inf)),
    "single-pixel": lambda: run(1, 2, 2, 1, 1, (1, 1), border, padding=1),
}


def direct_calls() -> dict[str, Callable[[], object]]:
    """Calls of the registered op that bypass the Python wrapper's checks."""
    op = torch.ops.deformconv.deform_conv2d.default
    dx, dw, doff = torch.randn(2, 4, 6, 6), torch.randn(4, 2, 3, 3), torch.randn(2, 18, 4, 4)
    geometry = (1, 1, 0, 0, 1, 1)
    nan_offset = doff.index_fill(0, torch.tensor([1]), float("nan"))
    return {
        "input-groups": lambda: op(torch.randn(2, 5, 6, 6), doff, dw, None, None, *geometry),
        "weight-channels": lambda: op(dx, doff, torch.randn(4, 3, 3, 3), None, None, *geometry),
        "mask-shape": lambda: op(dx, doff, dw, None, torch.rand(1, 1, 1, 1), *geometry),
        "offset-batch": lambda: op(dx, torch.randn(1, 18, 4, 4), dw, None, None, *geometry),
        "offset-channels": lambda: op(dx, torch.randn(2, 2, 4, 4), dw, None, None, *geometry),
        "stride-0": lambda: op(dx, doff, dw, None, None, 0, 1, 0, 0, 1, 1),
        "nan-offset": lambda: op(dx, nan_offset, dw, None, None, *geometry),
    }


def empty_image(x: torch.Tensor, padding: tuple[int, int], out_size: tuple[int, int]) -> float:
    """The largest ``|output - bias|`` or offset gradient of a layer over an image with
    H or W = 0 (inf where NaN)."""
    w, b = torch.randn(3, 2, 2, 2, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    # Offsets in (-0.95, -0.05): samples fall in the (-1, 0) band next to the empty axis.
    off = torch.rand(1, 8, *out_size, dtype=torch.float64) * 0.9 - 0.95
    leaves = [t.clone().requires_grad_() for t in (x, off, w, b)]
    y = deform_conv2d(leaves[0], leaves[1], leaves[2], leaves[3], padding=padding)
    y.sum().backward()
    return max((y - b.view(1, -1, 1, 1)).abs().max().nan_to_num(float("inf")).item(),
               leaves[1].grad.abs().max().nan_to_num(float("inf")).item())


EMPTY_IMAGE_CALLS = {
    "height-0": lambda: empty_image(torch.randn(1, 2, 0, 3, dtype=torch.float64), (2, 1), (3, 4)),
    "width-0": lambda: empty_image(torch.randn(1, 2, 3, 0, dtype=torch.float64), (1, 2), (4, 3)),
}


def main() -> None:
    threads.SERIAL_WORK = 0  # every kernel call in chunks on all threads
    calls = {**IN_BOUNDS_CALLS, **direct_calls(), **EMPTY_IMAGE_CALLS}
    for name, call in calls.items():
        try:
            result = call()
        except Exception as error:
            message = str(error).replace("\n", " ")
            print(f"{name}|{type(error).__name__}|{message}", flush=True)
        else:
            print(f"{name}|returned|{result}", flush=True)


if __name__ == "__main__":
    main()
