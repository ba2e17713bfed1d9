"""deform_psroi_pool: a hand-computed case, the reference, gradients and bad input."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deformconv.ops import deform_psroi_pool, reference
from deformconv.ops._torch import deform_psroi_pool as torch_backend

from .forward_ad_helpers import FORWARD_AD_APIS, tangent_of
from .roi_helpers import (
    RoIOpTester,
    assert_close_all,
    assert_right_hand_slope,
    below_autograd,
    integer_rois,
    make_rois,
    near_half_rois,
    outputs_and_grads,
)

F64 = {"rtol": 1e-9, "atol": 1e-9}


def _linear_planes(channels: int, height: int, width: int) -> torch.Tensor:
    """Plane c holds ``10 c + h + 2 w``: bilinear sampling of it is exact, so a bin's
    average is ``10 c + mean(h) + 2 mean(w)`` over the samples taken."""
    c = torch.arange(channels, dtype=torch.float64).view(-1, 1, 1)
    h = torch.arange(height, dtype=torch.float64).view(1, -1, 1)
    w = torch.arange(width, dtype=torch.float64).view(1, 1, -1)
    return (10 * c + h + 2 * w).unsqueeze(0)


class TestDeformPSRoIPool(RoIOpTester):
    op_name = "deform_psroi_pool"

    def many_rois_case(self, generator):
        x = torch.randn(1, 4 * 9, 12, 12, generator=generator, dtype=torch.float64)
        rois = make_rois(generator, 40, 1, 24, 24)
        offset = torch.randn(40, 4, 3, 3, generator=generator, dtype=torch.float64)

        def fn(x, offset):
            return deform_psroi_pool(x, rois, offset, spatial_scale=0.5, output_dim=4,
                                     group_size=3, pooled_size=3, trans_std=0.1)

        return fn, [x, offset]

    def pushed_out_case(self, generator):
        x = torch.randn(1, 2 * 4, 8, 8, generator=generator, dtype=torch.float64)
        rois = torch.tensor([[0, 8.0, 8.0, 40.0, 30.0]], dtype=torch.float64)
        offset = torch.full((1, 2, 3, 3), 100.0, dtype=torch.float64)

        def fn(x, offset):
            return deform_psroi_pool(x, rois, offset, spatial_scale=0.25, output_dim=2,
                                     group_size=2, pooled_size=2, part_size=3, trans_std=0.1)

        return fn, [x, offset]

    def no_rois_case(self):
        x, offset = torch.randn(1, 9, 5, 5), torch.zeros(0, 2, 3, 3)

        def fn(x, offset):
            return deform_psroi_pool(x, torch.zeros(0, 5), offset, spatial_scale=1.0,
                                     output_dim=1, group_size=3, pooled_size=3)

        return (fn, [x, offset]), (0, 1, 3, 3)

    def gradcheck_cases(self, generator):
        cases = {}
        for group_size, classes in ((1, 1), (2, 2)):
            x = torch.randn(2, 2 * group_size**2, 6, 7, generator=generator,
                            dtype=torch.float64)
            rois = make_rois(generator, 4, 2, 12, 14)
            offset = torch.randn(4, 2 * classes, 2, 2, generator=generator, dtype=torch.float64)

            def fn(x, offset, rois=rois, group_size=group_size):
                return deform_psroi_pool(x, rois, offset, spatial_scale=0.5, output_dim=2,
                                         group_size=group_size, pooled_size=3, part_size=2,
                                         sample_per_part=2, trans_std=0.1)

            cases[f"group_size {group_size}, {classes} classes"] = (fn, [x, offset])
        return cases

    def opcheck_arguments(self, generator):
        x = torch.randn(2, 2 * 4, 6, 7, generator=generator, dtype=torch.float64)
        rois = make_rois(generator, 5, 2, 12, 14)
        offset = torch.randn(5, 4, 2, 2, generator=generator, dtype=torch.float64)
        return [(x.requires_grad_(), rois, off, 0.5, 2, 2, 2, 2, 2, 0.1)
                for off in (offset.requires_grad_(), None)]

    def compile_case(self, generator):
        x = torch.randn(1, 3 * 4, 9, 9, generator=generator)
        rois = [make_rois(generator, 3, 1, 18, 18, torch.float32)[:, 1:]]
        offset = torch.randn(3, 2, 2, 2, generator=generator)

        def head(x, offset):
            out = deform_psroi_pool(x, rois, offset, spatial_scale=0.5, output_dim=3,
                                    group_size=2, pooled_size=2, trans_std=0.1)
            return out.mean((2, 3))

        return head, [x, offset]

    def float32_case(self, generator):
        x = torch.randn(1, 4, 8, 8, generator=generator)
        rois = make_rois(generator, 4, 1, 8, 8, torch.float32)
        options = {"spatial_scale": 1.0, "output_dim": 1, "group_size": 2, "pooled_size": 2}
        return lambda x, rois: deform_psroi_pool(x, rois, **options), [x, rois]

    def test_hand_computed_group_size_2(self):
        x = _linear_planes(4, 6, 6)  # output_dim 1, group_size 2: channel of bin (i, j) = 2i + j
        rois = torch.tensor([
            # x1..x2 = 1..4 -> start 0.5, size 4, bins of 2, samples 1 apart: rows/cols
            # (0.5, 1.5) and (2.5, 3.5), all inside.
            [0, 1.0, 1.0, 4.0, 4.0],
            # rounded (halves away from zero) to x 3..7, y -2..3: start_w 2.5, roi_w 5,
            # sub_w 1.25; start_h -2.5, roi_h 6, sub_h 1.5. Bin row 0 samples h = -2.5, -1
            # (skipped: < -0.5); row 1: h = 0.5, 2. Column 0: w = 2.5, 3.75; column 1:
            # w = 5 (taken, clamped) and 6.25 (skipped: > 5.5).
            [0, 2.5, -2.4, 6.6, 2.5],
        ], dtype=torch.float64)
        out, count = torch.ops.deformconv.deform_psroi_pool(
            x, rois, None, 1.0, 1, 2, 2, 2, 2, 0.0)
        expected = torch.tensor([
            [[3.0, 17.0], [25.0, 39.0]],  # 10 c + mean h + 2 mean w, means 1 or 3
            [[0.0, 0.0], [20 + 1.25 + 2 * 3.125, 30 + 1.25 + 2 * 5.0]],
        ], dtype=torch.float64).unsqueeze(1)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(count, torch.tensor(
            [[[4.0, 4.0], [4.0, 4.0]], [[0.0, 0.0], [4.0, 2.0]]], dtype=torch.float64)[:, None])
        # offsets: Δx̂ = 1 with trans_std 0.25 moves every sample of the first RoI by
        # 0.25 * roi_w = 1 column: each bin gains 2.
        offset = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
        offset[:, 0] = 1.0
        shifted = deform_psroi_pool(x, rois[:1], offset[:1], spatial_scale=1.0, output_dim=1,
                                    group_size=2, pooled_size=2, sample_per_part=2,
                                    trans_std=0.25)
        torch.testing.assert_close(shifted, expected[:1] + 2.0)

    @given(
        seed=st.integers(0, 2**31 - 1),
        n=st.integers(1, 2),
        size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
        k=st.integers(0, 7),
        output_dim=st.sampled_from([1, 2, 4]),
        group_size=st.sampled_from([1, 2, 3, 7]),
        pooled_size=st.sampled_from([1, 2, 3, 4, 7]),
        part_size=st.integers(1, 4),
        sample_per_part=st.integers(1, 4),
        classes=st.sampled_from([0, 1, 2]),  # 0: no offset
        trans_std=st.sampled_from([0.1, 1.0]),
        offset_scale=st.sampled_from([1.0, 10.0]),
        scale=st.sampled_from([1.0, 0.5, 0.25]),
    )
    @settings(max_examples=25, deadline=None)
    def test_matches_reference(self, seed, n, size, k, output_dim, group_size, pooled_size,
                               part_size, sample_per_part, classes, trans_std, offset_scale,
                               scale):
        classes = min(classes, output_dim) if output_dim % 2 == 0 else min(classes, 1)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(n, output_dim * group_size**2, *size, generator=gen, dtype=torch.float64)
        rois = make_rois(gen, k, n, size[0] / scale, size[1] / scale)
        offset = (offset_scale * torch.randn(k, 2 * classes, part_size, part_size,
                                             generator=gen, dtype=torch.float64)
                  if classes else None)
        args = (scale, output_dim, group_size, pooled_size, part_size, sample_per_part,
                trans_std)

        def fast(x, offset):
            return deform_psroi_pool(
                x, rois, offset, spatial_scale=scale, output_dim=output_dim,
                group_size=group_size, pooled_size=pooled_size, part_size=part_size,
                sample_per_part=sample_per_part, trans_std=trans_std)

        def slow(x, offset):
            return reference.deform_psroi_pool(x, rois, offset, *args)[0]

        out, grads = outputs_and_grads(fast, [x, offset])
        out_ref, grads_ref = outputs_and_grads(slow, [x, offset])
        names = ["output", "grad input", "grad offset"]
        assert_close_all(names, [out, *grads], [out_ref, *grads_ref], **F64)
        # the count output of the CPU kernel and the device-agnostic torch kernel
        _, count_ref = reference.deform_psroi_pool(x, rois, offset, *args)
        _, count = torch.ops.deformconv.deform_psroi_pool(x, rois, offset, *args)
        torch.testing.assert_close(count, count_ref)
        out_torch, count_torch = torch_backend.forward(x, rois, offset, *args)
        grad_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        with below_autograd():
            grads_torch = torch_backend.backward(grad_out, x, rois, offset, count_torch, scale,
                                                 group_size, part_size, sample_per_part,
                                                 trans_std, True, True)
        assert_close_all([*names, "count"],
                         [out_torch, grads_torch[0], grads_torch[1] if classes else None,
                          count_torch],
                         [out_ref, *grads_ref, count_ref], **F64)

    @pytest.mark.parametrize("pooled", [22, 23, 29])
    def test_each_bin_reads_its_own_part_at_large_pooled_sizes(self, pooled):
        """part = floor(i / P * part_size) exactly: with P = part_size every bin moves by its
        own cell's offset. Computed in float64, bin 15 of 22 and bin 13 of 23 read the cell
        before theirs; in the original kernel's float32, bin 15 of 29 did."""
        x = _linear_planes(1, 2 * pooled + 8, 2 * pooled + 8)  # one plane, 10c + h + 2w
        rois = torch.tensor([[0, 0.0, 0.0, 2.0 * pooled - 1, 2.0 * pooled - 1]],
                            dtype=torch.float64)
        offset = torch.zeros(1, 2, pooled, pooled, dtype=torch.float64)
        offset[0, 0] = torch.arange(pooled, dtype=torch.float64).view(1, -1) / 1000  # dx by col
        args = (1.0, 1, 1, pooled, pooled, 2, 1.0)
        moved = {
            "op": deform_psroi_pool(x, rois, offset, spatial_scale=1.0, output_dim=1,
                                    group_size=1, pooled_size=pooled, part_size=pooled,
                                    sample_per_part=2, trans_std=1.0),
            "reference": reference.deform_psroi_pool(x, rois, offset, *args)[0],
            "torch backend": torch_backend.forward(x, rois, offset, *args)[0],
        }
        still = reference.deform_psroi_pool(x, rois, None, *args)[0]
        # column j's samples move right by j/1000 · roi_w (2 P), its value by twice that
        expected = still + 2 * torch.arange(pooled, dtype=torch.float64) / 1000 * 2 * pooled
        for name, out in moved.items():
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-9, msg=name)

    @pytest.mark.parametrize("column", [-1.0, -0.5, 0.0, 1.0, 4.0, 5.0])
    @pytest.mark.parametrize("use_reference", [False, True])
    def test_offset_gradient_on_grid_lines_is_right_hand(self, column, use_reference,
                                                         generator):
        """A sample exactly on column -0.5, 0, 1 or W-1 (kinks of the skip/clamp rule;
        W = 6): the offset gradient is the right-hand derivative, as for deform_conv2d."""
        x = torch.randn(1, 1, 5, 6, generator=generator, dtype=torch.float64)
        rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]], dtype=torch.float64)
        # One sample at the bin's start: w = -0.5 + 4 * trans_std * Δ, so Δ in pixels.
        def pool(offset):
            if use_reference:
                return reference.deform_psroi_pool(x, rois, offset, 1.0, 1, 1, 1, None, 1,
                                                   0.25)[0]
            return deform_psroi_pool(x, rois, offset, spatial_scale=1.0, output_dim=1,
                                     group_size=1, pooled_size=1, sample_per_part=1,
                                     trans_std=0.25)

        offset = torch.tensor([column + 0.5, 1.3], dtype=torch.float64).view(1, 2, 1, 1)
        assert_right_hand_slope(pool, offset, channel=0)

    def test_sample_on_minus_half_is_taken(self):
        """RoI x -1..0 at scale 0.5: start_w -1, roi_w 1, bin 1/3, step 1/6, so bin column 1's
        second sample is at w = -1 + 1/3 + 1/6 = -0.5, which float32 (the input's dtype, as
        in the original kernel) reaches exactly: kept (7.0). The Numba kernels divided in
        float64, landed just below -0.5 and skipped it (0.0)."""
        x = torch.arange(36.0).reshape(1, 9, 2, 2) + 1
        rois = torch.tensor([[0, -1.0, 3.0, 0.0, 7.0]])
        args = (0.5, 1, 3, 3, 3, 2, 0.0)
        outputs = {
            "op": deform_psroi_pool(x, rois, None, spatial_scale=0.5, output_dim=1,
                                    group_size=3, pooled_size=3, sample_per_part=2),
            "torch backend": torch_backend.forward(x, rois, None, *args)[0],
            "reference": reference.deform_psroi_pool(x, rois, None, *args)[0],
        }
        for name, out in outputs.items():
            assert out[0, 0, 0].tolist() == [0.0, 7.0, 11.0], name

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_integer_rois_agree_across_backends(self, dtype, monkeypatch):
        """Integer RoIs put many samples exactly on -0.5 or H - 0.5: the Numba kernels, the
        torch backend and the reference compute the positions in the input's dtype in the
        original kernel's order, so they keep or skip the same samples. Before, Numba
        (float64 positions) differed on 29-69 of 3000 float32 RoIs per setting."""
        monkeypatch.setenv("DEFORMCONV_BACKEND", "numba")
        gen = torch.Generator().manual_seed(0)
        x = torch.arange(2 * 9 * 4 * 4, dtype=dtype).reshape(2, 9, 4, 4) + 1
        tol = F64 if dtype == torch.float64 else {}
        for scale, samples, pooled in ((0.5, 2, 3), (1.0, 4, 3), (0.25, 2, 6)):
            rois = integer_rois(gen, 300, 2, -3, 10 if scale >= 0.5 else 20, dtype)
            args = (scale, 1, 3, pooled, pooled, samples, 0.0)
            out, count = torch.ops.deformconv.deform_psroi_pool(x, rois, None, *args)
            expected, expected_count = reference.deform_psroi_pool(x, rois, None, *args)
            out_torch, count_torch = torch_backend.forward(x, rois, None, *args)
            for name, got, want in (("numba", out, expected), ("numba count", count,
                                                              expected_count),
                                    ("torch", out_torch, expected),
                                    ("torch count", count_torch, expected_count)):
                torch.testing.assert_close(got, want, **tol, msg=lambda m, name=name,
                                           args=args: f"{name} {args}: {m}")

    def test_float32_matches_float64(self, generator):
        x = torch.randn(2, 2 * 9, 10, 10, generator=generator, dtype=torch.float64)
        rois = make_rois(generator, 9, 2, 40, 40)
        offset = torch.randn(9, 2, 3, 3, generator=generator, dtype=torch.float64)
        options = {"spatial_scale": 0.25, "output_dim": 2, "group_size": 3, "pooled_size": 3,
                   "trans_std": 0.1}
        out64 = deform_psroi_pool(x, rois, offset, **options)
        out32 = deform_psroi_pool(x.float(), rois.float(), offset.float(), **options)
        torch.testing.assert_close(out32, out64.float(), rtol=1e-4, atol=1e-4)

    @pytest.mark.parametrize(("channels", "rois", "kwargs", "error", "match"), [
        (9, torch.zeros(1, 5), {"output_dim": 2}, ValueError,
         r"input.shape\[1\] is not valid: got 9, expected output_dim \* group_size\*\*2 = "
         r"2 \* 3\*\*2 = 18"),
        (9, torch.zeros(1, 6), {}, ValueError, r"rois must have shape \(K, 5\)"),
        (9, torch.tensor([[1.0, 0, 0, 4, 4]]), {}, ValueError, r"must be in \[0, 0\].*got 1"),
        (9, torch.tensor([[0.0, 0, 0, float("inf"), 4]]), {}, ValueError, "finite"),
        (9, torch.zeros(1, 5), {"offset": torch.zeros(1, 2, 2, 2)}, ValueError,
         r"offset.shape is not valid: got \(1, 2, 2, 2\), expected \(1, 2, 3, 3\)"),
        (9, torch.zeros(1, 5), {"offset": torch.zeros(1, 3, 3, 3)}, ValueError,
         r"offset.shape\[1\] is not valid: got 3, expected 2 \* num_classes"),
        (9, torch.zeros(1, 5), {"offset": torch.zeros(1, 4, 3, 3)}, ValueError,
         r"output_dim \(1\) must be divisible by num_classes .* = 2"),
        (9, torch.zeros(1, 5), {"group_size": 0}, ValueError, r"group_size must be > 0, got 0"),
        (9, torch.zeros(1, 5), {"sample_per_part": 0}, ValueError, "sample_per_part"),
        # NaN passes "<= 0" checks: it used to pool silent zeros
        (9, torch.zeros(1, 5), {"spatial_scale": float("nan")}, ValueError,
         "spatial_scale must be a finite number > 0, got nan"),
        (9, torch.zeros(1, 5), {"spatial_scale": -1.0}, ValueError, "spatial_scale must be"),
        (9, torch.zeros(1, 5), {"trans_std": float("nan")}, ValueError,
         "trans_std must be a finite number, got nan"),
        (9, torch.zeros(1, 5), {"trans_std": float("inf")}, ValueError,
         "trans_std must be a finite number, got inf"),
    ])
    def test_bad_input(self, channels, rois, kwargs, error, match):
        x = torch.randn(1, channels, 6, 6)
        options = {"spatial_scale": 1.0, "output_dim": 1, "group_size": 3, "pooled_size": 3,
                   **kwargs}
        offset = options.pop("offset", None)
        with pytest.raises(error, match=match):
            deform_psroi_pool(x, rois, offset, **options)


