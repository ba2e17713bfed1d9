"""deform_roi_pool: torchvision roi_align without offsets, the reference with offsets/mask."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from deformconv.ops import deform_roi_pool, reference
from deformconv.ops._torch import deform_roi_pool as torch_backend

from .forward_ad_helpers import FORWARD_AD_APIS, tangent_of
from .roi_helpers import (
    RoIOpTester,
    assert_close_all,
    assert_right_hand_slope,
    below_autograd,
    integer_rois,
    make_rois,
    outputs_and_grads,
)

F64 = {"rtol": 1e-9, "atol": 1e-9}


def _case(seed: int, n: int, c: int, h: int, w: int, k: int, pooled: tuple[int, int],
          offset_scale: float, with_offset: bool, with_mask: bool, scale: float):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    rois = make_rois(gen, k, n, h / scale, w / scale)
    offset = (offset_scale * torch.randn(k, 2, *pooled, generator=gen, dtype=torch.float64)
              if with_offset else None)
    mask = torch.rand(k, 1, *pooled, generator=gen, dtype=torch.float64) if with_mask else None
    return x, rois, offset, mask


cases = st.fixed_dictionaries({
    "seed": st.integers(0, 2**31 - 1),
    "n": st.integers(1, 2),
    "c": st.integers(1, 3),
    "h": st.integers(1, 9),
    "w": st.integers(1, 9),
    "k": st.integers(0, 7),
    "pooled": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "offset_scale": st.sampled_from([0.5, 3.0, 20.0]),
    "with_offset": st.booleans(),
    "with_mask": st.booleans(),
    "scale": st.sampled_from([1.0, 0.5, 0.3]),
})
options = st.fixed_dictionaries({
    "sampling_ratio": st.integers(0, 3),
    "gamma": st.sampled_from([0.1, 1.0]),
    "aligned": st.booleans(),
})


class TestDeformRoIPool(RoIOpTester):
    op_name = "deform_roi_pool"

    def many_rois_case(self, generator):
        x = torch.randn(1, 6, 12, 12, generator=generator, dtype=torch.float64)
        rois = make_rois(generator, 40, 1, 12, 12)
        offset = torch.randn(40, 2, 3, 3, generator=generator, dtype=torch.float64)
        mask = torch.rand(40, 1, 3, 3, generator=generator, dtype=torch.float64)

        def fn(x, offset, mask):
            return deform_roi_pool(x, rois, offset, 3, 0.9, 2, mask=mask)

        return fn, [x, offset, mask]

    def pushed_out_case(self, generator):
        x = torch.randn(1, 3, 8, 8, generator=generator, dtype=torch.float64)
        rois = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0], [0, 2.5, 0.5, 4.0, 7.5]],
                            dtype=torch.float64)
        offset = torch.full((2, 2, 2, 2), 50.0, dtype=torch.float64)
        offset[:, :, 0] = -50.0
        return lambda x, o: deform_roi_pool(x, rois, o, 2, sampling_ratio=2), [x, offset]

    def no_rois_case(self):
        x, offset = torch.randn(2, 3, 5, 5), torch.zeros(0, 2, 2, 2)
        return (lambda x, o: deform_roi_pool(x, torch.zeros(0, 5), o, 2), [x, offset]), \
            (0, 3, 2, 2)

    def gradcheck_cases(self, generator):
        x = torch.randn(2, 2, 6, 5, generator=generator, dtype=torch.float64)
        rois = make_rois(generator, 4, 2, 6, 5)
        offset = torch.randn(4, 2, 2, 3, generator=generator, dtype=torch.float64)
        mask = torch.rand(4, 1, 2, 3, generator=generator, dtype=torch.float64)

        def fn(x, offset, mask=None):
            return deform_roi_pool(x, rois, offset, (2, 3), 1.0, 2, gamma=0.5, mask=mask)

        return {"without mask": (fn, [x, offset]), "with mask": (fn, [x, offset, mask])}

    def opcheck_arguments(self, generator):
        x = torch.randn(2, 3, 6, 7, generator=generator, dtype=torch.float64)
        rois = make_rois(generator, 5, 2, 6, 7)
        offset = torch.randn(5, 2, 2, 2, generator=generator, dtype=torch.float64)
        mask = torch.rand(5, 1, 2, 2, generator=generator, dtype=torch.float64)
        return [(x.requires_grad_(), rois, off if off is None else off.requires_grad_(),
                 m if m is None else m.requires_grad_(), 2, 2, 0.8, 0, 0.1, True)
                for off, m in ((offset, mask), (None, None))]

    def compile_case(self, generator):
        x = torch.randn(1, 4, 9, 9, generator=generator)
        rois = [make_rois(generator, 3, 1, 9, 9, torch.float32)[:, 1:]]
        offset = torch.randn(3, 2, 2, 2, generator=generator)

        def head(x, offset):
            return deform_roi_pool(x, rois, offset, 2, sampling_ratio=2).relu().sum((2, 3))

        return head, [x, offset]

    def float32_case(self, generator):
        x = torch.randn(1, 3, 8, 8, generator=generator)
        rois = make_rois(generator, 4, 1, 8, 8, torch.float32)
        offset = torch.randn(4, 2, 2, 2, generator=generator)
        return lambda x, rois, offset: deform_roi_pool(x, rois, offset, 2), [x, rois, offset]

    @pytest.mark.parametrize("aligned", [True, False])
    @pytest.mark.parametrize("sampling_ratio", [0, 2])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_without_offset_equals_roi_align(self, aligned, sampling_ratio, dtype, generator):
        x = torch.randn(2, 5, 13, 11, generator=generator, dtype=dtype)
        rois = make_rois(generator, 12, 2, 13 / 0.5, 11 / 0.5, dtype)
        expected = torchvision.ops.roi_align(x, rois, (3, 4), 0.5, sampling_ratio, aligned)
        zeros = torch.zeros(12, 2, 3, 4, dtype=dtype)
        for offset in (None, zeros):
            out = deform_roi_pool(x, rois, offset, (3, 4), 0.5, sampling_ratio,
                                  aligned=aligned)
            torch.testing.assert_close(out, expected)

    @pytest.mark.parametrize(("x", "roi", "pooled", "scale", "sampling_ratio", "aligned"), [
        # bin column 3 samples x = 15.75 + 3·(0.5/7) + 0.5·(0.5/7)/1 = 16 = W
        (torch.arange(256.0).reshape(1, 1, 16, 16), [0, 65.0, 14.0, 67.0, 24.0], (7, 7), 0.25,
         0, True),
        # bin row 0, sample row 1: y = 2 + 0·(8/3) + 1.5·(8/3)/2 = 4 = H
        (torch.arange(32.0).reshape(2, 1, 4, 4) + 1, [1, 3.0, 2.0, 5.0, 10.0], (3, 1), 1.0,
         2, False),
    ])
    def test_sample_on_the_map_edge_equals_roi_align(self, x, roi, pooled, scale,
                                                     sampling_ratio, aligned, monkeypatch):
        """A float32 sample that lands exactly on the edge W or H is clamped and kept. The
        Numba kernels computed the positions in float64, a step past the edge, and dropped
        it (100.14 off in the first case; 7.67 instead of 15.67 in the second)."""
        rois = torch.tensor([roi])
        expected = torchvision.ops.roi_align(x, rois, pooled, scale, sampling_ratio, aligned)
        for backend in ("numba", "torch"):
            monkeypatch.setenv("DEFORMCONV_BACKEND", backend)
            out = deform_roi_pool(x, rois, None, pooled, scale, sampling_ratio, aligned=aligned)
            torch.testing.assert_close(out, expected, msg=backend)
        out = reference.deform_roi_pool(x, rois, None, pooled, scale, sampling_ratio, 0.1,
                                        aligned)
        torch.testing.assert_close(out, expected, msg="reference")

    @pytest.mark.parametrize("aligned", [True, False])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_integer_rois_equal_roi_align(self, aligned, dtype, monkeypatch):
        """Integer RoIs on an 8×8 map put many samples exactly on the map's edges: every
        backend computes the positions in the input's dtype, in torchvision's order
        ``(start + i·bin) + (iy + 0.5)·bin / grid``, so those samples agree exactly. Before,
        Numba (float64 positions) missed 33-125 of 3000 float32 RoIs per setting, and the
        torch backend (``(iy + 0.5)·(bin / grid)``) 24 of 3000 float64 RoIs at sampling
        ratio 0, (3, 5) bins, aligned=False."""
        gen = torch.Generator().manual_seed(0)
        x = torch.arange(2 * 3 * 8 * 8, dtype=dtype).reshape(2, 3, 8, 8) + 1
        for scale, sampling_ratio, pooled in ((1.0, 2, (3, 1)), (0.5, 0, (7, 7)),
                                              (1.0, 0, (3, 5))):
            rois = integer_rois(gen, 300, 2, -4, 12 if scale == 1.0 else 40, dtype)
            expected = torchvision.ops.roi_align(x, rois, pooled, scale, sampling_ratio,
                                                 aligned)
            args = (pooled, scale, sampling_ratio)
            monkeypatch.setenv("DEFORMCONV_BACKEND", "numba")
            outputs = {
                "numba": deform_roi_pool(x, rois, None, *args, aligned=aligned),
                "torch": torch_backend.forward(x, rois, None, None, *args, 0.1, aligned),
            }
            for name, out in outputs.items():
                torch.testing.assert_close(out, expected, msg=lambda m, name=name, args=args:
                                           f"{name} {args}: {m}")

    def test_list_of_boxes_equals_roi_align(self, generator):
        x = torch.randn(3, 4, 10, 10, generator=generator)
        boxes = [make_rois(generator, k, 1, 10, 10, torch.float32)[:, 1:] for k in (3, 0, 2)]
        expected = torchvision.ops.roi_align(x, boxes, 2, 1.0, 2, True)
        torch.testing.assert_close(deform_roi_pool(x, boxes, output_size=2, sampling_ratio=2),
                                   expected)

    def test_list_of_boxes_of_mixed_dtypes_pools_the_promoted_boxes(self, generator):
        """float64 boxes after float16 ones were rounded to float16 (to 1000 at 1000.3)."""
        x = torch.randn(2, 4, 40, 1200, generator=generator)
        coarse = torch.tensor([[1.0, 2.0, 9.0, 8.0]], dtype=torch.float16)
        fine = torch.tensor([[1000.3, 2.3, 1010.7, 30.9]], dtype=torch.float64)
        rois = torch.tensor([[0.0, 1.0, 2.0, 9.0, 8.0], [1.0, 1000.3, 2.3, 1010.7, 30.9]])
        torch.testing.assert_close(deform_roi_pool(x, [coarse, fine], output_size=2),
                                   deform_roi_pool(x, rois, output_size=2), rtol=0, atol=0)

    @given(case=cases, opts=options)
    @settings(max_examples=25, deadline=None)
    def test_matches_reference(self, case, opts):
        x, rois, offset, mask = _case(**case)
        pooled = case["pooled"]

        def fast(x, offset, mask):
            return deform_roi_pool(x, rois, offset, pooled, case["scale"], mask=mask, **opts)

        def slow(x, offset, mask):
            return reference.deform_roi_pool(x, rois, offset, pooled, case["scale"], mask=mask,
                                             **opts)

        out, grads = outputs_and_grads(fast, [x, offset, mask])
        out_ref, grads_ref = outputs_and_grads(slow, [x, offset, mask])
        assert_close_all(["output", "grad input", "grad offset", "grad mask"],
                         [out, *grads], [out_ref, *grads_ref], **F64)

    @given(case=cases, opts=options)
    @settings(max_examples=10, deadline=None)
    def test_torch_backend_matches_reference(self, case, opts):
        x, rois, offset, mask = _case(**case)
        args = (case["pooled"], case["scale"], opts["sampling_ratio"], opts["gamma"],
                opts["aligned"])

        def slow(x, offset, mask):
            return reference.deform_roi_pool(x, rois, offset, *args[:3], opts["gamma"],
                                             opts["aligned"], mask)

        out_ref, grads_ref = outputs_and_grads(slow, [x, offset, mask])
        out = torch_backend.forward(x, rois, offset, mask, *args)
        grad_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        with below_autograd():
            grads = torch_backend.backward(grad_out, x, rois, offset, mask, *args, True, True)
        assert_close_all(["output", "grad input", "grad offset", "grad mask"],
                         [out, grads[0], grads[1] if offset is not None else None,
                          grads[2] if mask is not None else None],
                         [out_ref, *grads_ref], **F64)

    def test_torch_backend_keeps_an_inf_pixel_out_of_bins_that_miss_it(self, generator):
        """An inf at pixel (0, 0) and a RoI on the bottom-right edge (samples clamped onto
        the last row and column): equal to the reference and roi_align. The torch backend
        used to gather the corners past the edge from pixel 0 with weight 0: NaN."""
        x = torch.randn(1, 2, 6, 6, dtype=torch.float64, generator=generator)
        x[0, :, 0, 0] = torch.inf
        rois = torch.tensor([[0, 2.0, 3.0, 6.0, 6.0]], dtype=torch.float64)
        offset = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
        args = ((2, 2), 1.0, 2, 0.1, True)
        out = torch_backend.forward(x, rois, offset, None, *args)
        expected = reference.deform_roi_pool(x, rois, offset, *args)
        assert expected.isfinite().all()
        torch.testing.assert_close(out, expected, **F64)
        torch.testing.assert_close(out, torchvision.ops.roi_align(x, rois, 2, 1.0, 2, True),
                                   **F64)

    def test_torch_backend_tiles(self, generator, monkeypatch):
        """A workspace of a few bytes splits the work into single RoIs and sample rows."""
        x, rois, offset, mask = _case(3, 2, 3, 8, 9, 6, (2, 3), 1.0, True, True, 0.5)
        args = ((2, 3), 0.5, 0, 0.1, True)
        whole = torch_backend.forward(x, rois, offset, mask, *args)
        grad_out = torch.randn(whole.shape, generator=generator, dtype=whole.dtype)
        with below_autograd():
            whole_grads = torch_backend.backward(grad_out, x, rois, offset, mask, *args, True,
                                                 True)
        monkeypatch.setattr("deformconv.ops._workspace.WORKSPACE_BYTES", 1)
        tiled = torch_backend.forward(x, rois, offset, mask, *args)
        with below_autograd():
            tiled_grads = torch_backend.backward(grad_out, x, rois, offset, mask, *args, True,
                                                 True)
        assert_close_all(["output", "grad input", "grad offset", "grad mask"],
                         [tiled, *tiled_grads], [whole, *whole_grads], **F64)

    @pytest.mark.parametrize(("sampling_ratio", "aligned"), [(0, True), (0, False), (3, True)])
    def test_bins_with_more_samples_than_the_table_hold_go_in_parts(
            self, sampling_ratio, aligned, monkeypatch):
        """A table of 3 rows (bins of up to 9×5 samples here; RoIs of negative size
        included) gives the reference's values and gradients."""
        monkeypatch.setattr("deformconv.ops._numba.deform_roi_pool._TABLE_ROWS", 3)
        x, rois, offset, mask = _case(5, 2, 3, 9, 8, 7, (2, 3), 1.0, True, True, 0.5)
        rois[0, 1:] = torch.tensor([30.0, 28.0, 2.0, 4.0], dtype=rois.dtype)  # x2 < x1, y2 < y1
        args = ((2, 3), 0.5, sampling_ratio, 0.1, aligned)

        def fast(x, offset, mask):
            return deform_roi_pool(x, rois, offset, *args, mask=mask)

        def slow(x, offset, mask):
            return reference.deform_roi_pool(x, rois, offset, *args, mask=mask)

        out, grads = outputs_and_grads(fast, [x, offset, mask])
        out_ref, grads_ref = outputs_and_grads(slow, [x, offset, mask])
        assert_close_all(["output", "grad input", "grad offset", "grad mask"],
                         [out, *grads], [out_ref, *grads_ref], **F64)

    def test_absurd_adaptive_sample_count_is_refused(self):
        """A RoI of 2e6² feature cells would take 4e12 samples per bin: refused at once
        (it used to fail allocating a table of them)."""
        x = torch.randn(1, 2, 6, 6)
        rois = torch.tensor([[0.0, 1, 1, 4, 4], [0.0, -1e6, -1e6, 1e6, 1e6]])
        with pytest.raises(ValueError, match=r"rois: row 1 .* spans 2e\+06 x 2e\+06 feature "
                                             r"cells .* 4e\+12 samples per bin"):
            deform_roi_pool(x, rois, output_size=1)
        assert deform_roi_pool(x, rois, output_size=1, sampling_ratio=2).shape == (2, 2, 1, 1)

    @pytest.mark.parametrize("row", [-1.5, -1.0, -0.5, 0.0, 1.0, 3.5, 4.0])
    @pytest.mark.parametrize("use_reference", [False, True])
    def test_offset_gradient_on_grid_lines_is_right_hand(self, row, use_reference, generator):
        """A sample exactly on row -1, 0, 1 or H-1 (kinks of the clamp-then-bilinear rule;
        H = 5): the offset gradient is the right-hand derivative, as for deform_conv2d."""
        x = torch.randn(1, 2, 5, 6, generator=generator, dtype=torch.float64)
        rois = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]], dtype=torch.float64)
        # One 4x4 bin, one sample at its centre (2, 2); gamma * roi size = 1, so Δ in pixels.
        op = reference.deform_roi_pool if use_reference else deform_roi_pool

        def pool(offset):
            return op(x, rois, offset, (1, 1), 1.0, 1, 0.25, False)

        offset = torch.tensor([0.3, row - 2.0], dtype=torch.float64).view(1, 2, 1, 1)
        assert_right_hand_slope(pool, offset, channel=1)

    def test_non_contiguous_input(self, generator):
        x = torch.randn(2, 7, 6, 3, generator=generator).permute(0, 3, 1, 2)
        rois = make_rois(generator, 5, 2, 7, 6, torch.float32)
        offset = torch.randn(2, 2, 5, generator=generator).permute(2, 0, 1)[..., None]
        out = deform_roi_pool(x, rois, offset, (2, 1))
        expected = deform_roi_pool(x.contiguous(), rois, offset.contiguous(), (2, 1))
        torch.testing.assert_close(out, expected)

    @pytest.mark.parametrize(("rois", "kwargs", "error", "match"), [
        (torch.zeros(2, 4), {}, ValueError, r"rois must have shape \(K, 5\).*got \(2, 4\)"),
        ([torch.zeros(2, 5)], {}, ValueError, r"rois\[0\] must have shape \(Ki, 4\)"),
        ([], {}, ValueError, "empty list"),
        (torch.tensor([[2.0, 0, 0, 1, 1]]), {}, ValueError,
         r"batch index\) must be in \[0, 1\].*got 2 in row 0"),
        (torch.tensor([[0.0, 0, 0, 1, 1], [-1.0, 0, 0, 1, 1]]), {}, ValueError,
         "must be in .*got -1 in row 1"),
        (torch.tensor([[0.5, 0, 0, 1, 1]]), {}, ValueError, "must hold integers, got 0.5"),
        (torch.tensor([[0.0, 0, float("nan"), 1, 1]]), {}, ValueError, "finite.*NaN"),
        (torch.zeros(1, 5, dtype=torch.int64), {}, TypeError, "floating point"),
        (torch.zeros(1, 5), {"offset": torch.zeros(1, 2, 3, 2)}, ValueError,
         r"offset.shape is not valid: got \(1, 2, 3, 2\), expected \(1, 2, 2, 2\)"),
        (torch.zeros(1, 5), {"offset": torch.full((1, 2, 2, 2), float("nan"))}, ValueError,
         "offset contains 8 NaN"),
        (torch.zeros(1, 5), {"mask": torch.zeros(1, 2, 2, 2)}, ValueError,
         r"mask.shape is not valid: got \(1, 2, 2, 2\), expected \(1, 1, 2, 2\)"),
        (torch.zeros(1, 5), {"output_size": 0}, ValueError, "output_size must be positive"),
        (torch.zeros(1, 5), {"output_size": None}, TypeError, "output_size"),
        # NaN passes "<= 0" checks: it used to pool silent zeros
        (torch.zeros(1, 5), {"spatial_scale": float("nan")}, ValueError,
         "spatial_scale must be a finite number > 0, got nan"),
        (torch.zeros(1, 5), {"spatial_scale": float("inf")}, ValueError,
         "spatial_scale must be a finite number > 0, got inf"),
        (torch.zeros(1, 5), {"spatial_scale": 0.0}, ValueError, "spatial_scale must be"),
        (torch.zeros(1, 5), {"gamma": float("nan")}, ValueError,
         "gamma must be a finite number, got nan"),
        (torch.zeros(1, 5), {"gamma": "0.1x"}, TypeError, "gamma must be a finite number"),
        # a bool was taken as 1.0
        (torch.zeros(1, 5), {"spatial_scale": True}, TypeError,
         "spatial_scale must be a finite number > 0, not a bool, got True"),
    ])
    def test_bad_input(self, rois, kwargs, error, match):
        x = torch.randn(2, 3, 6, 6)
        kwargs = {"output_size": 2, **kwargs}
        with pytest.raises(error, match=match):
            deform_roi_pool(x, rois, **kwargs)

    def test_roi_align_argument_order_names_offset(self):
        """roi_align's positional order (output_size, spatial_scale third and fourth) was
        blamed on output_size ('output_size must be an int or a pair of ints, got 0.5')."""
        x = torch.randn(1, 4, 10, 10)
        with pytest.raises(TypeError, match=r"offset must be a torch.Tensor or None, got int 7;"
                                            r".*pass output_size=\.\.\. .*by keyword"):
            deform_roi_pool(x, torch.tensor([[0.0, 1, 1, 8, 8]]), 7, 0.5)


