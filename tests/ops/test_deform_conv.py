"""Tests of ``deformconv.ops.deform_conv2d`` (docs/OPS.md, section deform_conv2d).

The oracle is ``deformconv.ops.reference.deform_conv2d`` differentiated by autograd in
float64. Both backends are checked against it: the Numba CPU kernels (through the public
op) and the device-agnostic torch fallback (called directly, and inside the registered op
as non-CPU devices run it), untiled and tiled. Then gradcheck, conv2d and torchvision
equivalence, edge cases, bad input, memory safety (bounds-checked kernels in a separate
interpreter), torch.library opcheck and torch.compile.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from deformconv.ops import _workspace, deform_conv2d, reference
from deformconv.ops._numba import deform_conv as numba_backend
from deformconv.ops._numba import deform_conv_depthwise as depthwise_backend
from deformconv.ops._numba import deform_conv_tiles as tiles_module
from deformconv.ops._numba import noalias as noalias_module
from deformconv.ops._numba import threads as threads_module
from deformconv.ops._torch import deform_conv as torch_backend

from .forward_ad_helpers import FORWARD_AD_APIS, tangent_of

# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One deform_conv2d configuration; ``out_size`` follows the Hout/Wout rule of docs/OPS.md."""

    n: int = 2
    cin: int = 4
    cout: int = 4
    groups: int = 1
    offset_groups: int = 1
    height: int = 6
    width: int = 5
    kernel: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    with_mask: bool = True
    with_bias: bool = True
    offset_scale: float = 2.0

    @property
    def out_size(self) -> tuple[int, int]:
        return tuple(
            (size + 2 * pad - dil * (k - 1) - 1) // s + 1
            for size, k, s, pad, dil in zip(
                (self.height, self.width), self.kernel, self.stride, self.padding,
                self.dilation, strict=True,
            )
        )

    @property
    def geometry(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        return self.stride, self.padding, self.dilation


def make_tensors(case: Case, dtype: torch.dtype = torch.float64, seed: int = 0) -> dict:
    """Random ``input, offset, weight, bias, mask`` for ``case`` (bias/mask may be None).

    Values are drawn in float64 and then cast, so a float32 case and its float64 reference
    see exactly the same numbers.
    """
    gen = torch.Generator().manual_seed(seed)
    kh, kw = case.kernel
    hout, wout = case.out_size
    kk = kh * kw

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    offset = torch.randn(case.n, 2 * case.offset_groups * kk, hout, wout, generator=gen,
                         dtype=torch.float64) * case.offset_scale
    if dtype != torch.float64:
        # Sample positions are integers + offset. Within float32 rounding of a grid line a
        # backend computing positions in float32 may floor to the other cell, where the
        # offset gradient jumps (the kink of bilinear sampling): keep clear of grid lines.
        near = (offset - offset.round()).abs() < 1e-4
        offset = torch.where(near, offset + 2e-4, offset)
    mask = None
    if case.with_mask:
        mask = torch.rand(case.n, case.offset_groups * kk, hout, wout, generator=gen,
                          dtype=torch.float64).to(dtype)
    return {
        "input": randn(case.n, case.cin, case.height, case.width),
        "offset": offset.to(dtype),
        "weight": randn(case.cout, case.cin // case.groups, kh, kw),
        "bias": randn(case.cout) if case.with_bias else None,
        "mask": mask,
    }


# groups = Cin = Cout: the direct depthwise kernels (no columns), with two offset groups.
DEPTHWISE_CASE = Case(n=2, cin=6, cout=6, groups=6, offset_groups=2)


@st.composite
def cases(draw: st.DrawFn, max_batch: int = 4) -> Case:
    """Small random configurations covering groups, offset groups and odd geometries."""
    groups = draw(st.sampled_from([1, 2]))
    offset_groups = draw(st.sampled_from([1, 2, 3]))
    cin = math.lcm(groups, offset_groups) * draw(st.integers(1, 2))
    kernel = draw(st.sampled_from([(3, 3), (3, 2), (1, 1), (5, 5), (2, 3), (1, 3)]))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    # The smallest input that still gives one output row/column, and a few more.
    min_h = max(1, dilation[0] * (kernel[0] - 1) + 1 - 2 * padding[0])
    min_w = max(1, dilation[1] * (kernel[1] - 1) + 1 - 2 * padding[1])
    return Case(
        n=draw(st.integers(1, max_batch)),
        cin=cin,
        cout=groups * draw(st.integers(1, 3)),
        groups=groups,
        offset_groups=offset_groups,
        height=draw(st.integers(min_h, min_h + 6)),
        width=draw(st.integers(min_w, min_w + 6)),
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        with_mask=draw(st.booleans()),
        with_bias=draw(st.booleans()),
        offset_scale=draw(st.sampled_from([0.5, 2.0, 6.0])),
    )


# ----------------------------------------------------------------------------- runners

GRAD_NAMES = ("input", "offset", "weight", "bias", "mask")


def run_with_grads(fn: Callable[..., Tensor], tensors: dict, grad_out: Tensor | None = None,
                   requires_grad: tuple[str, ...] = GRAD_NAMES) -> dict[str, Tensor]:
    """``fn(**tensors)`` and the gradients of ``<out, grad_out>`` w.r.t. the named tensors."""
    leaves = {
        name: t.detach().clone().requires_grad_(name in requires_grad)
        for name, t in tensors.items() if t is not None
    }
    out = fn(**leaves)
    if grad_out is None:
        grad_out = torch.randn_like(out)
    wanted = [name for name, t in leaves.items() if t.requires_grad]
    grads = torch.autograd.grad(out, [leaves[name] for name in wanted], grad_out)
    return {"out": out.detach(), **{f"grad_{n}": g for n, g in zip(wanted, grads, strict=True)}}


def fast_op(case: Case) -> Callable[..., Tensor]:
    """The public op (Numba kernels on the CPU) with ``case``'s geometry."""

    def fn(input, offset, weight, bias=None, mask=None):
        return deform_conv2d(input, offset, weight, bias, case.stride, case.padding,
                             case.dilation, mask)

    return fn


def reference_op(case: Case) -> Callable[..., Tensor]:
    def fn(input, offset, weight, bias=None, mask=None):
        return reference.deform_conv2d(input, offset, weight, bias, case.stride, case.padding,
                                       case.dilation, mask)

    return fn


def expected_results(case: Case, tensors: dict, grad_out: Tensor,
                     requires_grad: tuple[str, ...] = GRAD_NAMES) -> dict[str, Tensor]:
    """Reference output and gradients, computed in float64 from the same values."""
    as64 = {k: None if t is None else t.double() for k, t in tensors.items()}
    return run_with_grads(reference_op(case), as64, grad_out.double(), requires_grad)


def fallback_results(case: Case, tensors: dict, grad_out: Tensor) -> dict[str, Tensor]:
    """Output and gradients of the torch fallback backend (bias gradient is the op's job)."""
    t = tensors
    out = torch_backend.forward(t["input"], t["offset"], t["weight"], t["bias"], t["mask"],
                                case.geometry)
    grads = torch_backend.backward(grad_out, t["input"], t["offset"], t["weight"], t["mask"],
                                   case.geometry, True, True, True)
    results = dict(zip(("grad_input", "grad_offset", "grad_weight"), grads[:3], strict=True))
    if t["mask"] is not None:
        results["grad_mask"] = grads[3]
    return {"out": out, **results}


def assert_results_close(actual: dict[str, Tensor], expected: dict[str, Tensor],
                         rtol: float) -> None:
    """Each entry of ``expected`` matches, to ``rtol`` relative to its largest magnitude."""
    for key, want in expected.items():
        assert key in actual, f"missing {key}"
        got = actual[key]
        assert got.shape == want.shape, f"{key}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
        torch.testing.assert_close(got.to(want.dtype), want, rtol=rtol, atol=rtol * scale,
                                   msg=lambda m, key=key: f"{key}: {m}")


TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


# ----------------------------------------------------------------------------- vs reference


class TestAgainstReference:
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    @given(case=cases(), seed=st.integers(0, 2**31 - 1))
    def test_numba_values_and_grads(self, dtype, case, seed):
        tensors = make_tensors(case, dtype, seed)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        expected = expected_results(case, tensors, grad_out)
        actual = run_with_grads(fast_op(case), tensors, grad_out.to(dtype))
        assert actual["out"].dtype == dtype
        assert_results_close(actual, expected, TOLERANCE[dtype])

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    @given(case=cases(), seed=st.integers(0, 2**31 - 1))
    def test_fallback_values_and_grads(self, dtype, case, seed):
        tensors = make_tensors(case, dtype, seed)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        expected = expected_results(case, tensors, grad_out)
        expected.pop("grad_bias", None)
        actual = fallback_results(case, tensors, grad_out.to(dtype))
        assert_results_close(actual, expected, TOLERANCE[dtype])

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    @given(case=cases(max_batch=3), seed=st.integers(0, 2**31 - 1))
    def test_fallback_inside_registered_op(self, dtype, case, seed):
        """The fallback as other devices run it: inside the registered op's kernels, where
        autograd records nothing. On the CPU it gets there through DEFORMCONV_BACKEND."""
        tensors = make_tensors(case, dtype, seed)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        expected = expected_results(case, tensors, grad_out)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("DEFORMCONV_BACKEND", "torch")
            patch.setattr(numba_backend, "forward", None)  # any Numba call now fails loudly
            patch.setattr(numba_backend, "backward", None)
            actual = run_with_grads(fast_op(case), tensors, grad_out.to(dtype))
        assert_results_close(actual, expected, TOLERANCE[dtype])

    @pytest.mark.parametrize(
        "requires_grad",
        [("input",), ("offset",), ("mask",), ("weight",), ("bias",), ("offset", "weight"),
         ("input", "mask")],
    )
    def test_numba_partial_grads(self, requires_grad):
        """The backward skips work for inputs that need no gradient: the rest stay right."""
        case = Case(groups=2, offset_groups=2, stride=(2, 1), dilation=(1, 2))
        tensors = make_tensors(case)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        expected = expected_results(case, tensors, grad_out, requires_grad)
        actual = run_with_grads(fast_op(case), tensors, grad_out, requires_grad)
        assert set(actual) == set(expected)
        assert_results_close(actual, expected, 1e-10)

    @pytest.mark.parametrize("case", [
        Case(n=33, cin=2, cout=3, height=4, width=5, offset_groups=2),
        Case(n=1, kernel=(1, 1), padding=(0, 0), offset_groups=4),
        Case(height=2, width=1, kernel=(3, 3), padding=(1, 1)),
        Case(height=1, width=1, kernel=(5, 5), padding=(2, 2), dilation=(1, 1)),
        Case(height=3, width=7, kernel=(5, 2), padding=(2, 0), dilation=(1, 3), stride=(2, 1)),
        # More channels than the input-gradient kernel's parallel channel blocks, with
        # blocks straddling conv-group and offset-group boundaries.
        Case(n=2, cin=36, cout=8, groups=4, offset_groups=3, height=5, width=6),
    ], ids=["batch33", "kernel1x1", "input-smaller-than-kernel", "1x1-input-5x5-kernel",
            "odd-geometry", "many-channels"])
    @pytest.mark.parametrize("backend", ["numba", "fallback"])
    def test_special_shapes(self, case, backend):
        tensors = make_tensors(case, seed=1)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        expected = expected_results(case, tensors, grad_out)
        if backend == "numba":
            actual = run_with_grads(fast_op(case), tensors, grad_out)
        else:
            expected.pop("grad_bias")
            actual = fallback_results(case, tensors, grad_out)
        assert_results_close(actual, expected, 1e-10)


    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    @pytest.mark.parametrize("backend, groups", [("numba", 2), ("fallback", 2),
                                                 ("numba", 4)], ids=["numba", "fallback",
                                                                     "numba-depthwise"])
    def test_integer_offsets_use_right_hand_derivative(self, backend, groups, dtype):
        """Samples exactly on grid points (the kinks), incl. the image border: the offset
        gradient is the right-hand derivative with the same floor corners, as docs/OPS.md says."""
        case = Case(n=2, groups=groups, offset_groups=2, height=5, width=4, padding=(2, 1))
        tensors = make_tensors(case, dtype, seed=13)
        gen = torch.Generator().manual_seed(13)
        tensors["offset"] = torch.randint(-3, 4, tensors["offset"].shape, generator=gen).to(dtype)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        expected = expected_results(case, tensors, grad_out)
        if backend == "numba":
            actual = run_with_grads(fast_op(case), tensors, grad_out.to(dtype))
        else:
            expected.pop("grad_bias")
            actual = fallback_results(case, tensors, grad_out.to(dtype))
        assert_results_close(actual, expected, TOLERANCE[dtype])


# ----------------------------------------------------------------------------- tiling

TILED_CASE = Case(n=3, cin=4, cout=4, groups=2, offset_groups=2, height=9, width=7,
                  stride=(2, 1), padding=(1, 2), dilation=(1, 2))  # Hout = 5: odd band count


def _forced_tiles(mode: str, record: list,
                  count: int = 2) -> Callable[..., Iterator[_workspace.Tile]]:
    """``tiles`` with a budget that forces bands of ``count`` rows or ``count`` images a tile."""

    def spy(batch: int, rows: int, bytes_per_row: int, budget: int | None = None):
        budget = count * bytes_per_row * (1 if mode == "bands" else rows)
        produced = list(_workspace.tiles(batch, rows, bytes_per_row, budget))
        record.append(produced)
        return iter(produced)

    return spy


class TestTiling:
    @pytest.mark.parametrize("mode", ["bands", "images"])
    @pytest.mark.parametrize("backend", ["numba", "fallback", "numba-depthwise"])
    def test_tiled_matches_reference(self, monkeypatch, backend, mode):
        case = TILED_CASE
        module = {"numba": numba_backend, "fallback": torch_backend,
                  "numba-depthwise": depthwise_backend}[backend]
        if backend == "numba-depthwise":
            case = replace(case, groups=case.cin)
        assert case.out_size[0] == 5
        record: list[list[_workspace.Tile]] = []
        monkeypatch.setattr(module, "tiles", _forced_tiles(mode, record))
        tensors = make_tensors(case, seed=2)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        expected = expected_results(case, tensors, grad_out)
        if backend == "fallback":
            expected.pop("grad_bias")
            actual = fallback_results(case, tensors, grad_out)
        else:
            actual = run_with_grads(fast_op(case), tensors, grad_out)
        assert_results_close(actual, expected, 1e-10)

        assert len(record) == 2, "forward and backward should each tile once"
        for produced in record:
            if mode == "bands":
                assert [(t.n0, t.y0, t.y1) for t in produced] == [
                    (n, y0, min(5, y0 + 2)) for n in range(3) for y0 in (0, 2, 4)
                ]
            else:
                assert [(t.n0, t.n1, t.y0, t.y1) for t in produced] == [(0, 2, 0, 5), (2, 3, 0, 5)]

    @pytest.mark.parametrize("backend", ["numba", "fallback"])
    @given(case=cases(max_batch=3), seed=st.integers(0, 2**31 - 1),
           mode=st.sampled_from(["bands", "images"]), count=st.integers(1, 3))
    def test_random_tiles_match_reference(self, backend, case, seed, mode, count):
        module = numba_backend if backend == "numba" else torch_backend
        tensors = make_tensors(case, seed=seed)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        expected = expected_results(case, tensors, grad_out)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(module, "tiles", _forced_tiles(mode, [], count))
            if backend == "numba":
                actual = run_with_grads(fast_op(case), tensors, grad_out)
            else:
                expected.pop("grad_bias", None)
                actual = fallback_results(case, tensors, grad_out)
        assert_results_close(actual, expected, 1e-10)

    def test_workspace_budget_is_read_at_call_time(self, monkeypatch):
        """Setting ``_workspace.WORKSPACE_BYTES`` (DEFORMCONV_WORKSPACE_MB) takes effect."""
        record: list[list[_workspace.Tile]] = []

        def passthrough(*args, **kwargs):
            produced = list(_workspace.tiles(*args, **kwargs))
            record.append(produced)
            return iter(produced)

        monkeypatch.setattr(_workspace, "WORKSPACE_BYTES", 1)
        monkeypatch.setattr(numba_backend, "tiles", passthrough)
        case = TILED_CASE
        tensors = make_tensors(case, seed=3)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        expected = expected_results(case, tensors, grad_out)
        actual = run_with_grads(fast_op(case), tensors, grad_out)
        assert_results_close(actual, expected, 1e-10)
        hout = case.out_size[0]
        for produced in record:  # a 1-byte budget leaves one row of one image per tile
            assert [(t.n0, t.n1, t.y0, t.y1) for t in produced] == [
                (n, n + 1, y, y + 1) for n in range(case.n) for y in range(hout)
            ]


class TestChannelsFirstStore:
    """Channels-last results (the forward's conv-form GEMM, the input gradient) reach NCHW
    either as per-image 2-D transposed copies (images from ``TRANSPOSE_PER_IMAGE`` elements
    up) or as one 4-D copy: both give the reference's values."""

    @pytest.mark.parametrize("per_image", [True, False])
    @pytest.mark.parametrize("groups", [2, 4], ids=["columns", "depthwise"])
    def test_matches_reference(self, monkeypatch, per_image, groups):
        monkeypatch.setattr(tiles_module, "TRANSPOSE_PER_IMAGE", 0 if per_image else 1 << 62)
        case = replace(TILED_CASE, groups=groups)
        tensors = make_tensors(case, seed=41)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        expected = expected_results(case, tensors, grad_out)
        assert_results_close(run_with_grads(fast_op(case), tensors, grad_out), expected, 1e-10)

    @pytest.mark.parametrize("threshold", [0, 1 << 62])
    @pytest.mark.parametrize("channels_last_dst", [False, True])
    def test_store(self, monkeypatch, threshold, channels_last_dst):
        monkeypatch.setattr(tiles_module, "TRANSPOSE_PER_IMAGE", threshold)
        src = torch.randn(3, 4, 5, 6)
        dst = torch.empty(3, 6, 4, 5)
        if channels_last_dst:
            dst = dst.contiguous(memory_format=torch.channels_last)
        tiles_module.store_channels_first(dst, src)
        assert torch.equal(dst, src.permute(0, 3, 1, 2))


class TestBackwardChannelBlocks:
    """The backward kernel splits each image's channels into blocks when the images alone
    cannot share the threads evenly (batch 1 at res5); every split gives the same result."""

    @pytest.mark.parametrize("blocks", [1, 2, 3, 64])
    @given(case=cases(max_batch=3), seed=st.integers(0, 2**31 - 1),
           mode=st.sampled_from(["none", "bands"]))
    def test_forced_blocks_match_reference(self, blocks, case, seed, mode):
        """On every thread the machine allows (no call is too small for them here)."""
        tensors = make_tensors(case, seed=seed)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        expected = expected_results(case, tensors, grad_out)
        used = []

        def forced(images: int, channels: int, work: int) -> int:
            used.append(min(channels, blocks))
            return used[-1]

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(threads_module, "SERIAL_WORK", 0)
            patch.setattr(tiles_module, "channel_blocks", forced)
            if mode == "bands":
                patch.setattr(numba_backend, "tiles", _forced_tiles(mode, [], 1))
            actual = run_with_grads(fast_op(case), tensors, grad_out)
        assert used
        assert_results_close(actual, expected, 1e-10)

    @pytest.mark.parametrize("chunk_bytes", [1, 100, 1 << 20])
    def test_weight_gradient_reordered_in_place(self, chunk_bytes):
        """(Cout, kh*kw*Cin) -> (Cout, Cin, kh, kw) in the same storage, chunk by chunk."""
        shape = torch.Size((5, 3, 2, 4))
        grad = torch.randn(5, 2, 4, 3)  # the accumulated (Cout, kh, kw, Cin) order
        expected = grad.permute(0, 3, 1, 2).contiguous()
        flat = grad.clone().view(5, -1)
        result = numba_backend._to_channels_first(flat, shape, chunk_bytes)
        assert result.data_ptr() == flat.data_ptr() and result.is_contiguous()
        assert torch.equal(result, expected)

    @pytest.mark.parametrize("images, threads, expected", [
        (16, 2, 1), (1, 2, 2), (3, 2, 2), (3, 16, 8), (4, 16, 4), (6, 4, 2)])
    def test_block_count(self, images, threads, expected):
        """Blocks make (image, block) tasks a multiple of torch's threads, at most one block
        per channel of an offset group (8 here); a call too small for threads gets one."""
        torch.set_num_threads(threads)  # conftest restores it
        assert tiles_module.channel_blocks(images, 8, threads_module.SERIAL_WORK) == expected
        assert tiles_module.channel_blocks(images, 8, threads_module.SERIAL_WORK - 1) == 1


@pytest.mark.parametrize("groups", [1, 32], ids=["columns", "depthwise"])
def test_forward_and_input_gradient_do_not_depend_on_threads_batch_or_workspace(
        monkeypatch, groups):
    """What docs/OPS.md (Determinism) promises on the CPU: an image's output and input
    gradient are the same bit for bit at any thread count, in any batch, at any workspace
    size (the offset, mask and weight gradients are not: their sums split by threads)."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 32, 33, 33, generator=gen)  # one image is enough work for threads
    weight = torch.randn(32, 32 // groups, 3, 3, generator=gen)
    offset = 3 * torch.randn(3, 18, 33, 33, generator=gen)
    grad_out = torch.randn(3, 32, 33, 33, generator=gen)
    results = []
    for images, threads, workspace_bytes in [(3, 1, 32 << 20), (1, 2, 32 << 20), (3, 3, 1)]:
        torch.set_num_threads(threads)  # conftest restores it
        monkeypatch.setattr(_workspace, "WORKSPACE_BYTES", workspace_bytes)
        leaf = x[:images].clone().requires_grad_()
        out = deform_conv2d(leaf, offset[:images], weight, padding=1)
        out.backward(grad_out[:images])
        results.append((out[0], leaf.grad[0]))
    for out, grad_input in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad_input, results[0][1])


def test_run_tasks_gives_each_chunk_its_own_scratch(monkeypatch):
    """Chunks run at once on threads: the sampling kernel's row buffers must not be shared."""
    monkeypatch.setattr(threads_module, "task_threads", lambda work: 3)
    calls = []

    def kernel(tag, buffer, first, last):
        calls.append((tag, buffer, first, last))  # list.append is atomic

    threads_module.run_tasks(kernel, 7, 0, "arg", scratch=lambda: (bytearray(1),))
    assert sorted((first, last) for *_, first, last in calls) == [(0, 2), (2, 4), (4, 7)]
    assert {tag for tag, *_ in calls} == {"arg"}
    assert len({id(buffer) for _, buffer, *_ in calls}) == 3  # all still alive here


def _noalias_arguments(dispatcher) -> int:
    """How many arguments of the compiled function's LLVM definition are ``noalias``."""
    llvm_ir = next(iter(dispatcher.inspect_llvm().values()))
    name = next(iter(dispatcher.overloads.values())).fndesc.llvm_func_name
    definition = next(line for line in llvm_ir.splitlines()
                      if line.startswith("define") and name in line)
    return definition.count("noalias")


def test_noalias_compiler_marks_array_data_noalias():
    """The kernels' compiler (uncached here, so its IR can be read) marks both arrays' data
    ``noalias`` on top of Numba's own two (return value and exception pointers), and the
    function computes the same."""
    def shifted_copy(dst, src):
        for i in range(dst.shape[0]):
            dst[i] = src[i] + 1.0

    marked = numba.njit(pipeline_class=noalias_module._NoAliasCompiler)(shifted_copy)
    plain = numba.njit(shifted_copy)
    source = np.arange(5.0)
    for function in (marked, plain):
        target = np.zeros(5)
        function(target, source)
        assert np.array_equal(target, source + 1.0)
    assert _noalias_arguments(marked) >= _noalias_arguments(plain) + 2


# Positions of the arrays each noalias kernel writes (its signature; run_tasks appends the
# sampling kernel's scratch buffers after the call's own arguments).
_KERNEL_WRITES = {
    "sample_columns": {4, 10, 11},  # columns, corner, corner_weight
    "backward_tile": {4, 5, 6, 7},  # columns, grad_offset, grad_mask, grad_x
    "forward": {6},  # depthwise: out
    "backward": {7, 8, 9, 10},  # depthwise: grad_offset, grad_mask, grad_x, grad_weight
}


def channels_last(tensors: dict) -> dict:
    """``tensors`` with the input stored channels-last (as a channels-last network holds it)."""
    return {**tensors, "input": tensors["input"].contiguous(memory_format=torch.channels_last)}


@pytest.mark.parametrize("layout", ["nchw", "channels-last"])
@pytest.mark.parametrize("mode", ["none", "bands", "images"])
@pytest.mark.parametrize("case", [
    Case(), Case(with_mask=False, with_bias=False), TILED_CASE,
    replace(TILED_CASE, cout=TILED_CASE.cin, groups=TILED_CASE.cin),
], ids=["mask", "no-mask", "groups", "depthwise"])
def test_noalias_kernels_never_get_overlapping_arrays(monkeypatch, case, mode, layout):
    """The contract of ``noalias.kernel``: no array a kernel writes shares memory with
    another of its array arguments, in any forward or backward call, tiled or not, with
    the input, output and output gradient in either layout (channels-last ones are read
    and written in place)."""
    calls = []

    def checked(name, kernel):
        def call(*args):
            # a signature change must not move the check onto a non-array argument
            assert all(isinstance(args[i], np.ndarray) for i in _KERNEL_WRITES[name]), name
            arrays = [(i, a) for i, a in enumerate(args) if isinstance(a, np.ndarray)]
            for i, written in arrays:
                if i in _KERNEL_WRITES[name]:
                    for j, other in arrays:
                        assert j == i or not np.may_share_memory(written, other), (name, i, j)
            calls.append(name)
            return kernel(*args)
        return call

    modules = (numba_backend.kernels, depthwise_backend.kernels)
    for module in modules:
        for name in _KERNEL_WRITES:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, checked(name, getattr(module, name)))
    if mode != "none":
        for module in (numba_backend, depthwise_backend):
            monkeypatch.setattr(module, "tiles", _forced_tiles(mode, [], 2))
    tensors = make_tensors(case, torch.float32, seed=3)
    run_with_grads(fast_op(case), channels_last(tensors) if layout != "nchw" else tensors)
    expected = ({"forward", "backward"} if case.groups == case.cin
                else {"sample_columns", "backward_tile"})
    assert set(calls) == expected


# ----------------------------------------------------------------------------- channels-last

CHANNELS_LAST_CASES = {
    "columns": Case(n=3, cin=4, cout=6, offset_groups=2),
    "conv-groups": TILED_CASE,
    "depthwise": DEPTHWISE_CASE,
    # float32 takes oneDNN's inner product here (Cout >= 256), float64 the conv form
    "matmul-form": Case(n=2, cin=4, cout=256, offset_groups=2, height=5, width=4),
}


def _is_channels_last(t: Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


class TestChannelsLast:
    """A channels-last input is read in place and its result and input gradient come back
    channels-last, as torch's conv2d returns them; values and gradients are the
    reference's, whatever the output gradient's layout and the tiling."""

    @pytest.mark.parametrize("grad_layout", ["nchw", "channels-last"])
    @pytest.mark.parametrize("mode", ["none", "bands", "images"])
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    @pytest.mark.parametrize("name", list(CHANNELS_LAST_CASES))
    def test_matches_reference(self, monkeypatch, name, dtype, mode, grad_layout):
        case = CHANNELS_LAST_CASES[name]
        if mode != "none":
            for module in (numba_backend, depthwise_backend):
                monkeypatch.setattr(module, "tiles", _forced_tiles(mode, [], 2))
        tensors = make_tensors(case, dtype, seed=4)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(5))
        expected = expected_results(case, tensors, grad_out)
        if grad_layout == "channels-last":
            grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        actual = run_with_grads(fast_op(case), channels_last(tensors), grad_out.to(dtype))
        assert _is_channels_last(actual["out"])
        assert _is_channels_last(actual["grad_input"])
        assert_results_close(actual, expected, TOLERANCE[dtype])

    def test_input_is_read_in_place(self, monkeypatch):
        """No channels-last copy of a channels-last input: the kernels get its memory."""
        seen = []
        sample = numba_backend.kernels.sample_columns

        def spy(x, *args):
            seen.append(x.ctypes.data)
            return sample(x, *args)

        monkeypatch.setattr(numba_backend.kernels, "sample_columns", spy)
        case = CHANNELS_LAST_CASES["columns"]
        tensors = channels_last(make_tensors(case))
        fast_op(case)(**tensors)
        assert seen == [tensors["input"].data_ptr()]

    @pytest.mark.parametrize("mode", ["none", "bands"])
    @pytest.mark.parametrize("name", ["columns", "depthwise"])
    def test_input_gradient_is_scattered_in_place(self, monkeypatch, name, mode):
        """The backward kernels scatter a channels-last input's gradient into the returned
        tensor itself, across row bands too: no copy from a workspace afterwards."""
        def no_copy(*args):
            raise AssertionError("the input gradient was copied")

        monkeypatch.setattr(tiles_module, "store_channels_first", no_copy)
        if mode != "none":
            for module in (numba_backend, depthwise_backend):
                monkeypatch.setattr(module, "tiles", _forced_tiles(mode, [], 2))
        case = CHANNELS_LAST_CASES[name]
        tensors = make_tensors(case, torch.float64, seed=4)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(5))
        expected = expected_results(case, tensors, grad_out)
        actual = run_with_grads(fast_op(case), channels_last(tensors), grad_out)
        assert_results_close(actual, expected, TOLERANCE[torch.float64])

    @pytest.mark.parametrize("name", ["columns", "depthwise"])
    def test_backward_op_takes_either_gradient_layout(self, name):
        """The public backward op with an NCHW input and a channels-last output gradient
        (or the reverse) gives what it gives for matching layouts."""
        case = CHANNELS_LAST_CASES[name]
        t = make_tensors(case, torch.float64, seed=6)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        geometry = (*case.stride, *case.padding, *case.dilation)

        def grads(input: Tensor, grad: Tensor) -> tuple[Tensor, ...]:
            return torch.ops.deformconv.deform_conv2d_backward(
                grad, input, t["offset"], t["weight"], t["mask"], *geometry, True, True, True)

        cl = torch.channels_last
        expected = grads(t["input"], grad_out)
        for input, grad in [(t["input"], grad_out.contiguous(memory_format=cl)),
                            (t["input"].contiguous(memory_format=cl), grad_out)]:
            for got, want in zip(grads(input, grad), expected, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    def test_fallback_gives_the_same_layout(self, monkeypatch):
        """Every backend's result takes the input's layout (the fake kernel promises it)."""
        case = CHANNELS_LAST_CASES["columns"]
        tensors = channels_last(make_tensors(case, seed=7))
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        monkeypatch.setenv("DEFORMCONV_BACKEND", "torch")
        expected = run_with_grads(fast_op(case), tensors, grad_out)
        monkeypatch.setenv("DEFORMCONV_BACKEND", "numba")
        actual = run_with_grads(fast_op(case), tensors, grad_out)
        for key in ("out", "grad_input"):
            assert _is_channels_last(expected[key]) and _is_channels_last(actual[key]), key
        assert_results_close(actual, expected, 1e-10)

    @pytest.mark.parametrize("name", list(CHANNELS_LAST_CASES))
    def test_channels_last_weight_gives_conv2ds_layout(self, name):
        """With an NCHW input, a channels-last weight makes the result and the input
        gradient take the layout conv2d gives them; the values are the NCHW call's."""
        case = CHANNELS_LAST_CASES[name]
        tensors = make_tensors(case, torch.float64, seed=9)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        expected = run_with_grads(fast_op(case), tensors, grad_out)
        weight = tensors["weight"].contiguous(memory_format=torch.channels_last)
        actual = run_with_grads(fast_op(case), {**tensors, "weight": weight}, grad_out)
        dense = run_with_grads(
            lambda input, weight: F.conv2d(input, weight, None, case.stride, case.padding,
                                           case.dilation, case.groups),
            {"input": tensors["input"], "weight": weight}, grad_out, ("input",))
        for key in ("out", "grad_input"):
            assert actual[key].stride() == dense[key].stride(), key
        assert_results_close(actual, expected, 1e-12)

    @pytest.mark.parametrize("name", list(CHANNELS_LAST_CASES))
    def test_opcheck(self, name):
        case = CHANNELS_LAST_CASES[name]
        t = {k: None if v is None else v.float().requires_grad_()
             for k, v in channels_last(make_tensors(case, seed=8)).items()}
        torch.library.opcheck(
            torch.ops.deformconv.deform_conv2d.default,
            (t["input"], t["offset"], t["weight"], t["bias"], t["mask"], *case.stride,
             *case.padding, *case.dilation),
        )


# ----------------------------------------------------------------------------- depthwise


@st.composite
def depthwise_cases(draw: st.DrawFn) -> Case:
    """``cases`` with groups = Cin = Cout: the direct depthwise kernels' shapes."""
    case = draw(cases(max_batch=3))
    offset_groups = draw(st.sampled_from([1, 2]))
    channels = offset_groups * draw(st.integers(1, 4))
    return replace(case, cin=max(2, channels), cout=max(2, channels), groups=max(2, channels),
                   offset_groups=offset_groups)


class TestDepthwise:
    """groups = Cin = Cout runs the direct kernels (no columns): values and gradients as
    the reference's, tiled, on forced channel blocks, and zero offsets give conv2d."""

    def test_takes_the_direct_path(self, monkeypatch):
        calls = []
        monkeypatch.setattr(numba_backend.kernels, "sample_columns",
                            lambda *args: calls.append("columns"))
        case = Case(cin=4, cout=4, groups=4)
        run_with_grads(fast_op(case), make_tensors(case), None)
        assert calls == []
        assert depthwise_backend.applies(torch.zeros(1, 4, 1, 1), torch.zeros(4, 1, 3, 3))
        assert not depthwise_backend.applies(torch.zeros(1, 4, 1, 1), torch.zeros(8, 1, 3, 3))
        assert not depthwise_backend.applies(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 3, 3))

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    @given(case=depthwise_cases(), seed=st.integers(0, 2**31 - 1),
           mode=st.sampled_from(["none", "bands", "images"]), count=st.integers(1, 3),
           blocks=st.sampled_from([0, 1, 3]))
    def test_matches_reference(self, dtype, case, seed, mode, count, blocks):
        """``blocks`` 0: the default split on as many threads as the machine allows. Tiles
        of ``count`` rows or images: the kernels write and read whole NCHW images at the
        tile's rows."""
        tensors = make_tensors(case, dtype, seed)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        expected = expected_results(case, tensors, grad_out)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(threads_module, "SERIAL_WORK", 0)
            if blocks:
                patch.setattr(tiles_module, "channel_blocks",
                              lambda images, channels, work: min(channels, blocks))
            if mode != "none":
                patch.setattr(depthwise_backend, "tiles", _forced_tiles(mode, [], count))
            actual = run_with_grads(fast_op(case), tensors, grad_out.to(dtype))
        assert_results_close(actual, expected, TOLERANCE[dtype])

    @pytest.mark.parametrize("requires_grad", [("input",), ("offset", "mask"), ("weight",),
                                               ("input", "weight")])
    def test_partial_grads(self, requires_grad):
        case = Case(n=3, cin=6, cout=6, groups=6, offset_groups=2, stride=(2, 1))
        tensors = make_tensors(case, seed=31)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        expected = expected_results(case, tensors, grad_out, requires_grad)
        actual = run_with_grads(fast_op(case), tensors, grad_out, requires_grad)
        assert set(actual) == set(expected)
        assert_results_close(actual, expected, 1e-10)

    def test_zero_offset_equals_conv2d(self):
        case = Case(n=2, cin=8, cout=8, groups=8, height=9, width=7, dilation=(2, 1),
                    padding=(2, 1), with_mask=False)
        tensors = make_tensors(case, seed=32)
        tensors["offset"] = torch.zeros_like(tensors["offset"])
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)

        def conv(input, offset, weight, bias=None, mask=None):
            return F.conv2d(input, weight, bias, case.stride, case.padding, case.dilation, 8)

        names = ("input", "weight", "bias")
        expected = run_with_grads(conv, tensors, grad_out, names)
        assert_results_close(run_with_grads(fast_op(case), tensors, grad_out, names), expected,
                             1e-12)

    def test_empty_batch(self):
        case = Case(n=0, cin=4, cout=4, groups=4)
        tensors = make_tensors(case)
        grad_out = torch.randn(0, 4, *case.out_size, dtype=torch.float64)
        results = run_with_grads(fast_op(case), tensors, grad_out)
        assert results["out"].shape == (0, 4, *case.out_size)
        assert torch.equal(results["grad_weight"], torch.zeros_like(tensors["weight"]))


