"""The Triton backend (``DEFORMCONV_BACKEND=triton``) against the float64 reference.

Without a GPU the kernels run on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``,
which ``tests/conftest.py`` sets before anything imports triton): slow, so the shapes are
tiny. With CUDA
the same tests run compiled on the GPU, plus the ``needs_cuda`` ones (larger shapes, the
float32 kernels against float64 on the same device).

Tolerances are relative to each result's largest magnitude: float32 1e-4; float16 5e-3
and bfloat16 3e-2 against the reference computed in float64 from the same rounded values
(the products and sums are float32; the rounding of the result and of sampled values fed
to ``tl.dot`` in the data's dtype is what remains).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from deformconv.ops import _dispatch, deform_conv2d, deform_psroi_pool, deform_roi_pool, reference

from .roi_helpers import assert_close_all, make_rois, near_half_rois, outputs_and_grads
from .test_deform_conv import (
    GRAD_NAMES,
    Case,
    _sample_positions,
    _torchvision_op,
    assert_results_close,
    make_tensors,
    reference_op,
    run_with_grads,
)
from .test_deform_psroi_pool import assert_reduced_precision_gradients_exact

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and not _dispatch.triton_interpreted(),
    reason="no GPU, and TRITON_INTERPRET is off: nothing to run the Triton kernels",
)
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True)
def _triton_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_dispatch.BACKEND_ENV, "triton")


@pytest.fixture(params=["gemm", "direct"])
def conv_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Force the implicit-GEMM or the direct-aggregation kernels on any shape."""
    from deformconv.ops._triton import deform_conv as triton_conv

    monkeypatch.setattr(triton_conv, "_use_gemm", lambda cin_g, cout_g: request.param == "gemm")
    return request.param


def _on_device(tensors: dict, dtype: torch.dtype) -> dict:
    return {k: None if t is None else t.to(DEVICE, dtype) for k, t in tensors.items()}


def _conv_op(case: Case):
    def fn(input, offset, weight, bias=None, mask=None):
        return deform_conv2d(input, offset, weight, bias, case.stride, case.padding,
                             case.dilation, mask)

    return fn


def _check_conv(case: Case, dtype: torch.dtype, seed: int = 0,
                requires_grad: tuple[str, ...] = GRAD_NAMES) -> None:
    """Output and gradients on the Triton backend vs the float64 reference of the same
    (rounded) values."""
    tensors = make_tensors(case, torch.float32, seed)
    rounded = {k: None if t is None else t.to(dtype).double() for k, t in tensors.items()}
    grad_out = torch.randn(case.n, case.cout, *case.out_size, dtype=torch.float64).to(dtype)
    expected = run_with_grads(reference_op(case), rounded, grad_out.double(), requires_grad)
    actual = run_with_grads(_conv_op(case), _on_device(rounded, dtype), grad_out.to(DEVICE),
                            requires_grad)
    for name, value in actual.items():
        assert value.dtype == dtype and value.device.type == DEVICE, name
    assert_results_close({k: v.cpu() for k, v in actual.items()}, expected, TOLERANCE[dtype])


CONV_CASES = {
    # groups, offset groups, mask, stride, dilation, a non-square kernel, odd sizes
    "groups-stride-dilation": Case(n=2, cin=4, cout=6, groups=2, offset_groups=2, height=6,
                                   width=5, kernel=(3, 2), stride=(2, 1), dilation=(1, 2)),
    # three offset groups across two conv groups; v1 without bias
    "offset-groups-straddle": Case(n=1, cin=6, cout=4, groups=2, offset_groups=3, height=5,
                                   width=6, with_mask=False, with_bias=False),
    "depthwise": Case(n=2, cin=4, cout=4, groups=4, offset_groups=2, height=5, width=5,
                      stride=(1, 2)),
    "depthwise-multiplier": Case(n=1, cin=2, cout=6, groups=2, height=4, width=6,
                                 kernel=(2, 3), padding=(0, 1)),
    "1x1": Case(n=2, cin=3, cout=2, kernel=(1, 1), padding=(0, 0), height=3, width=4),
}