@pytest.mark.parametrize("api", FORWARD_AD_APIS)
@pytest.mark.parametrize(("index", "name"), list(enumerate(["input", "rois", "offset", "mask"])))
def test_forward_mode_ad_is_refused(api, index, name):
    """A forward tangent was dropped silently (a zero or missing result tangent)."""
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(1, 2, 6, 6, generator=gen, dtype=torch.float64),
            torch.tensor([[0.0, 0.5, 1.0, 4.0, 4.5]], dtype=torch.float64),
            torch.randn(1, 2, 2, 2, generator=gen, dtype=torch.float64),
            torch.rand(1, 1, 2, 2, generator=gen, dtype=torch.float64)]
    with pytest.raises(NotImplementedError, match=re.escape(
            f"forward-mode AD (torch.func.jvp, jacfwd / torch.autograd.forward_ad) is not "
            f"supported by deform_roi_pool: {name} carries a forward tangent")):
        tangent_of(api, lambda *a: deform_roi_pool(a[0], a[1], a[2], 2, mask=a[3]), args, index)


def test_registered_op_checks_its_arguments():
    """Direct calls of the registered ops cannot hand the kernels inconsistent shapes."""
    x = torch.randn(1, 3, 6, 6)
    rois = torch.tensor([[0.0, 0, 0, 4, 4]])
    op = torch.ops.deformconv
    with pytest.raises(ValueError, match=r"offset.shape is not valid"):
        op.deform_roi_pool(x, rois, torch.zeros(1, 2, 3, 3), None, 2, 2, 1.0, 0, 0.1, True)
    with pytest.raises(TypeError, match=r"rois has dtype torch\.float16 but must be .*float32"):
        op.deform_roi_pool(x.half(), rois.half(), None, None, 2, 2, 1.0, 0, 0.1, True)
    with pytest.raises(ValueError, match=r"grad_out.shape is not valid"):
        op.deform_roi_pool_backward(torch.zeros(2, 3, 2, 2), x, rois, None, None, 2, 2, 1.0, 0,
                                    0.1, True, True, True)
    x_strided = torch.randn(1, 6, 6, 3).permute(0, 3, 1, 2)
    torch.testing.assert_close(
        op.deform_roi_pool(x_strided, rois, None, None, 2, 2, 1.0, 0, 0.1, True),
        op.deform_roi_pool(x_strided.contiguous(), rois, None, None, 2, 2, 1.0, 0, 0.1, True))


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("shape", [(1, 0, 8, 8), (1, 4, 0, 8), (1, 4, 8, 0)])
def test_feature_map_without_cells_gives_zeros(monkeypatch, backend, shape):
    """As torchvision's roi_align: (K, C, ph, pw) zeros and zero gradients. The torch backend
    failed on H or W = 0 (index out of bounds), both on C = 0 (a reshape)."""
    monkeypatch.setenv("DEFORMCONV_BACKEND", backend)
    x = torch.randn(shape, requires_grad=True)
    offset = torch.zeros(1, 2, 3, 2, requires_grad=True)
    mask = torch.ones(1, 1, 3, 2, requires_grad=True)
    out = deform_roi_pool(x, torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]]), offset,
                          output_size=(3, 2), mask=mask)
    assert out.shape == (1, shape[1], 3, 2) and not out.any()
    out.sum().backward()
    assert not offset.grad.any() and not mask.grad.any() and x.grad.shape == shape