# ----------------------------------------------------------------------------- GEMM forms

ONEDNN_MATMUL = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_linear_pointwise")


class TestForwardGemmForms:
    """The forward's two GEMMs (convolution over the columns, oneDNN inner product) each
    match the reference, untiled and tiled, and give a contiguous NCHW output."""

    @pytest.mark.parametrize("form", [
        "conv", pytest.param("matmul", marks=pytest.mark.skipif(
            not ONEDNN_MATMUL, reason="torch built without oneDNN")),
    ])
    @given(case=cases(max_batch=3), seed=st.integers(0, 2**31 - 1),
           mode=st.sampled_from(["none", "bands", "images"]), count=st.integers(1, 3))
    def test_form_matches_reference(self, form, case, seed, mode, count):
        case = replace(case, groups=1, cout=case.cout + 1)
        tensors = make_tensors(case, torch.float32, seed)
        expected = reference_op(case)(**{k: None if t is None else t.double()
                                         for k, t in tensors.items()})
        chosen = []

        def use_matmul(input: Tensor, weight: Tensor, groups: int) -> bool:
            chosen.append(form)
            return form == "matmul"

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(numba_backend, "_use_matmul", use_matmul)
            if mode != "none":
                patch.setattr(numba_backend, "tiles", _forced_tiles(mode, [], count))
            out = fast_op(case)(**tensors)
        assert chosen == [form]
        assert out.is_contiguous()
        assert_results_close({"out": out}, {"out": expected}, TOLERANCE[torch.float32])

    def test_matmul_only_where_it_can_run(self):
        """The inner product has no groups and no float64: those take the conv form."""
        weight = torch.zeros(512, 512, 3, 3)
        x32 = torch.zeros(1, 512, 8, 8)
        assert numba_backend._use_matmul(x32, weight, 1) is ONEDNN_MATMUL
        assert not numba_backend._use_matmul(x32, weight[:, :256], 2)
        assert not numba_backend._use_matmul(x32[:, :64], weight[:255, :64], 1)
        assert not numba_backend._use_matmul(x32.double(), weight.double(), 1)


