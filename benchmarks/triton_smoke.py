"""Smoke test of the Triton backend on one device: each op's kernels against the torch backend.

    python benchmarks/triton_smoke.py cuda      # compiled kernels on the GPU
    TRITON_INTERPRET=1 python benchmarks/triton_smoke.py cpu    # Triton's interpreter
    TRITON_INTERPRET=1 python benchmarks/triton_smoke.py cpu --small  # the same, ~1 min

``--small`` (``gpu_check.sh --dry-run``) takes 8 channels instead of 32 and 5×4 maps instead
of 9×8: it checks the plumbing in the interpreter, which is slow (minutes at full size on 2
cores, mostly the direct conv path).

Runs every kernel once (forward and backward of the three ops, both conv paths, float32
and bfloat16), prints the largest difference to the torch backend computed in float64 on
the same device, relative to the largest magnitude, with the time of each first call
(kernel compilation included), and exits non-zero when a difference exceeds its tolerance.
It is the first step of ``gpu_check.sh``: it fails fast, before the tests.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

from deformconv.ops import _dispatch, deform_conv2d, deform_psroi_pool, deform_roi_pool

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def _grads(fn: Callable[..., torch.Tensor], tensors: list[torch.Tensor], backend: str
           ) -> list[torch.Tensor]:
    os.environ[_dispatch.BACKEND_ENV] = backend
    leaves = [t.detach().requires_grad_() for t in tensors]
    out = fn(*leaves)
    grad_out = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out).to(out.dtype)
    return [out, *torch.autograd.grad(out, leaves, grad_out)]


def _compare(name: str, fn: Callable[..., torch.Tensor], tensors: list[torch.Tensor],
             dtype: torch.dtype) -> bool:
    start = time.perf_counter()
    ours = _grads(fn, [t.to(dtype) for t in tensors], "triton")
    seconds = time.perf_counter() - start
    expected = _grads(fn, [t.to(dtype).double() for t in tensors], "torch")
    worst = max(((a.double() - e).abs().max() / e.abs().max().clamp(min=1)).item()
                for a, e in zip(ours, expected, strict=True))
    ok = worst <= TOLERANCE[dtype]
    print(f"{name:<40} {dtype!s:<15} max rel diff {worst:.1e} "
          f"({'ok' if ok else 'FAILED'}), first call {seconds:.1f} s", flush=True)
    return ok


def main(device: str, small: bool = False) -> int:
    """Compare every kernel on ``device``; 0 when all are within tolerance, else 1."""
    from deformconv.ops._triton import deform_conv as triton_conv

    gen = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device)

    # psroi pooling reads channels = output_dim * group_size**2 (2 * 4**2, or 2 * 2**2)
    channels, height, width, group_size = (8, 5, 4, 2) if small else (32, 9, 8, 4)
    x, w, b = (randn(2, channels, height, width), randn(channels, channels // 2, 3, 3),
               randn(channels))
    offset = 2 * randn(2, 2 * 2 * 9, height, width)
    mask = randn(2, 2 * 9, height, width).sigmoid()
    x_dw, w_dw = randn(2, channels // 2, height, width), randn(channels // 2, 1, 3, 3)
    rois = torch.tensor([[0, 1.0, 2.0, 13.0, 15.0], [1, -3.0, 4.0, 30.0, 9.0],
                         [0, 9.0, 9.0, 4.0, 5.0]], device=device)
    roi_offset = randn(3, 2, 3, 3)
    ok = True
    use_gemm = triton_conv._use_gemm
    for dtype in (torch.float32, torch.bfloat16):
        for gemm in (True, False):
            triton_conv._use_gemm = lambda cin_g, cout_g, gemm=gemm: gemm
            try:
                ok &= _compare(f"deform_conv2d groups 2 ({'gemm' if gemm else 'direct'})",
                               lambda x, o, w, b, m: deform_conv2d(x, o, w, b, 1, 1, 1, m),
                               [x, offset, w, b, mask], dtype)
            finally:
                triton_conv._use_gemm = use_gemm
        ok &= _compare("deform_conv2d depthwise",
                       lambda x, o, w: deform_conv2d(x, o, w, padding=1),
                       [x_dw, offset, w_dw], dtype)
        ok &= _compare("deform_roi_pool", lambda x, o: deform_roi_pool(
            x, rois.to(torch.float32 if x.dtype != torch.float64 else x.dtype), o, 3, 0.5, 2),
            [x, roi_offset], dtype)
        ok &= _compare("deform_psroi_pool", lambda x, o: deform_psroi_pool(
            x, rois.to(torch.float32 if x.dtype != torch.float64 else x.dtype), o,
            spatial_scale=0.5, output_dim=2, group_size=group_size, pooled_size=3,
            trans_std=0.1),
            [x, roi_offset], dtype)
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("device", nargs="?", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--small", action="store_true",
                        help="8 channels and 5x4 maps: the plumbing, quickly, in the interpreter")
    args = parser.parse_args()
    raise SystemExit(main(args.device, args.small))