class TestDeformConv2d:
    @pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
    def test_matches_reference(self, case, conv_path):
        _check_conv(case, torch.float32)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_precision(self, dtype, conv_path):
        _check_conv(CONV_CASES["groups-stride-dilation"], dtype, seed=3)

    def test_wide_channels_take_the_gemm_in_several_channel_blocks(self):
        """Cin = 48 in one offset group: channel blocks of 32 with a masked tail, and
        Cout = 16 -- the shapes the default heuristic sends to ``tl.dot``."""
        from deformconv.ops._triton import deform_conv as triton_conv

        assert triton_conv._use_gemm(48, 16)
        _check_conv(Case(n=1, cin=48, cout=16, height=4, width=3, offset_scale=1.0),
                    torch.float32, seed=5)

    @pytest.mark.parametrize("requires_grad", [("input",), ("offset", "mask"), ("weight",)])
    def test_partial_gradients(self, requires_grad, conv_path):
        _check_conv(CONV_CASES["groups-stride-dilation"], torch.float32, seed=6,
                    requires_grad=requires_grad)

    def test_weight_gradient_split_over_pixels(self, conv_path, monkeypatch):
        """Three pixel splits summed on the host give the same weight gradient."""
        from deformconv.ops._triton import deform_conv as triton_conv

        monkeypatch.setattr(triton_conv, "_weight_split", lambda *args: 3)
        case = Case(n=3, cin=4, cout=4, groups=2, offset_groups=2, height=8, width=8)
        _check_conv(case, torch.float32, seed=7, requires_grad=("weight",))

    @pytest.mark.parametrize("offsets", ["zero", "integer"])
    def test_grid_samples_on_the_border_match_torchvision(self, offsets, conv_path):
        """Integer-grid samples with padding, many on row/column -1 and H/W: values and
        the offset gradient (right-hand derivative) equal torchvision's and the reference's."""
        case = Case(n=2, cin=4, cout=4, groups=2, offset_groups=2, height=5, width=4,
                    padding=(1, 1))
        tensors = make_tensors(case, seed=21)
        gen = torch.Generator().manual_seed(21)
        if offsets == "zero":
            tensors["offset"] = torch.zeros_like(tensors["offset"])
        else:
            tensors["offset"] = torch.randint(-2, 3, tensors["offset"].shape, generator=gen,
                                              dtype=torch.float64)
        rows, cols = _sample_positions(case, tensors["offset"])
        assert rows.eq(-1).any() and cols.eq(-1).any()
        grad_out = torch.randn(case.n, case.cout, *case.out_size, generator=gen,
                               dtype=torch.float64)
        expected = run_with_grads(_torchvision_op(case), tensors, grad_out)
        assert_results_close(run_with_grads(reference_op(case), tensors, grad_out), expected,
                             1e-10)
        actual = run_with_grads(_conv_op(case), _on_device(tensors, torch.float32),
                                grad_out.float().to(DEVICE))
        assert_results_close({k: v.cpu() for k, v in actual.items()}, expected, 1e-4)

    @pytest.mark.parametrize("shift", [1e6, -float("inf")])
    def test_all_samples_outside(self, shift):
        case = CONV_CASES["groups-stride-dilation"]
        tensors = _on_device(make_tensors(case, torch.float32, seed=8), torch.float32)
        tensors["offset"] = torch.full_like(tensors["offset"], shift)
        grad_out = torch.randn(case.n, case.cout, *case.out_size, device=DEVICE)
        results = run_with_grads(_conv_op(case), tensors, grad_out)
        bias = tensors["bias"].view(1, -1, 1, 1).expand_as(results["out"])
        assert torch.equal(results["out"], bias)
        for name in ("grad_input", "grad_offset", "grad_mask", "grad_weight"):
            assert torch.equal(results[name], torch.zeros_like(results[name])), name

    def test_empty_batch(self):
        case = Case(n=0)
        tensors = _on_device(make_tensors(case, torch.float32), torch.float32)
        grad_out = torch.zeros(0, case.cout, *case.out_size, device=DEVICE)
        results = run_with_grads(_conv_op(case), tensors, grad_out)
        assert results["out"].shape == (0, case.cout, *case.out_size)
        assert torch.equal(results["grad_weight"], torch.zeros_like(tensors["weight"]))

    def test_strided_tensors_in_the_registered_op(self):
        """Direct calls may hand any strides: NCHW, channels-last and sliced views; the
        result is channels-last for a channels-last input, as on the CPU backends."""
        case = Case(n=2, cin=4, cout=6, groups=2, offset_groups=2, stride=(1, 2))
        tensors = _on_device(make_tensors(case, torch.float32, seed=9), torch.float32)
        expected = _conv_op(case)(**tensors)

        def strided(t: Tensor) -> Tensor:  # every other element of a copy twice as wide
            view = torch.stack([t, torch.zeros_like(t)], dim=-1).flatten(-2)[..., ::2]
            assert torch.equal(view, t) and not view.is_contiguous()
            return view

        x_cl = tensors["input"].contiguous(memory_format=torch.channels_last)
        for x in (x_cl, strided(tensors["input"])):
            out = torch.ops.deformconv.deform_conv2d(
                x, strided(tensors["offset"]), strided(tensors["weight"]),
                strided(tensors["bias"]), strided(tensors["mask"]),
                *case.stride, *case.padding, *case.dilation)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
            assert out.is_contiguous(memory_format=torch.channels_last) == (x is x_cl)
            assert out.is_contiguous() == (x is not x_cl)

    def test_opcheck(self):
        case = Case(n=1, cin=4, cout=2, groups=2, offset_groups=2, height=4, width=4)
        t = {k: v.requires_grad_() for k, v in
             _on_device(make_tensors(case, torch.float32, seed=10), torch.float32).items()}
        torch.library.opcheck(
            torch.ops.deformconv.deform_conv2d.default,
            (t["input"], t["offset"], t["weight"], t["bias"], t["mask"], 1, 1, 1, 1, 1, 1),
            test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
        )

    def test_torch_compile_fullgraph(self):
        case = CONV_CASES["depthwise"]
        tensors = _on_device(make_tensors(case, torch.float32, seed=11), torch.float32)
        compiled = torch.compile(_conv_op(case), fullgraph=True, backend="aot_eager")
        grad_out = torch.randn(case.n, case.cout, *case.out_size, device=DEVICE)
        assert_results_close(run_with_grads(compiled, tensors, grad_out),
                             run_with_grads(_conv_op(case), tensors, grad_out), 1e-6)