# ----------------------------------------------------------------------------- gradcheck


def _fractional_offset(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Integer shifts plus fractions in [0.1, 0.9]: every sample lies away from the kinks
    of the piecewise-bilinear function (integer coordinates), so finite differences hold."""
    whole = torch.randint(-2, 3, shape, generator=gen, dtype=torch.float64)
    return whole + 0.1 + 0.8 * torch.rand(shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("cout, groups", [(2, 2), (4, 4)], ids=["groups", "depthwise"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_gradcheck(with_mask, cout, groups, generator):
    case = Case(n=1, cin=4, cout=cout, groups=groups, offset_groups=2, height=5, width=4,
                kernel=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2),
                with_mask=with_mask)
    tensors = make_tensors(case, seed=4)
    tensors["offset"] = _fractional_offset(tuple(tensors["offset"].shape), generator)
    names = [n for n in GRAD_NAMES if tensors[n] is not None]
    inputs = tuple(tensors[n].requires_grad_() for n in names)
    op = fast_op(case)
    assert torch.autograd.gradcheck(lambda *args: op(**dict(zip(names, args, strict=True))),
                                    inputs)


# ----------------------------------------------------------------------------- vs other ops


@pytest.mark.parametrize("groups, kernel, stride, padding, dilation", [
    (1, (3, 3), (1, 1), (1, 1), (1, 1)),
    (2, (3, 2), (2, 1), (0, 1), (2, 1)),
    (4, (1, 1), (1, 2), (0, 0), (1, 1)),
    (2, (5, 5), (1, 1), (2, 2), (1, 1)),
    (1, (2, 3), (3, 2), (2, 1), (1, 2)),
])
def test_zero_offset_equals_conv2d(groups, kernel, stride, padding, dilation):
    case = Case(n=2, cin=4, cout=4, groups=groups, height=9, width=8, kernel=kernel,
                stride=stride, padding=padding, dilation=dilation, with_mask=False)
    tensors = make_tensors(case)
    tensors["offset"] = torch.zeros_like(tensors["offset"])
    grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)

    def conv(input, offset, weight, bias=None, mask=None):
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)

    expected = run_with_grads(conv, tensors, grad_out, ("input", "weight", "bias"))
    actual = run_with_grads(fast_op(case), tensors, grad_out, ("input", "weight", "bias"))
    assert_results_close(actual, expected, 1e-12)


@pytest.mark.parametrize("case", [
    Case(with_mask=False),
    Case(with_mask=True),
    Case(n=3, cin=6, cout=4, groups=2, offset_groups=3, kernel=(3, 2), stride=(2, 1),
         padding=(1, 0), dilation=(2, 1), height=9, width=7, with_mask=True),
    Case(n=1, cin=4, cout=2, groups=1, offset_groups=2, kernel=(1, 1), padding=(0, 0),
         with_mask=False, with_bias=False),
], ids=["v1", "v2", "v2-groups", "v1-1x1-no-bias"])
def test_matches_torchvision(case):
    _assert_matches_torchvision(case, seed=5)


@given(case=cases(), seed=st.integers(0, 2**31 - 1))
def test_matches_torchvision_randomized(case, seed):
    """An independent implementation, on random (off-grid) offsets."""
    _assert_matches_torchvision(case, seed)


BORDER_CASE = Case(n=2, cin=4, cout=4, groups=2, offset_groups=2, height=5, width=4,
                   padding=(1, 1))


def _sample_positions(case: Case, offset: Tensor) -> tuple[Tensor, Tensor]:
    """Rows and columns sampled by every kernel point, each (N, G, kh, kw, Hout, Wout)."""
    (kh, kw), (hout, wout) = case.kernel, case.out_size
    n, groups = offset.shape[0], offset.shape[1] // (2 * kh * kw)
    delta = offset.view(n, groups, kh, kw, 2, hout, wout)
    rows = (torch.arange(hout) * case.stride[0] - case.padding[0]).view(-1, 1)
    cols = torch.arange(wout) * case.stride[1] - case.padding[1]
    kernel_rows = (torch.arange(kh) * case.dilation[0]).view(-1, 1, 1, 1)
    kernel_cols = (torch.arange(kw) * case.dilation[1]).view(-1, 1, 1)
    return delta[..., 0, :, :] + rows + kernel_rows, delta[..., 1, :, :] + cols + kernel_cols


@pytest.mark.parametrize("offsets", ["zero", "integer"])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("backend", ["numba", "fallback", "reference"])
def test_grid_samples_on_the_border_match_torchvision(backend, with_mask, offsets):
    """Samples exactly on grid points, many on row/column -1 and H/W (as in the first step
    of a zero-initialised padded 3x3 layer): the offset gradient is the right-hand
    derivative, as in torchvision's kernel — at -1 it reads row/column 0, it is not 0."""
    case = replace(BORDER_CASE, with_mask=with_mask)
    tensors = make_tensors(case, seed=21)
    gen = torch.Generator().manual_seed(21)
    if offsets == "zero":
        tensors["offset"] = torch.zeros_like(tensors["offset"])
    else:  # positions from -3 to H+2 / W+2: outside, on the border lines and inside
        shape = tensors["offset"].shape
        tensors["offset"] = torch.randint(-2, 3, shape, generator=gen, dtype=torch.float64)
    rows, cols = _sample_positions(case, tensors["offset"])
    assert rows.eq(-1).any() and cols.eq(-1).any()
    if offsets == "integer":
        assert rows.eq(case.height).any() and cols.eq(case.width).any()
    grad_out = torch.randn(case.n, case.cout, *case.out_size, generator=gen, dtype=torch.float64)
    expected = run_with_grads(_torchvision_op(case), tensors, grad_out)
    if backend == "fallback":
        expected.pop("grad_bias", None)
        actual = fallback_results(case, tensors, grad_out)
    else:
        op = fast_op if backend == "numba" else reference_op
        actual = run_with_grads(op(case), tensors, grad_out)
    assert_results_close(actual, expected, 1e-10)


def _torchvision_op(case: Case) -> Callable[..., Tensor]:
    def fn(input, offset, weight, bias=None, mask=None):
        return torchvision.ops.deform_conv2d(input, offset, weight, bias, case.stride,
                                             case.padding, case.dilation, mask)

    return fn


def _assert_matches_torchvision(case: Case, seed: int) -> None:
    tensors = make_tensors(case, seed=seed)
    grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
    expected = run_with_grads(_torchvision_op(case), tensors, grad_out)
    actual = run_with_grads(fast_op(case), tensors, grad_out)
    assert_results_close(actual, expected, 1e-10)


# ----------------------------------------------------------------------------- edge cases


class TestEdgeCases:
    @pytest.mark.parametrize("shift", [1e3, -1e3, 1e6, math.inf, -math.inf])
    @pytest.mark.parametrize("backend, case", [
        ("numba", Case(groups=2, offset_groups=2)), ("fallback", Case(groups=2, offset_groups=2)),
        ("numba", DEPTHWISE_CASE)], ids=["numba", "fallback", "numba-depthwise"])
    def test_all_samples_outside(self, backend, case, shift):
        """Every sample off the image: out = bias, and no gradient reaches input/offset/mask."""
        tensors = make_tensors(case)
        tensors["offset"] = torch.full_like(tensors["offset"], shift)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        if backend == "numba":
            results = run_with_grads(fast_op(case), tensors, grad_out)
            torch.testing.assert_close(results["grad_bias"], grad_out.sum((0, 2, 3)))
        else:
            results = fallback_results(case, tensors, grad_out)
        bias = tensors["bias"].view(1, -1, 1, 1).expand_as(results["out"])
        torch.testing.assert_close(results["out"], bias, rtol=0, atol=0)
        for name in ("grad_input", "grad_offset", "grad_mask", "grad_weight"):
            assert torch.equal(results[name], torch.zeros_like(results[name])), name

    def test_fallback_keeps_an_inf_pixel_out_of_outputs_beside_it(self):
        """An inf at pixel (0, 0), zero offsets: outputs whose window misses it equal
        conv2d's. The torch backend used to gather corners outside the plane from pixel 0
        and weigh them 0, so 0 * inf made the last row and column NaN."""
        case = Case(n=1, cin=2, cout=3, height=5, width=6, with_mask=False)
        t = make_tensors(case, seed=13)
        t["input"][0, 0, 0, 0] = math.inf
        t["offset"] = torch.zeros_like(t["offset"])
        conv = torch.nn.functional.conv2d(t["input"], t["weight"], t["bias"], case.stride,
                                          case.padding, case.dilation, case.groups)
        finite = conv.isfinite()
        assert 0 < finite.sum() < conv.numel()
        results = {
            "fallback": torch_backend.forward(t["input"], t["offset"], t["weight"], t["bias"],
                                              None, case.geometry),
            "reference": reference_op(case)(t["input"], t["offset"], t["weight"], t["bias"]),
        }
        for name, out in results.items():
            torch.testing.assert_close(out[finite], conv[finite], msg=name)
        grad_out = torch.randn_like(conv)
        grad_input = torch_backend.backward(grad_out, t["input"], t["offset"], t["weight"], None,
                                            case.geometry, True, False, False)[0]
        expected = torch.nn.grad.conv2d_input(t["input"].shape, t["weight"], grad_out,
                                              case.stride, case.padding, case.dilation,
                                              case.groups)
        torch.testing.assert_close(grad_input, expected)

    def test_mask_of_ones_equals_no_mask(self):
        case = Case(groups=2, offset_groups=2, stride=(2, 1))
        tensors = make_tensors(case, seed=12)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        names = ("input", "offset", "weight", "bias")
        without = run_with_grads(fast_op(case), {**tensors, "mask": None}, grad_out, names)
        ones = run_with_grads(fast_op(case), {**tensors, "mask": torch.ones_like(tensors["mask"])},
                              grad_out, names)
        assert_results_close(ones, without, 1e-12)

    @pytest.mark.parametrize("case", [Case(n=2, offset_groups=2, cin=4), DEPTHWISE_CASE],
                             ids=["columns", "depthwise"])
    def test_mixed_huge_and_infinite_offsets(self, case):
        """Some offsets 1e6 / ±inf among ordinary ones: finite and equal to the reference."""
        tensors = make_tensors(case, seed=6)
        offset = tensors["offset"].flatten()
        offset[::7] = math.inf
        offset[3::11] = -math.inf
        offset[5::13] = 1e6
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        expected = expected_results(case, tensors, grad_out)
        actual = run_with_grads(fast_op(case), tensors, grad_out)
        for name, value in actual.items():
            assert torch.isfinite(value).all(), name
        assert_results_close(actual, expected, 1e-10)

    @pytest.mark.parametrize("dtype, power", [(torch.float64, 54), (torch.float64, 60),
                                              (torch.float32, 30)])
    @pytest.mark.parametrize("backend", ["numba", "fallback", "reference"])
    def test_padding_and_dilation_beyond_float_precision(self, dtype, power, backend):
        """Padding = dilation = 2**54 in float64: only the centre taps land on the image.
        The reference and the torch backend summed y*stride - pad in floating point, which
        rounds there, and were off by 2.94 (5.00 at 2**60; float32 above 2**24 likewise)."""
        big = 2**power
        case = Case(n=1, cin=2, cout=3, height=5, width=5, padding=(big, big),
                    dilation=(big, big), offset_scale=0.5)
        tensors = make_tensors(case, dtype, seed=3)
        centre = replace(case, kernel=(1, 1), padding=(0, 0), dilation=(1, 1))
        offset = tensors["offset"].view(1, 9, 2, 5, 5)[:, 4]
        grad_out = torch.randn(1, 3, 5, 5, dtype=torch.float64)
        expected = run_with_grads(reference_op(centre), {
            "input": tensors["input"].double(), "offset": offset.double(),
            "weight": tensors["weight"][:, :, 1:2, 1:2].double(),
            "bias": tensors["bias"].double(), "mask": tensors["mask"][:, 4:5].double()},
            grad_out, ("input", "weight"))
        run = {"numba": fast_op(case), "reference": reference_op(case),
               "fallback": lambda **t: torch_backend.forward(**t, geometry=case.geometry)}
        actual = run_with_grads(run[backend], tensors, grad_out.to(dtype), ("input",))
        assert_results_close(actual, {k: expected[k] for k in ("out", "grad_input")},
                             TOLERANCE[dtype])

    @pytest.mark.parametrize("with_mask", [False, True])
    def test_empty_batch(self, with_mask):
        case = Case(n=0, with_mask=with_mask)
        tensors = make_tensors(case)
        grad_out = torch.randn(0, case.cout, *case.out_size, dtype=torch.float64)
        results = run_with_grads(fast_op(case), tensors, grad_out)
        assert results["out"].shape == (0, case.cout, *case.out_size)
        for name in GRAD_NAMES:
            if tensors[name] is not None:
                assert results[f"grad_{name}"].shape == tensors[name].shape, name
        assert torch.equal(results["grad_weight"], torch.zeros_like(tensors["weight"]))
        assert torch.equal(results["grad_bias"], torch.zeros_like(tensors["bias"]))
        fallback = fallback_results(case, tensors, grad_out)
        assert fallback["out"].shape == (0, case.cout, *case.out_size)

    @pytest.mark.parametrize("case", [
        Case(n=2, cin=4, cout=6, groups=2, offset_groups=2, stride=(1, 2)),
        replace(DEPTHWISE_CASE, stride=(1, 2))], ids=["columns", "depthwise"])
    def test_non_contiguous_inputs(self, case):
        tensors = make_tensors(case, seed=7)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64)
        expected = expected_results(case, tensors, grad_out)

        def strided(t: Tensor) -> Tensor:
            if t.dim() != 4 or t.shape[1] == 1:  # (a channels-last (C, 1, kh, kw) is contiguous)
                return t.repeat_interleave(2, -1)[..., ::2]  # every other element of a 2x copy
            return t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)

        def op(**kwargs):
            kwargs = {k: strided(v) for k, v in kwargs.items()}
            assert not any(v.is_contiguous() for v in kwargs.values())
            return fast_op(case)(**kwargs)

        actual = run_with_grads(op, tensors, strided(grad_out))
        assert_results_close(actual, expected, 1e-10)

    @pytest.mark.parametrize("groups", [1, 2])
    def test_interleaved_layers_share_the_workspace_safely(self, groups):
        """Two layers' forwards, then their backwards in reverse order (as autograd runs a
        network): each call re-fills the reused columns and weight-copy slots, so every
        output and gradient still matches the reference."""
        cases_ = [Case(cin=4, cout=6, groups=groups, offset_groups=2, kernel=(3, 3)),
                  Case(cin=4, cout=8, groups=groups, kernel=(1, 3), padding=(0, 1))]
        leaves, outs, grads_out, expected = [], [], [], []
        for i, case in enumerate(cases_):
            tensors = make_tensors(case, seed=20 + i)
            grads_out.append(torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64))
            expected.append(expected_results(case, tensors, grads_out[-1]))
            leaves.append({k: t.detach().clone().requires_grad_() for k, t in tensors.items()})
            outs.append(fast_op(case)(**leaves[-1]))
        for i in reversed(range(len(cases_))):
            outs[i].backward(grads_out[i])
            actual = {"out": outs[i].detach(),
                      **{f"grad_{k}": t.grad for k, t in leaves[i].items()}}
            assert_results_close(actual, expected[i], 1e-10)

    @pytest.mark.parametrize("cout, groups", [(8, 2), (16, 16)], ids=["columns", "depthwise"])
    def test_repeated_calls_are_bitwise_identical(self, cout, groups):
        """The parallel kernels must be race-free: two runs give the very same bits."""
        case = Case(n=2, cin=16, cout=cout, groups=groups, offset_groups=4, height=12, width=11,
                    offset_scale=1.0)
        tensors = make_tensors(case, torch.float32, seed=14)
        grad_out = torch.randn(case.n, case.cout, *case.out_size)
        first = run_with_grads(fast_op(case), tensors, grad_out)
        second = run_with_grads(fast_op(case), tensors, grad_out)
        for name, value in first.items():
            assert torch.equal(value, second[name]), name

    def test_autocast_leaves_float64_as_torch_does(self):
        """Autocast never casts float64 (conv2d keeps it): the op cast it to float32."""
        case = Case(n=1, cin=2, cout=2, height=5, width=5)
        tensors = make_tensors(case, torch.float64, seed=3)
        expected = fast_op(case)(**tensors)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fast_op(case)(**tensors)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, expected, rtol=0, atol=0)

    def test_autocast_runs_in_float32(self):
        """Under CPU autocast an offset branch yields bfloat16 while the features stay float32:
        the op accepts the mix, samples and multiplies in float32 (no low-precision GEMM)."""
        case = Case(n=2, cin=8, cout=8, groups=2, offset_groups=2, height=7, width=6)
        tensors = make_tensors(case, torch.float32, seed=15)
        low = {"offset": tensors["offset"].bfloat16(), "mask": tensors["mask"].bfloat16()}
        grad_out = torch.randn(case.n, case.cout, *case.out_size)
        expected = run_with_grads(fast_op(case), {**tensors, **{k: v.float() for k, v in
                                                                low.items()}}, grad_out)

        def op(**kwargs):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = fast_op(case)(**kwargs)
            assert out.dtype == torch.float32
            return out

        actual = run_with_grads(op, {**tensors, **low}, grad_out)
        for name in ("grad_offset", "grad_mask"):  # gradients come back in the leaves' dtype
            assert actual[name].dtype == torch.bfloat16
            expected[name] = expected[name].bfloat16()
        assert_results_close(actual, expected, 1e-6)

    def test_meta_tensors_give_output_shape(self):
        """Shape inference on the meta device (meta-initialised models, FLOP counters)."""
        case = Case(groups=2, offset_groups=2, stride=(2, 1), dilation=(1, 2))
        tensors = {k: v.float().to("meta") for k, v in make_tensors(case).items()}
        out = fast_op(case)(**tensors)
        assert out.device.type == "meta"
        assert out.shape == (case.n, case.cout, *case.out_size)
        assert out.dtype == torch.float32

    @pytest.mark.parametrize("case", [Case(offset_groups=2, groups=2), DEPTHWISE_CASE],
                             ids=["columns", "depthwise"])
    @pytest.mark.parametrize("dtype, rtol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
    def test_half_precision_computed_in_float32(self, dtype, rtol, case):
        tensors = make_tensors(case, dtype, seed=8)
        grad_out = torch.randn(case.n, case.cout, *case.out_size).to(dtype)
        # The spec: computed in float32 from the very same (rounded) values.
        as32 = {k: None if t is None else t.float() for k, t in tensors.items()}
        expected = run_with_grads(fast_op(case), as32, grad_out.float())
        actual = run_with_grads(fast_op(case), tensors, grad_out)
        for name, value in actual.items():
            assert value.dtype == dtype, name
        assert_results_close(actual, expected, rtol)


# ----------------------------------------------------------------------------- bad input


def _valid_arguments() -> dict:
    """Valid arguments: groups 2, 3x3 kernel, 6x6 input -> 4x4 output."""
    case = Case(n=2, cin=4, cout=4, groups=2, height=6, width=6, padding=(0, 0))
    return make_tensors(case, dtype=torch.float32)


def _with(**changes) -> Callable[[dict], dict]:
    def apply(args: dict) -> dict:
        for name, change in changes.items():
            args[name] = change(args[name]) if callable(change) else change
        return args

    return apply


BAD_INPUTS = [
    ("offset-channels", _with(offset=torch.zeros(2, 17, 4, 4)), ValueError,
     r"offset\.shape\[1\] is not valid: got 17, expected a positive multiple of 2\*kh\*kw = 18"),
    ("offset-batch", _with(offset=torch.zeros(3, 18, 4, 4)), ValueError,
     r"offset\.shape is not valid: got \(3, 18, 4, 4\), expected \(2, 18, 4, 4\)"),
    ("offset-spatial", _with(offset=torch.zeros(2, 18, 5, 4)), ValueError,
     r"offset\.shape is not valid: got \(2, 18, 5, 4\), expected \(2, 18, 4, 4\)"),
    ("mask-channels", _with(mask=torch.ones(2, 8, 4, 4)), ValueError,
     r"mask\.shape is not valid: got \(2, 8, 4, 4\), expected \(2, 9, 4, 4\)"),
    ("mask-batch", _with(mask=torch.ones(1, 9, 4, 4)), ValueError,
     r"mask\.shape is not valid: got \(1, 9, 4, 4\), expected \(2, 9, 4, 4\)"),
    ("groups", _with(input=torch.zeros(2, 5, 6, 6)), ValueError,
     r"input\.shape\[1\] \(5\) must be a multiple of weight\.shape\[1\] \(2\)"),
    ("cout-groups", _with(weight=torch.zeros(3, 2, 3, 3), bias=None), ValueError,
     r"weight\.shape\[0\] \(3\) must be divisible by groups = 2"),
    ("offset-groups", _with(offset=torch.zeros(2, 54, 4, 4), mask=None), ValueError,
     r"input\.shape\[1\] \(4\) must be divisible by the offset groups .* = 3\)"),
    ("kernel-0x0", _with(weight=torch.zeros(4, 2, 0, 0), offset=torch.zeros(2, 0, 6, 6),
                         mask=None), ValueError,
     r"weight must have a kernel of at least 1 x 1 .* got weight\.shape \(4, 2, 0, 0\)"),
    ("bias-size", _with(bias=torch.zeros(5)), ValueError,
     r"bias\.shape is not valid: got \(5,\), expected \(4,\)"),
    ("input-int", _with(input=lambda t: t.long()), TypeError,
     r"input must be float16, bfloat16, float32 or float64, got torch\.int64"),
    ("offset-int", _with(offset=lambda t: t.int()), TypeError,
     r"offset must be float16, bfloat16, float32 or float64, got torch\.int32"),
    ("offset-dtype-mix", _with(offset=lambda t: t.double()), TypeError,
     r"offset has dtype torch\.float64 but input has torch\.float32"),
    ("mask-dtype-mix", _with(mask=lambda t: t.half()), TypeError,
     r"mask has dtype torch\.float16 but input has torch\.float32"),
    ("input-3d", _with(input=lambda t: t[0]), ValueError,
     r"input must be 4-D, got 3-D tensor of shape \(4, 6, 6\)"),
    ("weight-2d", _with(weight=lambda t: t.flatten(1)), ValueError, r"weight must be 4-D, got 2-D"),
    ("bias-2d", _with(bias=lambda t: t[None]), ValueError, r"bias must be 1-D, got 2-D"),
    ("offset-5d", _with(offset=lambda t: t[None]), ValueError, r"offset must be 4-D, got 5-D"),
    ("input-not-tensor", _with(input=lambda t: t.numpy()), TypeError,
     r"input must be a torch\.Tensor, got ndarray"),
    ("nan-offset", _with(offset=lambda t: t.index_put((torch.tensor([1]), torch.tensor([3])),
                                                      torch.tensor(math.nan))),
     ValueError, r"offset contains 16 NaN value\(s\); sample positions must not be NaN"),
    ("device-mix", _with(mask=lambda t: t.to("meta")), RuntimeError,
     r"mask is on meta but input is on cpu"),
    ("input-too-small", _with(input=torch.zeros(2, 4, 2, 6)), ValueError,
     r"input of spatial size \(2, 6\) is too small for kernel \(3, 3\)"),
]


@pytest.mark.parametrize("change, error, match", [c[1:] for c in BAD_INPUTS],
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_input(change, error, match):
    args = change(_valid_arguments())
    with pytest.raises(error, match=match):
        deform_conv2d(args["input"], args["offset"], args["weight"], args["bias"],
                      mask=args["mask"])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"stride": 0}, ValueError, r"stride and dilation must be >= 1 and padding >= 0"),
    ({"dilation": (1, 0)}, ValueError, r"stride and dilation must be >= 1"),
    ({"padding": -1}, ValueError, r"padding >= 0, got .*padding=\(-1, -1\)"),
    ({"stride": (1, 2, 3)}, TypeError, r"stride must be an int or a pair of ints, got \(1, 2, 3\)"),
    ({"padding": 1.5}, TypeError, r"padding must be an int or a pair of ints, got 1\.5"),
])
def test_bad_geometry(kwargs, error, match):
    args = _valid_arguments()
    with pytest.raises(error, match=match):
        deform_conv2d(args["input"], args["offset"], args["weight"], **kwargs)


