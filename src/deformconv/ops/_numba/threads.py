"""How the Numba kernels use threads: small calls on one, task chunks on Python threads.

Waking Numba's thread pool for a parallel loop costs microseconds on an idle machine but
can take 10+ ms on a busy one, far more than a small RoI pooling call computes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba
import torch

# Inner-loop iterations (sample × channel) below which a call runs serially: so little work
# costs less on one thread than waking the others (benchmarks/README.md).
SERIAL_WORK = 1 << 18


def numba_threads() -> int:
    """``numba.get_num_threads()``, keeping torch's intra-op thread count.

    The first call starts Numba's threading layer. Its OpenMP layer shares the OpenMP
    runtime with torch and sets the process's team size to Numba's count: after
    ``torch.set_num_threads(1)`` every torch op would then run on all cores, which on a
    busy machine makes a 20 µs op take milliseconds (OpenMP barriers wait for descheduled
    threads).
    """
    torch_threads = torch.get_num_threads()
    count = numba.get_num_threads()
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    return count


@contextmanager
def threads_for(work: int) -> Iterator[None]:
    """Use all Numba threads for ``work >= SERIAL_WORK`` inner iterations, else one."""
    previous = numba_threads()  # also before a parallel kernel starts the threading layer
    if work >= SERIAL_WORK:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


class _Workers:
    """A lazily started pool of Python threads for ``run_tasks``, rebuilt after a fork."""

    def __init__(self) -> None:
        self.pool: ThreadPoolExecutor | None = None
        self.size = 0
        self.lock = threading.Lock()

    def get(self, size: int) -> ThreadPoolExecutor:
        with self.lock:
            if self.pool is None or self.size < size:
                if self.pool is not None:
                    self.pool.shutdown(wait=False)
                self.pool = ThreadPoolExecutor(size, thread_name_prefix="deformconv")
                self.size = size
            return self.pool

    def forget(self) -> None:
        """In a forked child: the parent's threads do not exist there."""
        self.pool = None
        self.size = 0
        self.lock = threading.Lock()


_workers = _Workers()
os.register_at_fork(after_in_child=_workers.forget)


def task_threads(work: int) -> int:
    """Threads ``run_tasks`` uses for ``work`` inner iterations: all Numba threads, or one
    below ``SERIAL_WORK``."""
    return numba_threads() if work >= SERIAL_WORK else 1


def run_tasks(kernel: Callable[..., None], tasks: int, work: int, *args: object,
              scratch: Callable[[], tuple[object, ...]] | None = None) -> None:
    """``kernel(*args, *scratch(), first, last)`` over ``range(tasks)`` cut into one contiguous
    chunk per Numba thread (``numba.get_num_threads()``), ``work`` inner iterations in all;
    ``scratch`` (optional) makes each chunk's own buffers.

    The kernels are serial ``nogil`` functions and the chunks run on Python threads (the
    caller runs one): a serial kernel compiles in half the time of a ``parallel=True`` one,
    and idle Python threads block instead of spinning, so they neither compete with torch's
    OpenMP threads between calls nor stall when the machine is busy. Calls with less than
    ``SERIAL_WORK`` run on the calling thread alone.
    """
    chunks = min(tasks, task_threads(work))

    def call(first: int, last: int) -> None:
        kernel(*args, *(scratch() if scratch else ()), first, last)

    if chunks <= 1:
        call(0, tasks)
        return
    bounds = [i * tasks // chunks for i in range(chunks + 1)]
    pool = _workers.get(chunks - 1)
    futures = [pool.submit(call, bounds[i], bounds[i + 1]) for i in range(1, chunks)]
    try:
        call(bounds[0], bounds[1])
    finally:
        for future in futures:
            future.result()