# ----------------------------------------------------------------------------- RoI pooling


class Recorder:
    """Stands in for a Triton kernel: records the launch grid, runs nothing."""

    def __init__(self) -> None:
        self.grids: list[tuple[int, ...]] = []

    def __getitem__(self, grid: tuple[int, ...]):
        self.grids.append(grid)
        return lambda *args, **kwargs: None


def _wide_depthwise_backward() -> None:
    """Depthwise 7x7, an offset group per channel: 1400 * 49 = 68600 (offset group, kernel
    point) pairs, each a program of the data gradient."""
    x, weight = torch.randn(1, 1400, 7, 7), torch.randn(1400, 1, 7, 7)
    offset, grad_out = torch.zeros(1, 2 * 1400 * 49, 1, 1), torch.randn(1, 1400, 1, 1)
    torch.ops.deformconv.deform_conv2d_backward(
        grad_out.to(DEVICE), x.to(DEVICE), offset.to(DEVICE), weight.to(DEVICE), None,
        1, 1, 0, 0, 1, 1, True, True, False)


def _wide_kernel_weight_gradient() -> None:
    """7x7 from 2048 channels: kk * Cin/groups = 100352 (kernel point, channel) programs."""
    x, weight = torch.randn(1, 2048, 7, 7), torch.randn(8, 2048, 7, 7)
    offset, grad_out = torch.zeros(1, 98, 7, 7), torch.randn(1, 8, 7, 7)
    torch.ops.deformconv.deform_conv2d_backward(
        grad_out.to(DEVICE), x.to(DEVICE), offset.to(DEVICE), weight.to(DEVICE), None,
        1, 1, 3, 3, 1, 1, False, False, True)


