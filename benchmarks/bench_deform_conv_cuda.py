"""deform_conv2d on CUDA: ours (Triton) vs cuDNN conv2d vs torchvision, in one process.

Run through ``python benchmarks/bench_deform_conv.py --device cuda``. Per shape (3×3
kernels) it prints median times over CUDA-event-timed rounds in which the ops take turns,
forward and forward+backward, for

- ours in float32 and bfloat16 (NCHW; Triton kernels, float32 accumulation),
- cuDNN ``conv2d`` with the same geometry and groups: float32 (with torch's default TF32
  setting for convolutions) and bfloat16 channels-last -- the floor any deformable conv pays,
- ``torchvision.ops.deform_conv2d`` in float32 (it has no bfloat16 kernel),

then the ratios the issue's goals name, and the peak extra GPU memory of each forward and
forward+backward (``max_memory_allocated`` above what was allocated before the call, minus
the output). ``--dry-run`` runs tiny shapes on CPU tensors in Triton's interpreter
(needs ``TRITON_INTERPRET=1``): it checks the script, it measures nothing.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d as tv_deform_conv2d  # the comparison: required

from deformconv.ops import _dispatch, deform_conv2d


@dataclass(frozen=True)
class Shape:
    name: str
    n: int
    cin: int
    cout: int
    h: int
    w: int
    dilation: int = 1
    offset_groups: int = 1
    groups: int = 1
    mask: bool = False


SHAPES = [
    Shape("S1 res5", 8, 512, 512, 38, 63, dilation=2, offset_groups=4, mask=True),
    Shape("S2", 32, 512, 512, 28, 28),
    Shape("S3 S1 depthwise", 8, 512, 512, 38, 63, dilation=2, offset_groups=4, groups=512,
          mask=True),
    Shape("DCNv4-style", 64, 128, 128, 56, 56, offset_groups=4, groups=128, mask=True),
]
QUICK = [
    Shape("S1 res5, batch 1", 1, 512, 512, 38, 63, dilation=2, offset_groups=4, mask=True),
    Shape("DCNv4-style, batch 8", 8, 128, 128, 56, 56, offset_groups=4, groups=128, mask=True),
]
DRY = [
    Shape("dry dense", 1, 16, 16, 6, 7, dilation=2, offset_groups=2, mask=True),
    Shape("dry depthwise", 1, 8, 8, 5, 5, offset_groups=2, groups=8, mask=True),
]


ROUNDS = 20  # timed rounds when --repeats is not given
GOAL_SHAPES = ("S1 res5", "S2", "S3 S1 depthwise")  # the shapes the goals name (SHAPES)


def make_inputs(shape: Shape, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    kk = 9
    tensors = {
        "input": torch.randn(shape.n, shape.cin, shape.h, shape.w, generator=g),
        "weight": torch.randn(shape.cout, shape.cin // shape.groups, 3, 3, generator=g) * 0.02,
        # Offsets of a few pixels, as a trained offset branch produces.
        "offset": torch.randn(shape.n, 2 * shape.offset_groups * kk, shape.h, shape.w,
                              generator=g) * 2,
    }
    if shape.mask:
        tensors["mask"] = torch.rand(shape.n, shape.offset_groups * kk, shape.h, shape.w,
                                     generator=g)
    return {k: v.to(device) for k, v in tensors.items()}


class Clock:
    """Seconds of a call: CUDA events on a GPU, wall time in the interpreter."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"

    def time(self, fn: Callable[[], object]) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3

    def peak_extra(self, fn: Callable[[], torch.Tensor]) -> float:
        """Peak MiB allocated during ``fn`` beyond what was live before, minus its result."""
        if not self.cuda:
            return float("nan")
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        result = out.numel() * out.element_size() if isinstance(out, torch.Tensor) else 0
        return (torch.cuda.max_memory_allocated() - before - result) / 2**20