def test_numpy_integers_are_taken_as_torchvision_takes_them():
    """np.int64 geometry (from configs, array shapes) was refused: 'stride must be an int
    or a pair of ints, got np.int64(1)'; torchvision and nn.Conv2d take it."""
    args = _valid_arguments()
    expected = deform_conv2d(args["input"], args["offset"], args["weight"])
    for one in (np.int64(1), (np.int32(1), np.int64(1))):
        got = deform_conv2d(args["input"], args["offset"], args["weight"], stride=one,
                            padding=np.int64(0), dilation=one)
        assert torch.equal(got, expected)
    with pytest.raises(TypeError, match=r"padding must be an int or a pair of ints, got True"):
        deform_conv2d(args["input"], args["offset"], args["weight"], padding=True)


# Memory safety: calls that could crash run in a child process with Numba's bounds checks
# (_isolated_calls.py); one process runs the calls of all the tests below.

ISOLATED_CALLS = Path(__file__).with_name("_isolated_calls.py")


@pytest.fixture(scope="module")
def isolated_results(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """``{call name: (outcome, detail)}`` of ``_isolated_calls.py`` run with bounds checks.

    The Numba cache directory must be a separate one (else Numba loads the unchecked machine
    code from the normal cache); pytest's cache keeps it between runs.
    """
    cache = getattr(request.config, "cache", None)
    directory = (cache.mkdir("numba-boundscheck") if cache is not None
                 else tmp_path_factory.mktemp("numba-boundscheck"))
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(directory)}
    run = subprocess.run([sys.executable, str(ISOLATED_CALLS)], capture_output=True,
                         text=True, timeout=300, env=env)
    results = {}
    for line in run.stdout.splitlines():
        if line.count("|") >= 2:
            name, outcome, detail = line.split("|", 2)
            results[name] = (outcome, detail)
    assert run.returncode == 0, (
        f"process died (code {run.returncode}) after {list(results)}: {run.stderr[-500:]}")
    return results