def _wide_depthwise_forward() -> None:
    """1x1 depthwise over 2**21 channels: 65536 blocks of 32 output channels."""
    channels = 2**21
    deform_conv2d(torch.randn(1, channels, 1, 1, device=DEVICE),
                  torch.zeros(1, 2, 1, 1, device=DEVICE),
                  torch.randn(channels, 1, 1, 1, device=DEVICE))


def _wide_roi_pool() -> None:
    """2**22 channels: 65536 blocks of 64 channels for one RoI."""
    rois = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0]], device=DEVICE)
    deform_roi_pool(torch.randn(1, 2**22, 2, 2, device=DEVICE), rois, output_size=1)


def _wide_psroi_pool() -> None:
    """output_dim 2**22: 65536 blocks of 64 bins for one RoI."""
    rois = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0]], device=DEVICE)
    deform_psroi_pool(torch.randn(1, 2**22, 2, 2, device=DEVICE), rois, spatial_scale=1.0,
                      output_dim=2**22, group_size=1, pooled_size=1)


@pytest.mark.parametrize(("module", "kernel", "call"), [
    ("deform_conv", "backward_data", _wide_depthwise_backward),
    ("deform_conv", "weight_grad_direct", _wide_kernel_weight_gradient),
    ("deform_conv", "forward_direct", _wide_depthwise_forward),
    ("deform_roi_pool", "_forward_kernel", _wide_roi_pool),
    ("deform_psroi_pool", "_forward_kernel", _wide_psroi_pool),
], ids=["conv-data-gradient", "conv-weight-gradient", "conv-forward", "roi-pool",
        "psroi-pool"])
def test_launch_grids_fit_cuda_past_65535_blocks_of_a_kind(module, kernel, call, monkeypatch):
    """Layers that used to put over 65535 programs on grid axis 1 or 2 (CUDA's limit
    there; the forward or backward refused them) launch every program on axis 0."""
    import importlib

    launched = importlib.import_module(f"deformconv.ops._triton.{module}")
    recorder = Recorder()
    kernels = launched.kernels if module == "deform_conv" else launched
    monkeypatch.setattr(kernels, kernel, recorder)
    monkeypatch.setattr(launched, "_use_gemm", lambda cin_g, cout_g: False, raising=False)
    call()
    assert len(recorder.grids) == 1
    (grid,) = recorder.grids
    assert len(grid) == 1 and 65535 < grid[0] <= 2**31 - 1, grid


def test_launch_grid_over_int32_programs_is_refused():
    from deformconv.ops._triton.launch import flat_grid

    with pytest.raises(ValueError, match=r"\(65536, 65536\) has 4294967296 programs"):
        flat_grid((65536, 65536), "deform_conv2d forward")


