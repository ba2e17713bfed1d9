"""``numba.njit`` for the serial Numba kernels, with their array arguments ``noalias``.

Without it LLVM cannot know that a kernel's output (the columns, an input gradient) and
its inputs are different buffers, so it guards every vectorised channel loop with run-time
overlap checks and a scalar fallback: per sample, a few dozen instructions, about a tenth
of the sampling kernel's time at 32 channels. Numba's ``noalias`` compiler flag (the one
its parallel ``gufunc`` kernels get) marks every pointer argument of the compiled
function, each array's data among them, LLVM ``noalias``; the checks go. Sampling kernel
0.70-0.96×, backward kernel 0.80-1.09× (median 0.94) the time, results bit for bit the
same (benchmarks/README.md).

The contract this puts on callers: no array a kernel writes may share memory with another
array argument of the same call. Their callers pass workspace slots, fresh tensors and
the read-only inputs, so none does.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
from numba.core.compiler import Compiler


class _NoAliasCompiler(Compiler):
    """Numba's default compiler with the ``noalias`` flag set for every function it
    compiles (helpers are inlined into the kernel, so the kernel is that function)."""

    def __init__(self, typingctx, targetctx, library, args, return_type, flags, locals):
        flags = flags.copy()
        flags.noalias = True
        super().__init__(typingctx, targetctx, library, args, return_type, flags, locals)


def kernel(fastmath: set[str]) -> Callable[[Callable], Callable]:
    """The decorator of a serial, cached, ``nogil`` kernel whose arrays never overlap."""
    return numba.njit(cache=True, nogil=True, fastmath=fastmath, pipeline_class=_NoAliasCompiler)