def test_numpy_integers_are_taken_as_roi_align_takes_them():
    x = torch.randn(1, 4, 8, 8)
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    expected = deform_roi_pool(x, rois, output_size=3, sampling_ratio=2)
    got = deform_roi_pool(x, rois, output_size=np.int64(3), sampling_ratio=np.int32(2))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("aligned", ["False", 0, None])
def test_aligned_must_be_a_bool(aligned):
    """aligned='False' pooled with aligned=True (bool('False') is True)."""
    with pytest.raises(TypeError, match=re.escape(
            f"aligned must be a bool (True or False), got {aligned!r}")):
        deform_roi_pool(torch.randn(1, 2, 8, 8), torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]]),
                        output_size=2, aligned=aligned)


class TestRegisteredOpScalars:
    """The registered ops are public (``torch.ops.deformconv.*``) and their kernels trust
    their checks: a NaN or negative scale, an inf gamma or trans_std used to pool silent
    zeros, and a huge sample count would run for hours."""

    X, ROIS = torch.randn(1, 8, 8, 8), torch.tensor([[0, 1, 1, 6, 6.0]])

    @pytest.mark.parametrize(("scale", "ratio", "gamma", "name"), [
        (float("nan"), 2, 0.1, "spatial_scale"), (-1.0, 2, 0.1, "spatial_scale"),
        (1.0, 2, float("inf"), "gamma"), (1.0, 10**5, 0.1, "sampling_ratio")])
    def test_roi_pool(self, scale: float, ratio: int, gamma: float, name: str) -> None:
        with pytest.raises(ValueError, match=name):
            torch.ops.deformconv.deform_roi_pool(self.X, self.ROIS, None, None, 3, 3, scale,
                                                 ratio, gamma, True)
        with pytest.raises(ValueError, match=name):
            deform_roi_pool(self.X, self.ROIS, output_size=3, spatial_scale=scale,
                            sampling_ratio=ratio, gamma=gamma)

    @pytest.mark.parametrize(("scale", "samples", "trans_std", "name"), [
        (float("nan"), 2, 0.1, "spatial_scale"), (0.0, 2, 0.1, "spatial_scale"),
        (1.0, 2, float("-inf"), "trans_std"), (1.0, 10**5, 0.1, "sample_per_part")])
    def test_psroi_pool(self, scale: float, samples: int, trans_std: float, name: str) -> None:
        with pytest.raises(ValueError, match=name):
            torch.ops.deformconv.deform_psroi_pool(self.X, self.ROIS, None, scale, 2, 2, 2, 2,
                                                   samples, trans_std)
        grad, count = torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
        with pytest.raises(ValueError, match=name):  # silent zero gradients before
            torch.ops.deformconv.deform_psroi_pool_backward(
                grad, self.X, self.ROIS, None, count, scale, 2, 2, samples, trans_std, True,
                False)

    def test_a_negative_sampling_ratio_is_adaptive_as_in_torchvision(self) -> None:
        adaptive = deform_roi_pool(self.X, self.ROIS, output_size=3)
        torch.testing.assert_close(
            deform_roi_pool(self.X, self.ROIS, output_size=3, sampling_ratio=-1), adaptive,
            rtol=0, atol=0)