def test_kernels_stay_in_bounds(isolated_results):
    """Forward and backward with samples on and across every border, in row bands, with
    more channels than parallel blocks: no kernel touches memory outside its arrays."""
    for name in ("borders", "row-bands", "many-channels", "depthwise", "depthwise-bands",
                 "depthwise-inf", "huge", "inf", "single-pixel"):
        assert isolated_results[name] == ("returned", "ok"), name


# name -> what the error must mention (the argument that is wrong)
_DIRECT_CALL_ERRORS = {
    "input-groups": r"input\.shape\[1\]",
    "weight-channels": r"input\.shape\[1\] .*weight\.shape\[1\]",
    "mask-shape": r"mask\.shape",
    "offset-batch": r"offset\.shape",
    "offset-channels": r"offset\.shape\[1\]",
    "stride-0": r"stride and dilation must be >= 1",
    "nan-offset": r"offset contains 288 NaN",
}


def test_registered_op_checks_arguments(isolated_results):
    """``torch.ops.deformconv.deform_conv2d`` is public (README): bad shapes must raise the
    wrapper's clear ValueError, not corrupt memory or return garbage."""
    for name, pattern in _DIRECT_CALL_ERRORS.items():
        outcome, message = isolated_results[name]
        expected = "NaNOffsetError" if name == "nan-offset" else "ValueError"  # a ValueError
        assert outcome == expected, f"{name}: {outcome} {message}"
        assert re.search(pattern, message), f"{name}: {message!r} does not match {pattern!r}"