@pytest.mark.parametrize("api", FORWARD_AD_APIS)
@pytest.mark.parametrize(("index", "name"), list(enumerate(["input", "rois", "offset"])))
def test_forward_mode_ad_is_refused(api, index, name):
    """A forward tangent was dropped silently (a zero or missing result tangent)."""
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(1, 4, 6, 6, generator=gen, dtype=torch.float64),
            torch.tensor([[0.0, 0.5, 1.0, 4.0, 4.5]], dtype=torch.float64),
            torch.randn(1, 2, 2, 2, generator=gen, dtype=torch.float64)]
    with pytest.raises(NotImplementedError, match=re.escape(
            f"forward-mode AD (torch.func.jvp, jacfwd / torch.autograd.forward_ad) is not "
            f"supported by deform_psroi_pool: {name} carries a forward tangent")):
        tangent_of(api, lambda *a: deform_psroi_pool(
            a[0], a[1], a[2], spatial_scale=1.0, output_dim=1, group_size=2, pooled_size=2,
            trans_std=0.1), args, index)


def test_registered_op_checks_its_arguments():
    """Direct calls of the registered ops cannot hand the kernels inconsistent shapes."""
    x = torch.randn(1, 4, 6, 6)
    rois = torch.tensor([[0.0, 0, 0, 4, 4]])
    op = torch.ops.deformconv
    with pytest.raises(ValueError, match=r"input.shape\[1\] is not valid"):
        op.deform_psroi_pool(x, rois, None, 1.0, 2, 2, 2, 2, 2, 0.1)
    with pytest.raises(ValueError, match="part_size must be > 0, got 0"):
        op.deform_psroi_pool(x, rois, None, 1.0, 1, 2, 2, 0, 2, 0.1)
    count = torch.ones(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"grad_out.shape is not valid"):
        op.deform_psroi_pool_backward(torch.zeros(3, 1, 2, 2), x, rois, None, count, 1.0, 2, 2,
                                      2, 0.1, True, True)


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("shape", [(1, 9, 0, 8), (1, 9, 8, 0)])
def test_feature_map_without_cells_gives_zeros(monkeypatch, backend, shape):
    """The torch backend failed on H or W = 0 (index out of bounds)."""
    monkeypatch.setenv("DEFORMCONV_BACKEND", backend)
    x = torch.randn(shape, requires_grad=True)
    offset = torch.zeros(1, 2, 3, 3, requires_grad=True)
    out = deform_psroi_pool(x, torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]]), offset,
                            spatial_scale=1.0, output_dim=1, group_size=3, pooled_size=3)
    assert out.shape == (1, 1, 3, 3) and not out.any()
    out.sum().backward()
    assert not offset.grad.any() and x.grad.shape == shape


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_float64_rois_are_rounded_in_float64(monkeypatch, backend):
    """The RoIs were cast to the input's float32 before the kernels rounded them: a corner
    just below a half became the half and rounded the other way (0.064 off the reference
    on the documented example)."""
    monkeypatch.setenv("DEFORMCONV_BACKEND", backend)
    x = torch.randn(1, 72, 20, 20, generator=torch.Generator().manual_seed(0))
    rois = near_half_rois()
    options = {"spatial_scale": 0.25, "output_dim": 8, "group_size": 3, "pooled_size": 3}
    expected = reference.deform_psroi_pool(x, rois, None, **options)[0]
    torch.testing.assert_close(deform_psroi_pool(x, rois, **options), expected,
                               atol=1e-5, rtol=0)


