"""Speed and memory of deform_conv2d: ours vs dense conv2d vs torchvision, in one process.

Prints, per shape (3×3 kernels), the best-of-N time of forward and forward+backward for
ours, ``torch.nn.functional.conv2d`` (same geometry, no offsets: the floor any deformable
conv pays) and ``torchvision.ops.deform_conv2d``, the ratios between them, and the peak
extra memory of each forward at res5, batch 8 (process RSS sampled during the call, minus the
output, in a fresh process where glibc unmaps every large block when it is freed).

    python benchmarks/bench_deform_conv.py            # full table (a few minutes on 2 cores)
    python benchmarks/bench_deform_conv.py --quick    # smaller shapes, seconds
    python benchmarks/bench_deform_conv.py --device cuda   # GPU: bench_deform_conv_cuda.py
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deformconv.ops import deform_conv2d

try:
    from torchvision.ops import deform_conv2d as tv_deform_conv2d
except ImportError:  # torchvision is an optional extra
    tv_deform_conv2d = None


@dataclass(frozen=True)
class Case:
    name: str
    n: int
    cin: int
    cout: int
    h: int
    w: int
    dilation: int = 1
    offset_groups: int = 1


FULL = [
    Case("res5 (paper)", 1, 512, 512, 38, 63, dilation=2, offset_groups=4),
    Case("mid", 2, 256, 256, 64, 64),
    Case("early, batch 8", 8, 64, 64, 56, 56),
]
QUICK = [
    Case("res5-like, small", 1, 128, 128, 19, 32, dilation=2, offset_groups=4),
    Case("early, batch 2", 2, 32, 32, 28, 28),
]
MEMORY_CASE = Case("res5, batch 8", 8, 512, 512, 38, 63, dilation=2, offset_groups=4)


def make_inputs(case: Case, requires_grad: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(case.n, case.cin, case.h, case.w, generator=g)
    weight = torch.randn(case.cout, case.cin, 3, 3, generator=g) * 0.02
    # Offsets of a few pixels, as a trained offset branch produces.
    offset = torch.randn(case.n, 2 * case.offset_groups * 9, case.h, case.w, generator=g) * 2
    tensors = {"input": x, "offset": offset, "weight": weight}
    for t in tensors.values():
        t.requires_grad_(requires_grad)
    return tensors


def best_times(ops: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds per op; the ops take turns in each round, so a burst of
    load from elsewhere hits them alike instead of one op's whole series."""
    for fn in ops.values():
        fn()  # warm-up (compiles, allocates)
    times: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(repeats):
        for name, fn in ops.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(series) for name, series in times.items()}


def runners(case: Case, backward: bool) -> dict[str, Callable[[], object]]:
    t = make_inputs(case, backward)
    pad = case.dilation

    def finish(out: torch.Tensor) -> None:
        if backward:
            out.sum().backward()

    ops = {
        "ours": lambda: finish(deform_conv2d(
            t["input"], t["offset"], t["weight"], padding=pad, dilation=case.dilation)),
        "conv2d": lambda: finish(F.conv2d(
            t["input"], t["weight"], padding=pad, dilation=case.dilation)),
    }
    if tv_deform_conv2d is not None:
        ops["torchvision"] = lambda: finish(tv_deform_conv2d(
            t["input"], t["offset"], t["weight"], padding=pad, dilation=case.dilation))
    return ops


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_extra_memory(fn: Callable[[], torch.Tensor]) -> int:
    """Peak RSS growth while ``fn`` runs, minus the size of what it returns."""
    baseline = rss_bytes()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out = fn()
    done.set()
    sampler.join()
    peak = max(peak, rss_bytes())
    return peak - baseline - out.numel() * out.element_size()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, a few seconds")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: Triton vs cuDNN vs torchvision (bench_deform_conv_cuda.py)")
    parser.add_argument("--dry-run", action="store_true",
                        help="with --device cuda: tiny shapes in Triton's CPU interpreter")
    args = parser.parse_args()
    if args.device == "cuda":
        from bench_deform_conv_cuda import main as cuda_main

        cuda_main(args.quick, 20 if args.repeats == 5 else args.repeats, args.dry_run)
        return
    if args.memory_probe:
        memory_probe()
        return
    cases = QUICK if args.quick else FULL
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    header = (f"| {'shape (N,Cin,Cout,H,W) dil/G':<40} | {'pass':<8} | {'ours ms':>8} | "
              f"{'conv2d ms':>9} | {'tv ms':>8} | {'ours/conv2d':>11} | {'tv/ours':>7} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for case in cases:
        for backward in (False, True):
            ctx = torch.enable_grad() if backward else torch.no_grad()
            with ctx:
                times = best_times(runners(case, backward), args.repeats)
            shape = (f"{case.name} ({case.n},{case.cin},{case.cout},{case.h},{case.w}) "
                     f"{case.dilation}/{case.offset_groups}")
            tv = times.get("torchvision", float("nan"))
            print(f"| {shape:<40} | {'fwd+bwd' if backward else 'fwd':<8} | "
                  f"{times['ours'] * 1e3:8.1f} | {times['conv2d'] * 1e3:9.1f} | {tv * 1e3:8.1f} | "
                  f"{times['ours'] / times['conv2d']:11.2f} | {tv / times['ours']:7.2f} |")
    if not args.quick:
        # A fresh process where glibc returns every large block at once: RSS is live memory.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        subprocess.run([sys.executable, __file__, "--memory-probe"], env=env, check=True)


def memory_probe() -> None:
    """Print the peak extra memory of each forward at MEMORY_CASE (run in its own process)."""
    t = make_inputs(MEMORY_CASE, False)
    ops = {"ours": lambda x, off, w: deform_conv2d(x, off, w, padding=2, dilation=2),
           "conv2d": lambda x, off, w: F.conv2d(x, w, padding=2, dilation=2)}
    if tv_deform_conv2d is not None:
        ops["torchvision"] = lambda x, off, w: tv_deform_conv2d(x, off, w, padding=2, dilation=2)
    c = MEMORY_CASE
    with torch.no_grad():
        for name, op in ops.items():
            # Warm-up on an 8x8 crop with 8 output channels: compiles kernels without growing
            # the reusable workspace (columns, weight copy), whose allocation the measured
            # call then counts.
            op(t["input"][:1, :, :8, :8], t["offset"][:1, :, :8, :8], t["weight"][:8])
            extra = peak_extra_memory(lambda op=op: op(t["input"], t["offset"], t["weight"]))
            print(f"peak extra memory of the forward at {c.name} "
                  f"({c.n},{c.cin},{c.cout},{c.h},{c.w}), {name}: {extra / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