def test_empty_image_gives_bias_or_clear_error(isolated_results):
    """H or W = 0 with padding: either a clear ValueError naming ``input`` or, like
    torchvision, only the bias (every sample falls off the empty image; zero gradients)."""
    for name in ("height-0", "width-0"):
        outcome, detail = isolated_results[name]
        if outcome == "returned":
            assert float(detail) == 0.0, f"{name}: output - bias / offset grad up to {detail}"
        else:
            assert outcome == "ValueError" and "input" in detail, f"{name}: {outcome} {detail}"


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_no_output_channels_gives_an_empty_result(layout):
    """A weight with no output channels (pruned away, say) gives (N, 0, Hout, Wout) and zero
    gradients, as torchvision does; it used to fail inside the GEMM."""
    x = torch.randn(2, 4, 5, 6).to(memory_format=layout).requires_grad_()
    offset = torch.randn(2, 2 * 9, 3, 3, requires_grad=True)
    weight = torch.randn(0, 4, 3, 3, requires_grad=True)
    bias = torch.randn(0, requires_grad=True)
    out = deform_conv2d(x, offset, weight, bias, stride=2, padding=1)
    assert out.shape == torchvision.ops.deform_conv2d(x, offset, weight, bias, stride=2,
                                                      padding=1).shape == (2, 0, 3, 3)
    assert out.is_contiguous(memory_format=layout)
    out.sum().backward()
    for leaf in (x, offset, weight, bias):
        assert torch.equal(leaf.grad, torch.zeros_like(leaf))


