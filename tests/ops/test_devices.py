"""The device-agnostic torch path: on accelerators against the CPU kernels, and autocast.

The CUDA tests are skipped where no CUDA device is present; run them on a GPU machine
with ``python -m pytest tests/ops/test_devices.py``.
"""

from __future__ import annotations

import pytest
import torch

from deformconv.ops import deform_conv2d
from deformconv.ops._torch import deform_conv as torch_backend
from deformconv.ops.reference import deform_conv2d as reference_deform_conv2d

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIGS = [
    # (n, cin, cout, h, w, kernel, stride, padding, dilation, groups, offset_groups, mask)
    (2, 6, 4, 9, 11, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, False),
    (1, 8, 6, 12, 7, (3, 2), (2, 1), (1, 0), (2, 1), 2, 4, True),
    (3, 4, 4, 5, 5, (1, 1), (1, 1), (0, 0), (1, 1), 1, 2, True),
]


@needs_cuda
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_deform_conv2d_cuda_matches_cpu(config, dtype):
    n, cin, cout, h, w, kernel, stride, padding, dilation, groups, og, with_mask = config
    kh, kw = kernel
    hout = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wout = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "input": torch.randn(n, cin, h, w, generator=gen, dtype=dtype),
        "offset": 2 * torch.randn(n, 2 * og * kh * kw, hout, wout, generator=gen, dtype=dtype),
        "weight": torch.randn(cout, cin // groups, kh, kw, generator=gen, dtype=dtype),
        "bias": torch.randn(cout, generator=gen, dtype=dtype),
    }
    if with_mask:
        tensors["mask"] = torch.rand(n, og * kh * kw, hout, wout, generator=gen, dtype=dtype)
    geometry = {"stride": stride, "padding": padding, "dilation": dilation}
    results = {}
    for device in ("cpu", "cuda"):
        leaves = {k: v.to(device).requires_grad_() for k, v in tensors.items()}
        out = deform_conv2d(**leaves, **geometry)
        grad_out = torch.linspace(-1, 1, out.numel(), dtype=dtype, device=device).view_as(out)
        grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
        results[device] = [out.cpu(), *(g.cpu() for g in grads)]
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-9}
    names = ["output", *(f"grad {k}" for k in tensors)]
    for name, on_cpu, on_cuda in zip(names, results["cpu"], results["cuda"], strict=True):
        torch.testing.assert_close(on_cuda, on_cpu, **tol, msg=lambda m, name=name: f"{name}: {m}")


@needs_cuda
def test_deform_conv2d_cuda_half_computes_in_float32():
    x = torch.randn(1, 4, 8, 8, device="cuda", dtype=torch.float16)
    weight = torch.randn(4, 4, 3, 3, device="cuda", dtype=torch.float16)
    offset = torch.zeros(1, 18, 6, 6, device="cuda", dtype=torch.float16)
    out = deform_conv2d(x, offset, weight)
    expected = torch.nn.functional.conv2d(x.float(), weight.float()).half()
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)


@torch.library.custom_op("deformconv_test::fallback_backward", mutates_args=())
def _fallback_backward_in_op(
    grad_out: torch.Tensor, x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
    mask: torch.Tensor,
) -> list[torch.Tensor]:
    geometry = ((2, 1), (1, 0), (1, 2))
    return list(torch_backend.backward(grad_out, x, offset, weight, mask, geometry,
                                       True, True, True))


def test_fallback_backward_works_inside_a_custom_op():
    # Custom ops run below autograd; the fallback backward must not rely on it.
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 7, 9, generator=gen, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 2, generator=gen, dtype=torch.float64)
    offset = 3 * torch.randn(2, 36, 4, 7, generator=gen, dtype=torch.float64)
    mask = torch.rand(2, 18, 4, 7, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(2, 4, 4, 7, generator=gen, dtype=torch.float64)
    got = _fallback_backward_in_op(grad_out, x, offset, weight, mask)
    leaves = [t.clone().requires_grad_() for t in (x, offset, weight, mask)]
    out = reference_deform_conv2d(leaves[0], leaves[1], leaves[2], None, (2, 1), (1, 0), (1, 2),
                                  leaves[3])
    expected = torch.autograd.grad(out, leaves, grad_out)
    for name, g, e in zip(["input", "offset", "weight", "mask"], got, expected, strict=True):
        torch.testing.assert_close(g, e, msg=lambda m, name=name: f"grad {name}: {m}")


def test_deform_conv2d_under_bf16_autocast_runs_in_float32():
    # The offset branch's conv yields bf16 under autocast while the features stay float32.
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    weight = torch.randn(4, 4, 3, 3, requires_grad=True)
    offset_conv = torch.nn.Conv2d(4, 18, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        offset = offset_conv(x)
        assert offset.dtype == torch.bfloat16
        out = deform_conv2d(x, offset, weight, padding=1)
    assert out.dtype == torch.float32
    expected = deform_conv2d(x, offset.float(), weight, padding=1)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert x.grad is not None and offset_conv.weight.grad is not None


def test_roi_pools_under_bf16_autocast_run_in_float32():
    from deformconv.ops import deform_psroi_pool, deform_roi_pool

    x = torch.randn(1, 8, 20, 20, requires_grad=True)
    rois = torch.tensor([[0.0, 2.0, 3.0, 15.0, 16.0]])
    fc = torch.nn.Linear(4, 18)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        offset = fc(torch.randn(1, 4)).view(1, 2, 3, 3)  # bf16, as an offset fc gives
        pooled = deform_roi_pool(x, rois, offset, output_size=3)
        ps_pooled = deform_psroi_pool(x, rois, offset, spatial_scale=1.0, output_dim=8,
                                      group_size=1, pooled_size=3, trans_std=0.1)
    assert offset.dtype == torch.bfloat16
    assert pooled.dtype == ps_pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, deform_roi_pool(x, rois, offset.float(), output_size=3))
    (pooled.sum() + ps_pooled.sum()).backward()
    assert fc.weight.grad is not None and fc.weight.grad.abs().sum() > 0
