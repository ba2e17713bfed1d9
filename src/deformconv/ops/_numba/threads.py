"""How the Numba kernels use threads: small calls on one, task chunks on torch's OpenMP
team (else on Python threads).

Waking threads for a parallel loop costs microseconds on an idle machine but can take 10+
ms on a busy one, far more than a small call computes.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

# Inner-loop iterations (sample × channel) below which a call runs serially: so little work
# costs less on one thread than waking the others (benchmarks/README.md).
SERIAL_WORK = 1 << 18


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


# GNU OpenMP's entry point for a parallel region (Intel's and LLVM's runtimes export it too):
# GOMP_parallel(body, data, threads, flags) runs body(data) on each thread of the calling
# thread's team, the caller included, and returns when all are done.
_TEAM_BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def openmp_libraries(torch_lib: Path) -> list[str]:
    """Where torch's OpenMP runtime may live: the ones its wheel ships in ``torch_lib``
    (GNU, Intel or LLVM's; auditwheel-hashed names like ``libgomp-a34b3233.so.1`` in some
    releases), then the sonames a system or conda torch loads."""
    shipped = [str(path) for pattern in ("libgomp*.so*", "libiomp5*", "libomp*")
               for path in sorted(torch_lib.glob(pattern))]
    return [*shipped, "libgomp.so.1", "libiomp5.so"]


def _openmp_parallel() -> Callable[..., None] | None:
    """``GOMP_parallel`` of the OpenMP runtime torch has loaded (LLVM's and Intel's export
    it too), or None (torch without OpenMP, or a platform without ``RTLD_NOLOAD``)."""
    if not hasattr(os, "RTLD_NOLOAD"):
        return None
    for name in openmp_libraries(Path(torch.__file__).parent / "lib"):
        try:  # only a runtime already in the process: never load a second one
            function = ctypes.CDLL(name, mode=os.RTLD_NOLOAD).GOMP_parallel
        except (OSError, AttributeError):
            continue
        function.argtypes = [_TEAM_BODY, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        function.restype = None
        return function
    return None


class _TeamJob:
    """One ``run_on_team`` call: chunks ``0 .. chunks-1`` of ``call``, handed out in order
    to whichever team thread asks next."""

    def __init__(self, call: Callable[[int], None], chunks: int) -> None:
        self.call = call
        self.chunks = chunks
        self.next_chunk = itertools.count()  # next() is atomic under the GIL
        self.error: BaseException | None = None


_team_jobs: dict[int, _TeamJob] = {}
_team_job_ids = itertools.count(1)


@_TEAM_BODY
def _team_body(job_id: int) -> None:
    """What each team thread runs: chunks until none is left (or one failed). The kernels
    release the GIL, so the threads only take it to start each chunk."""
    job = _team_jobs[job_id]
    while job.error is None:
        chunk = next(job.next_chunk)
        if chunk >= job.chunks:
            return
        try:
            job.call(chunk)
        except BaseException as error:  # re-raised by run_on_team in the caller
            job.error = error


_openmp_team = _openmp_parallel()


def _forget_threads_in_child() -> None:
    """A forked child has none of its parent's threads: a new pool of Python threads, and
    no team (GNU OpenMP would wait for the parent's team threads forever)."""
    global _openmp_team
    _openmp_team = None
    _workers.forget()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_forget_threads_in_child)


def run_on_team(call: Callable[[int], None], chunks: int) -> bool:
    """Run ``call(0) .. call(chunks-1)`` on ``chunks`` threads of torch's OpenMP team;
    False (nothing run) where that runtime is not available.

    After each op torch's OpenMP threads spin for milliseconds before they sleep, on the
    very cores Python threads would need: a kernel's chunks on Python threads right after
    a torch op took 1.5-1.8× as long as on the team (benchmarks/README.md). On the team
    the spinning threads take the chunks at once. A failed chunk's exception is raised
    here once every thread is done.
    """
    if _openmp_team is None:
        return False
    job = _TeamJob(call, chunks)
    job_id = next(_team_job_ids)
    _team_jobs[job_id] = job
    try:
        _openmp_team(_team_body, job_id, chunks, 0)  # ctypes releases the GIL meanwhile
    finally:
        del _team_jobs[job_id]
    if job.error is not None:
        raise job.error
    return True


def task_threads(work: int) -> int:
    """Threads ``run_tasks`` uses for ``work`` inner iterations: torch's intra-op count
    (``torch.set_num_threads``, so one setting governs torch's ops and the kernels), or one
    below ``SERIAL_WORK``."""
    return torch.get_num_threads() if work >= SERIAL_WORK else 1


def run_tasks(kernel: Callable[..., None], tasks: int, work: int, *args: object,
              scratch: Callable[[], tuple[object, ...]] | None = None) -> None:
    """``kernel(*args, *scratch(), first, last)`` over ``range(tasks)`` cut into one contiguous
    chunk per thread (``task_threads``), ``work`` inner iterations in all; ``scratch``
    (optional) makes each chunk's own buffers.

    The kernels are serial ``nogil`` functions (a serial kernel compiles in half the time of
    a ``parallel=True`` one). Their chunks run on torch's OpenMP team (``run_on_team``) or,
    without one, on Python threads (the caller runs one), which block when idle instead of
    spinning. Calls with less than ``SERIAL_WORK`` run on the calling thread alone.
    """
    chunks = min(tasks, task_threads(work))

    def call(first: int, last: int) -> None:
        kernel(*args, *(scratch() if scratch else ()), first, last)

    if chunks <= 1:
        call(0, tasks)
        return
    bounds = [i * tasks // chunks for i in range(chunks + 1)]
    if run_on_team(lambda chunk: call(bounds[chunk], bounds[chunk + 1]), chunks):
        return
    pool = _workers.get(chunks - 1)
    futures = [pool.submit(call, bounds[i], bounds[i + 1]) for i in range(1, chunks)]
    try:
        call(bounds[0], bounds[1])
    finally:
        for future in futures:
            future.result()