def median_times(ops: dict[str, Callable[[], object]], clock: Clock, rounds: int
                 ) -> dict[str, float]:
    """Median seconds per op; ops take turns each round so drifts hit all alike."""
    for fn in ops.values():
        fn()  # warm-up: compiles the Triton kernels, picks cuDNN algorithms
    series: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(rounds):
        for name, fn in ops.items():
            series[name].append(clock.time(fn))
    return {name: statistics.median(s) for name, s in series.items()}


def variants(shape: Shape, t: dict[str, torch.Tensor], backward: bool
             ) -> dict[str, Callable[[], torch.Tensor]]:
    """The ops of one row; each returns its output (after the backward, when timed)."""
    pad, dil, groups = shape.dilation, shape.dilation, shape.groups

    def leaves(dtype: torch.dtype, channels_last: bool = False) -> dict[str, torch.Tensor]:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = {}
        for name, v in t.items():
            v = v.to(dtype)
            if v.dim() == 4 and name in ("input", "weight"):
                v = v.contiguous(memory_format=fmt)
            out[name] = v.detach().requires_grad_(backward)
        return out

    def run(fn: Callable[[dict], torch.Tensor], a: dict) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            out = fn(a)
            if backward:
                out.backward(torch.ones_like(out))
                for v in a.values():
                    v.grad = None
            return out

        return call

    def ours(a: dict) -> torch.Tensor:
        return deform_conv2d(a["input"], a["offset"], a["weight"], None, 1, pad, dil,
                             a.get("mask"))

    def dense(a: dict) -> torch.Tensor:
        return F.conv2d(a["input"], a["weight"], None, 1, pad, dil, groups)

    def torchvision(a: dict) -> torch.Tensor:
        return tv_deform_conv2d(a["input"], a["offset"], a["weight"], None, 1, pad, dil,
                                a.get("mask"))

    return {
        "ours fp32": run(ours, leaves(torch.float32)),
        "ours bf16": run(ours, leaves(torch.bfloat16)),
        "conv2d fp32": run(dense, leaves(torch.float32)),
        "conv2d bf16 CL": run(dense, leaves(torch.bfloat16, channels_last=True)),
        "torchvision fp32": run(torchvision, leaves(torch.float32)),
    }


NAMES = ["ours fp32", "ours bf16", "conv2d fp32", "conv2d bf16 CL", "torchvision fp32"]


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def _memory_ratio(theirs: float, ours: float) -> float:
    """``theirs / ours`` of peak extra MiB: inf when ours allocates nothing extra and theirs
    does (the best result, not a missing one), 1 when neither does, NaN when not measured."""
    if math.isnan(theirs) or math.isnan(ours) or ours > 0:
        return _ratio(theirs, ours)
    return math.inf if theirs > 0 else 1.0


def measure(shape: Shape, device: str, rounds: int, clock: Clock
            ) -> dict[bool, tuple[list[float], list[float]]]:
    """``{backward: (ms per op, peak extra MiB per op)}`` in ``NAMES`` order."""
    t = make_inputs(shape, device)
    results = {}
    for backward in (False, True):
        ops = variants(shape, t, backward)
        with torch.enable_grad() if backward else torch.no_grad():
            times = median_times(ops, clock, rounds)
            peaks = {name: clock.peak_extra(fn) for name, fn in ops.items()}
        results[backward] = ([times.get(n, float("nan")) * 1e3 for n in NAMES],
                             [peaks.get(n, float("nan")) for n in NAMES])
    return results