def _roi_case(seed: int, k: int = 8, with_offset: bool = True, with_mask: bool = True):
    """Every kind of RoI of ``make_rois`` (degenerate, tiny, huge, outside the map)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 6, 7, generator=gen, dtype=torch.float64)
    rois = make_rois(gen, k, 2, 6 / 0.5, 7 / 0.5)
    offset = 3 * torch.randn(k, 2, 2, 3, generator=gen, dtype=torch.float64) if with_offset \
        else None
    mask = torch.rand(k, 1, 2, 3, generator=gen, dtype=torch.float64) if with_mask else None
    return x, rois, offset, mask


def _check_pool(fn_fast, fn_reference, leaves: list, dtype: torch.dtype, names: list[str]):
    rounded = [None if t is None else t.to(dtype).double() for t in leaves]
    out_ref, grads_ref = outputs_and_grads(fn_reference, rounded)
    grad_out = torch.linspace(-1, 1, out_ref.numel(), dtype=torch.float64).view_as(out_ref)
    out_ref, grads_ref = outputs_and_grads(fn_reference, rounded, grad_out)
    out, grads = outputs_and_grads(
        fn_fast, [None if t is None else t.to(DEVICE, dtype) for t in rounded],
        grad_out.to(DEVICE, dtype))
    actual = [out, *grads]
    for a in actual:
        assert a is None or (a.dtype == dtype and a.device.type == DEVICE)
    actual = [None if a is None else a.double().cpu() for a in actual]
    expected = [out_ref, *grads_ref]
    for name, a, e in zip(names, actual, expected, strict=True):
        tol = TOLERANCE[dtype] * max(1.0, e.abs().max().item()) if e is not None and e.numel() \
            else TOLERANCE[dtype]
        assert_close_all([name], [a], [e], rtol=TOLERANCE[dtype], atol=tol)


class TestDeformRoIPool:
    @pytest.mark.parametrize("sampling_ratio, aligned, with_offset, with_mask", [
        (2, True, True, True), (1, False, True, False), (0, True, False, True),
    ])
    def test_matches_reference(self, sampling_ratio, aligned, with_offset, with_mask):
        x, rois, offset, mask = _roi_case(1, 6 if sampling_ratio == 0 else 8, with_offset,
                                          with_mask)
        options = (0.5, sampling_ratio, 0.2, aligned)

        def fast(x, offset, mask):
            return deform_roi_pool(x, rois.float().to(DEVICE), offset, (2, 3), *options,
                                   mask=mask)

        def slow(x, offset, mask):
            return reference.deform_roi_pool(x, rois, offset, (2, 3), *options, mask)

        _check_pool(fast, slow, [x, offset, mask], torch.float32,
                    ["output", "grad input", "grad offset", "grad mask"])

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_precision(self, dtype):
        x, rois, offset, mask = _roi_case(2)

        def fast(x, offset, mask):
            return deform_roi_pool(x, rois.float().to(DEVICE), offset, (2, 3), 0.5, 2,
                                   mask=mask)

        def slow(x, offset, mask):
            return reference.deform_roi_pool(x, rois, offset, (2, 3), 0.5, 2, 0.1, True, mask)

        _check_pool(fast, slow, [x, offset, mask], dtype,
                    ["output", "grad input", "grad offset", "grad mask"])

    @pytest.mark.parametrize("row", [-1.0, 0.0, 3.0, 4.0])
    def test_offset_gradient_on_grid_lines(self, row):
        """A sample exactly on a kink of clamp-then-bilinear (H = 5): the reference's
        right-hand derivative."""
        x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
        rois = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]], dtype=torch.float64)
        offset = torch.tensor([0.25, row - 2.0], dtype=torch.float64).view(1, 2, 1, 1)

        def fast(x, offset):
            return deform_roi_pool(x, rois.float().to(DEVICE), offset, (1, 1), 1.0, 1, 0.25,
                                   False)

        def slow(x, offset):
            return reference.deform_roi_pool(x, rois, offset, (1, 1), 1.0, 1, 0.25, False)

        _check_pool(fast, slow, [x, offset], torch.float32,
                    ["output", "grad input", "grad offset"])

    def test_no_rois(self):
        x = torch.randn(2, 3, 5, 5, device=DEVICE, requires_grad=True)
        offset = torch.zeros(0, 2, 2, 2, device=DEVICE, requires_grad=True)
        out = deform_roi_pool(x, torch.zeros(0, 5, device=DEVICE), offset, 2)
        assert out.shape == (0, 3, 2, 2)
        out.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))


class TestDeformPSRoIPool:
    @pytest.mark.parametrize("classes, group_size, pooled_size, part_size", [
        (2, 3, 3, 2), (0, 2, 3, 3), (1, 1, 4, 4),
    ])
    def test_matches_reference(self, classes, group_size, pooled_size, part_size):
        _check_psroi(torch.float32, classes, group_size, pooled_size, part_size)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_precision(self, dtype):
        _check_psroi(dtype, 2, 2, 2, 2)

    @pytest.mark.parametrize(("dtype", "sample_per_part"),
                             [(torch.float16, 47), (torch.bfloat16, 17)])
    def test_half_precision_gradients_divide_by_the_exact_sample_count(self, dtype,
                                                                      sample_per_part):
        """The saved sample count was in the input's dtype (see the Numba test)."""
        assert_reduced_precision_gradients_exact(dtype, sample_per_part, DEVICE)

    def test_no_rois(self):
        x = torch.randn(1, 4, 5, 5, device=DEVICE, requires_grad=True)
        out = deform_psroi_pool(x, torch.zeros(0, 5, device=DEVICE), None, spatial_scale=1.0,
                                output_dim=1, group_size=2, pooled_size=2)
        assert out.shape == (0, 1, 2, 2)
        out.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))


