"""The dispatch point: which backend runs where, DEFORMCONV_BACKEND, and dtype handling."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from deformconv.ops import _dispatch, deform_conv2d

CPU, CUDA, META = torch.device("cpu"), torch.device("cuda"), torch.device("meta")


@pytest.fixture
def backend_env(monkeypatch: pytest.MonkeyPatch):
    def set_backend(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(_dispatch.BACKEND_ENV, raising=False)
        else:
            monkeypatch.setenv(_dispatch.BACKEND_ENV, value)

    return set_backend


@pytest.mark.parametrize("value", [None, "auto", " AUTO ", ""])
def test_auto_picks_by_device(backend_env, monkeypatch, value):
    backend_env(value)
    monkeypatch.setattr(_dispatch, "triton_available", lambda: True)
    assert _dispatch.select_backend(CPU, torch.float32) == "numba"
    assert _dispatch.select_backend(CUDA, torch.float32) == "triton"
    assert _dispatch.select_backend(CUDA, torch.bfloat16) == "triton"
    assert _dispatch.select_backend(CUDA, torch.float64) == "torch"  # float64 never on Triton
    assert _dispatch.select_backend(META, torch.float32) == "torch"
    monkeypatch.setattr(_dispatch, "triton_available", lambda: False)
    assert _dispatch.select_backend(CUDA, torch.float32) == "torch"


def test_forced_backends(backend_env, monkeypatch):
    monkeypatch.setattr(_dispatch, "triton_available", lambda: True)
    backend_env("torch")
    assert _dispatch.select_backend(CPU, torch.float32) == "torch"
    assert _dispatch.select_backend(CUDA, torch.float32) == "torch"
    backend_env("numba")
    assert _dispatch.select_backend(CPU, torch.float16) == "numba"
    with pytest.raises(RuntimeError, match="DEFORMCONV_BACKEND=numba runs on CPU tensors only"):
        _dispatch.select_backend(CUDA, torch.float32)
    backend_env("triton")
    assert _dispatch.select_backend(CUDA, torch.float16) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_dispatch, "_triton_imported_compiled", lambda: False)
    assert _dispatch.select_backend(CPU, torch.float32) == "triton"
    assert _dispatch.select_backend(CPU, torch.float64) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs TRITON_INTERPRET=1"):
        _dispatch.select_backend(CPU, torch.float32)
    monkeypatch.setattr(_dispatch, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="triton package is not installed"):
        _dispatch.select_backend(CUDA, torch.float32)


@pytest.mark.skipif(not _dispatch.triton_available(), reason="triton is not installed")
def test_interpreter_asked_for_after_triton_was_imported_is_named() -> None:
    """TRITON_INTERPRET=1 set after triton's import (torchvision imports it) used to fail
    inside the interpreter: "Cannot call @triton.jit'd outside of the scope of a kernel"."""
    code = ("import os, torch, triton\n"
            "os.environ['TRITON_INTERPRET'] = '1'\n"
            "os.environ['DEFORMCONV_BACKEND'] = 'triton'\n"
            "from deformconv.ops import deform_conv2d\n"
            "deform_conv2d(torch.ones(1, 1, 3, 3), torch.zeros(1, 18, 3, 3),"
            " torch.ones(1, 1, 3, 3), padding=1)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 1
    assert ("RuntimeError: DEFORMCONV_BACKEND=triton on CPU tensors runs Triton's interpreter, "
            "but triton was imported before TRITON_INTERPRET=1 was set") in done.stderr


def test_bad_value_names_the_variable(backend_env):
    backend_env("cuda")
    x, w, off = torch.randn(1, 2, 4, 4), torch.randn(2, 2, 3, 3), torch.zeros(1, 18, 2, 2)
    with pytest.raises(ValueError, match=r"DEFORMCONV_BACKEND must be one of auto, numba, "
                                         r"triton, torch; got 'cuda'"):
        deform_conv2d(x, off, w)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_backend_computes_half_in_float32(backend_env, dtype):
    """Numba and torch get float32 copies of half inputs; results come back in the dtype."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 4, 5, 5, generator=gen), torch.randn(2, 2, 3, 3, generator=gen)
    off = torch.randn(1, 36, 3, 3, generator=gen)
    leaves = [t.to(dtype).requires_grad_() for t in (x, off, w)]
    backend_env("torch")
    out = deform_conv2d(*leaves)
    grads = torch.autograd.grad(out.float().sum(), leaves)
    backend_env("numba")
    expected = deform_conv2d(*(t.detach().float() for t in leaves))
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    torch.testing.assert_close(out, expected.to(dtype))