@pytest.mark.filterwarnings("ignore")  # torch's warning that the per-sample fallback is slow
def test_vmap_matches_a_loop():
    """torch.func.vmap runs the op through torch's per-sample fallback, as torchvision's op;
    the layout check used to fail on batched tensors (channels-last ones included)."""
    weight = torch.randn(2, 2, 3, 3)
    images = torch.randn(3, 2, 2, 5, 5)
    offsets = torch.randn(3, 2, 18, 5, 5)
    got = torch.func.vmap(lambda x, o: deform_conv2d(x, o, weight, padding=1))(images, offsets)
    expected = torch.stack([deform_conv2d(x, o, weight, padding=1)
                            for x, o in zip(images, offsets, strict=True)])
    assert torch.equal(got, expected)
    channels_last = images.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    got = torch.func.vmap(lambda x: deform_conv2d(x, offsets[0], weight, padding=1))(
        channels_last)
    torch.testing.assert_close(got, torch.stack([deform_conv2d(x, offsets[0], weight, padding=1)
                                                 for x in images]))


@pytest.mark.parametrize("api", FORWARD_AD_APIS)
@pytest.mark.parametrize(("index", "name"), list(enumerate(
    ["input", "offset", "weight", "bias", "mask"])))
def test_forward_mode_ad_is_refused(api, index, name):
    """A forward tangent was dropped silently: torch.func.jvp gave a zero tangent,
    forward_ad none (the autograd formula is reverse-mode only)."""
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in
            [(1, 2, 5, 5), (1, 18, 3, 3), (3, 2, 3, 3), (3,), (1, 9, 3, 3)]]
    with pytest.raises(NotImplementedError, match=re.escape(
            f"forward-mode AD (torch.func.jvp, jacfwd / torch.autograd.forward_ad) is not "
            f"supported by deform_conv2d: {name} carries a forward tangent; use reverse mode")):
        tangent_of(api, lambda *a: deform_conv2d(a[0], a[1], a[2], a[3], mask=a[4]), args, index)


