"""The Numba kernels' chunks on torch's OpenMP team (``ops._numba.threads.run_on_team``)."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from deformconv.ops import deform_conv2d
from deformconv.ops._numba import threads as threads_module

needs_team = pytest.mark.skipif(
    threads_module._openmp_team is None, reason="torch runs without an OpenMP runtime here")


@needs_team
@pytest.mark.parametrize("chunks", [2, 3, 7])
def test_every_chunk_runs_once(chunks: int) -> None:
    done: list[int] = []
    assert threads_module.run_on_team(done.append, chunks)  # list.append is atomic
    assert sorted(done) == list(range(chunks))
    assert threads_module._team_jobs == {}


@needs_team
def test_chunks_run_at_once_on_different_threads() -> None:
    """Each chunk waits for the other: this returns only if two threads run them."""
    barrier = threading.Barrier(2, timeout=30)
    threads: set[int] = set()

    def call(chunk: int) -> None:
        threads.add(threading.get_ident())
        barrier.wait()

    assert threads_module.run_on_team(call, 2)
    assert len(threads) == 2


@needs_team
def test_a_failed_chunk_raises_in_the_caller_and_the_team_runs_again() -> None:
    def call(chunk: int) -> None:
        if chunk == 1:
            raise ValueError(f"chunk {chunk} failed")

    with pytest.raises(ValueError, match="chunk 1 failed"):
        threads_module.run_on_team(call, 2)
    assert threads_module._team_jobs == {}
    done: list[int] = []
    assert threads_module.run_on_team(done.append, 2)
    assert sorted(done) == [0, 1]


def test_without_openmp_nothing_runs_and_run_tasks_uses_python_threads(monkeypatch) -> None:
    monkeypatch.setattr(threads_module, "_openmp_team", None)
    assert not threads_module.run_on_team(lambda chunk: pytest.fail("ran"), 2)
    monkeypatch.setattr(threads_module, "task_threads", lambda work: 2)
    ranges: list[tuple[int, int]] = []
    threads_module.run_tasks(lambda first, last: ranges.append((first, last)), 5, 0)
    assert sorted(ranges) == [(0, 2), (2, 5)]


@pytest.fixture
def two_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kernel call in two chunks (``SERIAL_WORK`` 0, two threads), whatever torch's
    thread count: also in a forked child that sets it to 1."""
    monkeypatch.setattr(threads_module, "SERIAL_WORK", 0)
    monkeypatch.setattr(threads_module, "task_threads", lambda work: 2)


@pytest.mark.usefixtures("two_chunks")
def test_team_and_python_threads_give_the_same_gradients(monkeypatch) -> None:
    """The team and the Python threads give bit for bit the same forward and gradients."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 9, 11, generator=g)
    weight = torch.randn(8, 8, 3, 3, generator=g)
    offset = torch.randn(3, 18, 9, 11, generator=g) * 2
    results = []
    for team in (threads_module._openmp_team, None):
        monkeypatch.setattr(threads_module, "_openmp_team", team)
        inputs = [t.clone().requires_grad_() for t in (x, offset, weight)]
        out = deform_conv2d(inputs[0], inputs[1], inputs[2], padding=1)
        out.backward(torch.ones_like(out))
        results.append([out.detach(), *(t.grad for t in inputs)])
    for team_result, python_result in zip(*results, strict=True):
        assert torch.equal(team_result, python_result)


def _chunked_forward_in_child(queue, tensors) -> None:
    torch.set_num_threads(1)  # as DataLoader workers do: torch's own ops run serially
    queue.put(deform_conv2d(*tensors, padding=1).numpy())  # by value: the child exits


@needs_team
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
# Python 3.12+ warns on fork in a process with threads (the team's): that is the point here.
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
@pytest.mark.usefixtures("two_chunks")
def test_a_forked_child_runs_chunks_after_the_parent_used_the_team() -> None:
    """GNU OpenMP in a forked child waits forever for the parent's team threads: the
    child's chunks must go to Python threads instead."""
    g = torch.Generator().manual_seed(0)
    tensors = (torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 18, 6, 6, generator=g),
               torch.randn(4, 4, 3, 3, generator=g))
    expected = deform_conv2d(*tensors, padding=1)  # the parent's team has run
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_chunked_forward_in_child, args=(queue, tensors))
    child.start()
    try:
        result = queue.get(timeout=60)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    assert torch.equal(torch.from_numpy(result), expected)


def test_the_ops_import_and_run_where_the_os_has_no_fork() -> None:
    """Windows has no ``os.register_at_fork``: the threads module must not need it."""
    script = (
        "import os\n"
        "import torch\n"  # torch registers its own fork handlers where it finds no win32
        "del os.register_at_fork, os.fork\n"
        "from deformconv.ops import deform_conv2d\n"
        "from deformconv.ops._numba import threads\n"
        "threads.SERIAL_WORK = 0\n"
        "x = torch.randn(2, 4, 6, 6)\n"
        "out = deform_conv2d(x, torch.zeros(2, 18, 6, 6), torch.randn(4, 4, 3, 3), padding=1)\n"
        "print(tuple(out.shape))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "(2, 4, 6, 6)"


@pytest.mark.parametrize("threads", [1, 3])
def test_torchs_thread_count_sets_the_chunks(threads: int) -> None:
    """``torch.set_num_threads`` governs the kernels as it does torch's ops: a process
    that asks for one thread (a DataLoader worker, one of several ranks) gets one."""
    torch.set_num_threads(threads)  # conftest restores it
    chunks: list[tuple[int, int]] = []

    def kernel(first: int, last: int) -> None:
        chunks.append((first, last))  # list.append is atomic

    threads_module.run_tasks(kernel, 6, threads_module.SERIAL_WORK)
    assert sorted(chunks) == {1: [(0, 6)], 3: [(0, 2), (2, 4), (4, 6)]}[threads]
    chunks.clear()
    threads_module.run_tasks(kernel, 6, threads_module.SERIAL_WORK - 1)  # too little work
    assert chunks == [(0, 6)]


def test_openmp_libraries_lists_torchs_own_first_hashed_names_included(tmp_path) -> None:
    """Some torch wheels ship their runtime under an auditwheel-hashed name, which the
    plain soname would not find."""
    for name in ("libgomp-a34b3233.so.1", "libomp.dylib", "libtorch_cpu.so"):
        (tmp_path / name).touch()
    assert threads_module.openmp_libraries(tmp_path) == [
        str(tmp_path / "libgomp-a34b3233.so.1"), str(tmp_path / "libomp.dylib"),
        "libgomp.so.1", "libiomp5.so"]


@needs_team
def test_the_team_runs_on_the_runtime_torch_uses() -> None:
    """Our ``GOMP_parallel`` is the one libtorch_cpu resolves (looking a symbol up through
    a library's handle searches its dependencies), not one of a second runtime."""
    libtorch = sorted((Path(torch.__file__).parent / "lib").glob("libtorch_cpu.*"))
    if not libtorch:
        pytest.skip("libtorch_cpu is not in torch/lib here")
    torchs = ctypes.CDLL(str(libtorch[0]), mode=os.RTLD_NOLOAD).GOMP_parallel
    assert (ctypes.cast(threads_module._openmp_team, ctypes.c_void_p).value
            == ctypes.cast(torchs, ctypes.c_void_p).value)