def test_psroi_float64_rois_are_rounded_in_float64():
    """The kernels rounded float64 RoIs after their cast to the input's float32: a corner
    just below a half rounded the other way."""
    x = torch.randn(1, 72, 20, 20, generator=torch.Generator().manual_seed(0))
    rois = near_half_rois()
    options = {"spatial_scale": 0.25, "output_dim": 8, "group_size": 3, "pooled_size": 3}
    expected = reference.deform_psroi_pool(x, rois, None, **options)[0]
    got = deform_psroi_pool(x.to(DEVICE), rois.to(DEVICE), **options).cpu()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def _check_psroi(dtype: torch.dtype, classes: int, group_size: int, pooled_size: int,
                 part_size: int) -> None:
    gen = torch.Generator().manual_seed(classes + 10 * group_size)
    output_dim = 4
    x = torch.randn(2, output_dim * group_size**2, 6, 7, generator=gen, dtype=torch.float64)
    rois = make_rois(gen, 7, 2, 6 / 0.5, 7 / 0.5)
    offset = (2 * torch.randn(7, 2 * classes, part_size, part_size, generator=gen,
                              dtype=torch.float64) if classes else None)
    args = (0.5, output_dim, group_size, pooled_size, part_size, 3, 0.1)

    def fast(x, offset):
        return deform_psroi_pool(x, rois.float().to(DEVICE), offset, spatial_scale=0.5,
                                 output_dim=output_dim, group_size=group_size,
                                 pooled_size=pooled_size, part_size=part_size,
                                 sample_per_part=3, trans_std=0.1)

    def slow(x, offset):
        return reference.deform_psroi_pool(x, rois, offset, *args)[0]

    _check_pool(fast, slow, [x, offset], dtype, ["output", "grad input", "grad offset"])
    _, count = torch.ops.deformconv.deform_psroi_pool(
        x.to(DEVICE, dtype), rois.float().to(DEVICE),
        None if offset is None else offset.to(DEVICE, dtype), *args)
    assert torch.equal(count.cpu().double(), reference.deform_psroi_pool(
        x.to(dtype).double(), rois, None if offset is None else offset.to(dtype).double(),
        *args)[1])


# ----------------------------------------------------------------------------- CUDA only


@needs_cuda
@pytest.mark.parametrize("case", [
    Case(n=4, cin=64, cout=64, groups=1, offset_groups=4, height=24, width=20,
         dilation=(2, 2), padding=(2, 2)),
    Case(n=2, cin=64, cout=64, groups=64, offset_groups=4, height=20, width=24),
    Case(n=3, cin=96, cout=48, groups=3, offset_groups=2, height=17, width=19, stride=(2, 1)),
], ids=["dense", "depthwise", "groups"])
def test_cuda_float32_matches_float64(case):
    """Larger shapes on the GPU: the Triton float32 kernels against the float64 torch path
    on the same device (float64 never runs on Triton)."""
    tensors = make_tensors(case, torch.float32, seed=12)
    grad_out = torch.randn(case.n, case.cout, *case.out_size)
    expected = run_with_grads(_conv_op(case), _on_device(tensors, torch.float64),
                              grad_out.double().to(DEVICE))
    actual = run_with_grads(_conv_op(case), _on_device(tensors, torch.float32),
                            grad_out.to(DEVICE))
    assert_results_close(actual, {k: v.float() for k, v in expected.items()}, 1e-4)


