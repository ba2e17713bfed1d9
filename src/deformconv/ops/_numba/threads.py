"""Run small kernel calls on one thread.

Waking Numba's thread pool for a parallel loop costs microseconds on an idle machine but
can take 10+ ms on a busy one, far more than a small RoI pooling call computes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numba

# Inner-loop iterations (sample × channel) below which a call runs serially: about 0.5 ms.
SERIAL_WORK = 1 << 18


@contextmanager
def threads_for(work: int) -> Iterator[None]:
    """Use all Numba threads for ``work >= SERIAL_WORK`` inner iterations, else one."""
    if work >= SERIAL_WORK:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)
