"""The RoI pooling ops on CUDA (the device-agnostic torch kernels) against the CPU kernels.

Skipped where no CUDA device is present; run on a GPU machine with
``python -m pytest tests/ops/test_roi_pool_devices.py``.
"""

from __future__ import annotations

import pytest
import torch

from deformconv.ops import deform_psroi_pool, deform_roi_pool

from .roi_helpers import make_rois

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _run_on_both(fn, tensors: dict[str, torch.Tensor | None], dtype: torch.dtype) -> None:
    results = {}
    for device in ("cpu", "cuda"):
        leaves = {k: None if v is None else v.to(device).requires_grad_()
                  for k, v in tensors.items()}
        out = fn(**leaves)
        grad_out = torch.linspace(-1, 1, out.numel(), dtype=dtype, device=device).view_as(out)
        present = [v for v in leaves.values() if v is not None]
        grads = torch.autograd.grad(out, present, grad_out)
        results[device] = [out.cpu(), *(g.cpu() for g in grads)]
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-9}
    for on_cpu, on_cuda in zip(results["cpu"], results["cuda"], strict=True):
        torch.testing.assert_close(on_cuda, on_cpu, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("sampling_ratio", "aligned"), [(0, True), (2, False)])
def test_deform_roi_pool_cuda_matches_cpu(dtype, sampling_ratio, aligned):
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "input": torch.randn(2, 5, 11, 13, generator=gen, dtype=dtype),
        "offset": torch.randn(14, 2, 3, 2, generator=gen, dtype=dtype),
        "mask": torch.rand(14, 1, 3, 2, generator=gen, dtype=dtype),
    }
    rois = make_rois(gen, 14, 2, 22, 26, dtype)

    def fn(input, offset, mask):
        return deform_roi_pool(input, rois.to(input.device), offset, (3, 2), 0.5,
                               sampling_ratio, aligned=aligned, mask=mask)

    _run_on_both(fn, tensors, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_deform_psroi_pool_cuda_matches_cpu(dtype):
    gen = torch.Generator().manual_seed(1)
    tensors = {
        "input": torch.randn(2, 4 * 9, 11, 13, generator=gen, dtype=dtype),
        "offset": torch.randn(14, 4, 2, 2, generator=gen, dtype=dtype),
    }
    rois = make_rois(gen, 14, 2, 22, 26, dtype)

    def fn(input, offset):
        return deform_psroi_pool(input, rois.to(input.device), offset, spatial_scale=0.5,
                                 output_dim=4, group_size=3, pooled_size=3, part_size=2,
                                 trans_std=0.1)

    _run_on_both(fn, tensors, dtype)