def test_forward_mode_ad_of_what_the_op_does_not_depend_on_still_runs():
    """Under a dual level, inputs without a tangent pass: the op is a constant there."""
    gen = torch.Generator().manual_seed(0)
    x, offset = torch.randn(1, 2, 5, 5, generator=gen), torch.randn(1, 18, 3, 3, generator=gen)
    weight, scale = torch.randn(3, 2, 3, 3, generator=gen), torch.tensor(2.0)
    out, tangent = torch.func.jvp(lambda s: s * deform_conv2d(x, offset, weight), (scale,),
                                  (torch.ones_like(scale),))
    torch.testing.assert_close(out, 2 * tangent)


# ----------------------------------------------------------------------------- torch.library


@pytest.mark.parametrize("with_mask, with_bias, geometry", [
    (True, True, (1, 1, 1, 1, 1, 1)),
    (False, True, (2, 1, 0, 1, 1, 2)),
    (True, False, (1, 2, 1, 0, 2, 1)),
])
@pytest.mark.parametrize("n, cout, groups", [(2, 2, 2), (1, 256, 1), (2, 256, 1)],
                         ids=["conv-form", "matmul-form-1-image", "matmul-form-2-images"])
def test_opcheck(with_mask, with_bias, geometry, n, cout, groups):
    """Both forward GEMM forms (groups = 1 and Cout >= 256 in float32 takes the inner
    product, whose one-image result is returned as it is)."""
    sh, sw, ph, pw, dh, dw = geometry
    case = Case(n=n, cin=4, cout=cout, groups=groups, offset_groups=2, height=7, width=6,
                stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), with_mask=with_mask,
                with_bias=with_bias)
    t = {k: None if v is None else v.float().requires_grad_()
         for k, v in make_tensors(case, seed=9).items()}
    torch.library.opcheck(
        torch.ops.deformconv.deform_conv2d.default,
        (t["input"], t["offset"], t["weight"], t["bias"], t["mask"], *geometry),
    )


def test_opcheck_backward_op():
    case = Case(n=2, cin=4, cout=2, groups=2, offset_groups=2, stride=(2, 1))
    t = make_tensors(case, torch.float32, seed=10)
    grad_out = torch.randn(case.n, case.cout, *case.out_size)
    for mask in (t["mask"], None):
        torch.library.opcheck(
            torch.ops.deformconv.deform_conv2d_backward.default,
            (grad_out, t["input"], t["offset"], t["weight"], mask, 2, 1, 1, 1, 1, 1,
             True, True, True),
        )


def test_double_backward_raises_a_clear_error():
    case = Case(n=1, cin=2, cout=2)
    t = make_tensors(case, torch.float64, seed=11)
    leaves = [t["input"].requires_grad_(), t["offset"].requires_grad_(),
              t["weight"].requires_grad_()]
    out = deform_conv2d(*leaves, padding=case.padding)
    grad_input, = torch.autograd.grad(out.sum(), leaves[0], create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        grad_input.sum().backward()


@pytest.mark.parametrize("change, error, match", [
    ({"grad_out": torch.zeros(2, 2, 3, 3)}, ValueError,
     r"grad_out\.shape is not valid: got \(2, 2, 3, 3\), expected \(2, 2, 3, 5\)"),
    ({"grad_out": torch.zeros(2, 2, 3, 5, dtype=torch.float64)}, TypeError,
     r"grad_out has dtype torch\.float64 but input has torch\.float32"),
    ({"offset": torch.zeros(2, 17, 3, 5)}, ValueError, r"offset\.shape\[1\] is not valid"),
    ({"mask": torch.zeros(2, 1, 3, 5)}, ValueError, r"mask\.shape is not valid"),
    ({"weight": torch.zeros(2, 3, 3, 3)}, ValueError, r"must be a multiple of weight\.shape"),
    ({"offset": torch.full((2, 36, 3, 5), math.nan)}, ValueError, r"offset contains 1080 NaN"),
], ids=["grad-out-shape", "grad-out-dtype", "offset-channels", "mask-shape", "weight",
        "nan-offset"])
def test_backward_op_checks_its_arguments(change, error, match):
    """The registered backward op is public too: bad arguments give the forward's errors."""
    case = Case(n=2, cin=4, cout=2, groups=2, offset_groups=2, stride=(2, 1))
    t = {**make_tensors(case, torch.float32, seed=10),
         "grad_out": torch.randn(case.n, case.cout, *case.out_size)}
    t.update(change)
    with pytest.raises(error, match=match):
        torch.ops.deformconv.deform_conv2d_backward(
            t["grad_out"], t["input"], t["offset"], t["weight"], t["mask"], 2, 1, 1, 1, 1, 1,
            True, True, True)


@pytest.mark.parametrize("layout", ["nchw", "channels-last"])
def test_torch_compile_fullgraph_matches_eager(layout):
    case = Case(n=2, cin=4, cout=4, groups=2, offset_groups=2, stride=(2, 1), dilation=(1, 2))
    tensors = {k: v.float() for k, v in make_tensors(case, seed=11).items()}
    if layout == "channels-last":
        tensors = channels_last(tensors)
    grad_out = torch.randn(case.n, case.cout, *case.out_size)
    compiled = torch.compile(fast_op(case), fullgraph=True)
    expected = run_with_grads(fast_op(case), tensors, grad_out)
    actual = run_with_grads(compiled, tensors, grad_out)
    assert_results_close(actual, expected, 1e-5)