def test_the_ops_import_neither_the_reference_nor_dynamo():
    """Running every op forward and backward on every backend the CPU offers never imports
    ``ops/reference.py`` (the tests' oracle only), and the default backend does not import
    ``torch._dynamo`` (1-2 s of start-up that ``torch.library.custom_op``'s kernel wrapper
    would cost every process), nor does importing the ops import triton (0.2 s; registering
    FLOP formulas did, through ``torch.utils.flop_counter``)."""
    script = """
import os, sys, torch
from deformconv.ops import deform_conv2d, deform_roi_pool, deform_psroi_pool
print("triton" in sys.modules or "torch.utils.flop_counter" in sys.modules)
x = torch.randn(1, 4, 6, 6, requires_grad=True)
rois = torch.tensor([[0.0, 1, 1, 4, 4]])
for backend in ("numba", "torch"):
    os.environ["DEFORMCONV_BACKEND"] = backend
    y = deform_conv2d(x, torch.zeros(1, 18, 4, 4), torch.randn(2, 4, 3, 3))
    y = y.sum() + deform_roi_pool(x, rois, torch.zeros(1, 2, 2, 2), 2).sum()
    y = y + deform_psroi_pool(x, rois, None, spatial_scale=1.0, output_dim=1, group_size=2,
                              pooled_size=2).sum()
    y.backward()
    if backend == "numba":
        print("torch._dynamo" in sys.modules)
print("deformconv.ops.reference" in sys.modules)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["False", "False", "False"]


FIRST_NUMBA_CALLS = {
    "deform_conv2d": """
x = torch.randn(16, 64, 8, 8, requires_grad=True)
y = deform_conv2d(x, torch.zeros(16, 18, 8, 8), torch.randn(64, 64, 3, 3), padding=1)
y.sum().backward()
""",
    "deform_roi_pool": """
x = torch.randn(1, 64, 8, 8, requires_grad=True)
rois = torch.tensor([[0.0, 1, 1, 6, 6]]).repeat(64, 1)
deform_roi_pool(x, rois, torch.zeros(64, 2, 7, 7), 7).sum().backward()
""",
    "deform_psroi_pool": """
x = torch.randn(2, 8 * 49, 32, 32, requires_grad=True)
rois = torch.tensor([[0.0, 1, 1, 20, 20]]).repeat(256, 1)
deform_psroi_pool(x, rois, None, spatial_scale=1.0, output_dim=8, group_size=7,
                  pooled_size=7, sample_per_part=4).sum().backward()
""",
}


@pytest.mark.parametrize("first", sorted(FIRST_NUMBA_CALLS))
def test_numba_kernels_keep_torchs_thread_count(first):
    """The process's first kernel calls must not change ``torch.set_num_threads`` (Numba's
    threading layer, which did when started, shares the OpenMP runtime with torch)."""
    script = ("import torch\ntorch.set_num_threads(1)\n"
              "from deformconv.ops import deform_conv2d, deform_psroi_pool, deform_roi_pool\n"
              + FIRST_NUMBA_CALLS[first] + "print(torch.get_num_threads())\n")
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "1"


@pytest.mark.parametrize("value", ["64MB", "-5", "nan"])
def test_bad_workspace_size_names_the_variable(value: str) -> None:
    """It used to fail at the first op call with "could not convert string to float"."""
    code = ("import torch; from deformconv.ops import deform_conv2d\n"
            "deform_conv2d(torch.ones(1, 1, 3, 3), torch.zeros(1, 18, 3, 3),"
            " torch.ones(1, 1, 3, 3), padding=1)\n")
    env = {**os.environ, "DEFORMCONV_WORKSPACE_MB": value}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert (f"ValueError: DEFORMCONV_WORKSPACE_MB must be a number of MiB >= 0 (e.g. 32), "
            f"got '{value}'") in done.stderr


def test_alert_not_deterministic_raises_in_deterministic_mode(deterministic_mode):
    deterministic_mode(True)
    with pytest.raises(RuntimeError, match=r"deform_roi_pool backward on the triton backend"
                                           r".*DEFORMCONV_BACKEND=torch"):
        _dispatch.alert_not_deterministic("deform_roi_pool", "triton")


def test_alert_not_deterministic_warns_once_per_op_with_warn_only(deterministic_mode):
    deterministic_mode(True, warn_only=True)
    with pytest.warns(UserWarning, match="deform_conv2d backward on the triton") as record:
        for _ in range(3):
            _dispatch.alert_not_deterministic("deform_conv2d", "triton")
    assert len(record) == 1
    with pytest.warns(UserWarning, match="deform_psroi_pool backward"):
        _dispatch.alert_not_deterministic("deform_psroi_pool", "triton")


def test_alert_not_deterministic_is_silent_by_default(deterministic_mode, recwarn):
    deterministic_mode(False)
    _dispatch.alert_not_deterministic("deform_conv2d", "triton")
    assert not recwarn.list