@needs_cuda
def test_cuda_matches_torchvision_float32():
    case = Case(n=8, cin=128, cout=128, offset_groups=4, height=19, width=31, dilation=(2, 2),
                padding=(2, 2))
    tensors = _on_device(make_tensors(case, torch.float32, seed=13), torch.float32)
    grad_out = torch.randn(case.n, case.cout, *case.out_size, device=DEVICE)
    expected = run_with_grads(_torchvision_op(case), tensors, grad_out)
    assert_results_close(run_with_grads(_conv_op(case), tensors, grad_out), expected, 1e-4)


@needs_cuda
def test_cuda_roi_pools_float32_match_float64():
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(2, 64, 38, 50, generator=gen, dtype=torch.float64)
    rois = make_rois(gen, 200, 2, 38 * 16, 50 * 16)
    offset = torch.randn(200, 2, 7, 7, generator=gen, dtype=torch.float64)
    results = {}
    for dtype in (torch.float64, torch.float32):
        leaves = [t.to(DEVICE, dtype) for t in (x, offset)]
        results[dtype] = outputs_and_grads(
            lambda x, o: deform_roi_pool(x, rois.float().to(DEVICE), o, 7, 1 / 16, 2), leaves)
    out64, grads64 = results[torch.float64]
    out32, grads32 = results[torch.float32]
    for a, e in zip([out32, *grads32], [out64, *grads64], strict=True):
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-4 * scale)


# ----------------------------------------------------------------------------- determinism


def _atomic_backward_calls():
    """Per op: a tiny call of it on (input, offset), the backward of whose input gradient
    uses float32 atomics on the Triton backend."""
    rois = torch.tensor([[0, 1.0, 1, 6, 6]], device=DEVICE)
    return {
        "deform_conv2d": lambda x, offset: deform_conv2d(
            x, offset.expand(1, 18, 8, 8), torch.ones(2, 2, 3, 3, device=DEVICE), padding=1),
        "deform_roi_pool": lambda x, offset: deform_roi_pool(
            x, rois, offset.view(1, 2, 3, 3)[..., :2, :2], output_size=2, sampling_ratio=2),
        "deform_psroi_pool": lambda x, offset: deform_psroi_pool(
            x, rois, offset.view(1, 2, 3, 3)[..., :2, :2], spatial_scale=1.0, output_dim=2,
            group_size=1, pooled_size=2, part_size=2),
    }


@pytest.mark.parametrize("op", sorted(_atomic_backward_calls()))
class TestDeterminismAlert:
    """Each backward with atomics alerts as torch's non-deterministic ops do."""

    @staticmethod
    def _backward(op: str, input_grad: bool = True, compiled: bool = False) -> None:
        fn = _atomic_backward_calls()[op]
        if compiled:
            fn = torch.compile(fn, fullgraph=True, backend="aot_eager")
        x = torch.randn(1, 2, 8, 8, device=DEVICE, requires_grad=input_grad)
        offset = torch.full((1, 18, 1, 1), 0.3, device=DEVICE, requires_grad=True)
        fn(x, offset).sum().backward()

    def test_raises_under_deterministic_algorithms(self, op, deterministic_mode):
        deterministic_mode(True)
        with pytest.raises(RuntimeError, match=rf"{op} backward on the triton backend .*"
                                               r"DEFORMCONV_BACKEND=torch"):
            self._backward(op)

    def test_warns_with_warn_only(self, op, deterministic_mode):
        deterministic_mode(True, warn_only=True)
        with pytest.warns(UserWarning, match=rf"{op} backward on the triton backend"):
            self._backward(op)

    def test_silent_without_input_gradient(self, op, deterministic_mode):
        """No input gradient, no atomics: the offset gradient is deterministic."""
        deterministic_mode(True)
        self._backward(op, input_grad=False)

    def test_torch_backend_is_the_deterministic_one(self, op, deterministic_mode,
                                                    monkeypatch):
        deterministic_mode(True)
        monkeypatch.setenv(_dispatch.BACKEND_ENV, "torch")
        self._backward(op)


def test_determinism_alert_under_torch_compile(deterministic_mode):
    deterministic_mode(True)
    with pytest.raises(RuntimeError, match="deform_conv2d backward on the triton backend"):
        TestDeterminismAlert._backward("deform_conv2d", compiled=True)