def reduced_precision_gradients(dtype: torch.dtype, sample_per_part: int, device: str = "cpu"
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and offset gradients of one bin's average over ``sample_per_part``² samples
    (all inside the map) in ``dtype`` and in float64, the input gradient summed: 1."""
    x = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    offset = torch.full((1, 2, 1, 1), 0.1)
    grads = []
    for kind in (dtype, torch.float64):
        x_k, offset_k = (t.to(device, kind).requires_grad_() for t in (x, offset))
        deform_psroi_pool(x_k, torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]], device=device), offset_k,
                          spatial_scale=1.0, output_dim=1, group_size=1, pooled_size=1,
                          sample_per_part=sample_per_part, trans_std=0.1).sum().backward()
        grads.append(torch.cat([x_k.grad.sum().view(1), offset_k.grad.flatten()]).cpu().double())
    return grads[0], grads[1]


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize(("dtype", "sample_per_part"),
                         [(torch.float16, 256), (torch.float16, 47), (torch.bfloat16, 17)])
def test_reduced_precision_gradients_divide_by_the_exact_sample_count(monkeypatch, backend,
                                                                     dtype, sample_per_part):
    """The sample count the forward saves for the backward was stored in the input's dtype:
    float16 cannot hold 256² (inf: all gradients 0), nor 47² = 2209 exactly, bfloat16 not
    17² = 289 (gradients off by 1/288). It is kept in float32 now."""
    monkeypatch.setenv("DEFORMCONV_BACKEND", backend)
    assert_reduced_precision_gradients_exact(dtype, sample_per_part, "cpu")


def assert_reduced_precision_gradients_exact(dtype: torch.dtype, sample_per_part: int,
                                             device: str) -> None:
    got, expected = reduced_precision_gradients(dtype, sample_per_part, device)
    assert abs(expected[0] - 1) < 1e-12
    torch.testing.assert_close(got, expected, atol=2e-4 if dtype == torch.float16 else 2e-3,
                               rtol=0)