def print_goals(results: dict[str, dict[bool, tuple[list[float], list[float]]]]) -> None:
    """The issue's goals, each with the measured value (NaN where a shape was not run)."""
    def ms(name: str, backward: bool, op: int) -> float:
        return results[name][backward][0][op] if name in results else float("nan")

    def mib(name: str, op: int) -> float:
        return results[name][False][1][op] if name in results else float("nan")

    if not any(name in results for name in GOAL_SHAPES):
        print(f"goals (issue 14): not measured, they need the full run's shapes "
              f"({', '.join(GOAL_SHAPES)}), not --quick's or --dry-run's")
        return
    goals = []
    for name in GOAL_SHAPES[:2]:
        goals += [
            (f"{name} forward, ours/conv2d fp32", _ratio(ms(name, False, 0), ms(name, False, 2)),
             "<=", 1.5),
            (f"{name} forward, ours/conv2d bf16", _ratio(ms(name, False, 1), ms(name, False, 3)),
             "<=", 1.5),
            (f"{name} forward, torchvision/ours fp32",
             _ratio(ms(name, False, 4), ms(name, False, 0)), ">=", 2.0),
            (f"{name} fwd+bwd, torchvision/ours fp32",
             _ratio(ms(name, True, 4), ms(name, True, 0)), ">=", 4.0),
            (f"{name} forward peak extra memory, torchvision/ours fp32",
             _memory_ratio(mib(name, 4), mib(name, 0)), ">=", 5.0),
        ]
    goals.append(("S3 depthwise forward, torchvision/ours fp32",
                  _ratio(ms(GOAL_SHAPES[2], False, 4), ms(GOAL_SHAPES[2], False, 0)),
                  ">=", 15.0))
    print("goals (issue 14)")
    for label, value, op, target in goals:
        met = value <= target if op == "<=" else value >= target
        verdict = "met" if met else "NOT met" if value == value else "not measured"
        if value == math.inf:
            verdict += " (ours allocates nothing extra)"
        print(f"  {label}: {value:.2f} (target {op} {target}) {verdict}")


def run(shapes: list[Shape], rounds: int, device: str) -> None:
    clock = Clock(device)
    backend = _dispatch.select_backend(torch.device(device), torch.float32)
    if device == "cuda":
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
              f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
              f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, ours on {backend}, "
              f"median of {rounds} rounds")
    else:
        print(f"DRY RUN on {device} (Triton interpreter, ours on {backend}): checks the script, "
              "the numbers mean nothing")
    results = {}
    time_rows, memory_rows = [], []
    for shape in shapes:
        results[shape.name] = measure(shape, device, rounds, clock)
        label = (f"{shape.name} ({shape.n},{shape.cin},{shape.cout},{shape.h},{shape.w}) "
                 f"{shape.dilation}/{shape.offset_groups}/{shape.groups}")
        for backward, (ms, mib) in results[shape.name].items():
            pass_ = "fwd+bwd" if backward else "fwd"
            ratios = (_ratio(ms[0], ms[2]), _ratio(ms[1], ms[3]), _ratio(ms[4], ms[0]))
            time_rows.append(f"| {label} | {pass_} | " + " | ".join(f"{v:.2f}" for v in ms)
                             + " | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")
            memory_rows.append(f"| {label} | {pass_} | " + " | ".join(f"{v:.1f}" for v in mib)
                               + f" | {_memory_ratio(mib[4], mib[0]):.1f} |")
    print("| shape (N,Cin,Cout,H,W) dil/G/groups | pass | "
          + " | ".join(f"{n} ms" for n in NAMES)
          + " | ours/conv2d fp32 | ours/conv2d bf16 | tv/ours fp32 |")
    print("|---" * (len(NAMES) + 5) + "|")
    print("\n".join(time_rows))
    print()
    print("peak extra GPU memory, MiB (above what was allocated before the call, minus the "
          "output; tv/ours is inf where ours allocates nothing extra)")
    print("| shape | pass | " + " | ".join(NAMES) + " | tv/ours fp32 |")
    print("|---" * (len(NAMES) + 3) + "|")
    print("\n".join(memory_rows))
    print()
    print_goals(results)


def main(quick: bool, repeats: int | None, dry_run: bool) -> None:
    """Entry point of ``bench_deform_conv.py --device cuda``: medians of ``repeats`` rounds
    (``ROUNDS`` when None)."""
    if dry_run:
        if not _dispatch.triton_interpreted():
            raise SystemExit("--dry-run runs the Triton kernels in the interpreter: "
                             "set TRITON_INTERPRET=1")
        os.environ[_dispatch.BACKEND_ENV] = "triton"
        run(DRY, 1, "cpu")
        return
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA device (try --dry-run to check the script)")
    run(QUICK if quick else SHAPES, repeats or ROUNDS, "cuda")
