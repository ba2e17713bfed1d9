"""Speed and memory of deform_conv2d: ours vs dense conv2d vs torchvision, in one process.

Four tables, every ratio measured in the same run:

1. The op, per shape (3×3 kernels): best-of-N forward and forward+backward of ours,
   ``torch.nn.functional.conv2d`` with the same geometry and groups (no offsets: the floor
   any deformable conv pays) and ``torchvision.ops.deform_conv2d``; rows marked NHWC give
   all three the input (and conv2d its weight) stored channels-last.
2. Modules, forward+backward: ``deformconv.nn.DeformConv2d`` (with its own offset conv) vs
   ``nn.Conv2d`` vs torchvision's ``DeformConv2d`` fed by the same offset conv, at the
   small-layer shapes of compact networks; and one training step of a small CNN whose last
   two convs are deformable, and of the demo's segmentation net (its defaults),
   each vs its plain twin.
3. Peak extra memory (process RSS sampled during the call, in a fresh process where glibc
   unmaps every freed large block) of the forward and of forward+backward at res5, batch 8:
   the forward's minus its output, forward+backward's minus output and gradients.
4. Cold start: import and first forward+backward in a fresh process with an empty Numba
   kernel cache, and again with the cache it filled.

    python benchmarks/bench_deform_conv.py            # everything (far longer than --quick)
    python benchmarks/bench_deform_conv.py --quick    # smaller shapes, ops and modules only

``--quick`` still takes about 2 minutes on 2 cores (one thread): Numba compiles the kernels
first (~10 s) and torchvision's depthwise forward+backward takes about 1 s a call.
    python benchmarks/bench_deform_conv.py --only ops,modules   # some of ops/modules/memory/cold
    python benchmarks/bench_deform_conv.py --device cuda   # GPU: bench_deform_conv_cuda.py
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deformconv.cli._common import non_negative_float, positive_int
from deformconv.nn import DeformConv2d
from deformconv.ops import _dispatch, deform_conv2d

try:
    from torchvision.ops import DeformConv2d as TorchvisionDeformConv2dLayer
    from torchvision.ops import deform_conv2d as tv_deform_conv2d
except ImportError:  # torchvision is an optional extra
    TorchvisionDeformConv2dLayer = tv_deform_conv2d = None

SECTIONS = ("ops", "modules", "memory", "cold")


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
    groups: int = 1
    backward: tuple[bool, ...] = (False, True)
    channels_last: bool = False  # input (and conv2d's weight) stored channels-last

    def label(self) -> str:
        groups = f" g{self.groups}" if self.groups > 1 else ""
        layout = " NHWC" if self.channels_last else ""
        return (f"{self.name} ({self.n},{self.cin},{self.cout},{self.h},{self.w}) "
                f"{self.dilation}/{self.offset_groups}{groups}{layout}")


FULL = [
    Case("res5 (paper)", 1, 512, 512, 38, 63, dilation=2, offset_groups=4),
    Case("mid", 2, 256, 256, 64, 64),
    Case("early, batch 8", 8, 64, 64, 56, 56),
    Case("small", 32, 32, 32, 28, 28),
    Case("depthwise", 8, 256, 256, 56, 56, groups=256),
    Case("depthwise, 64 ch", 8, 64, 64, 56, 56, groups=64),
    Case("small", 32, 32, 32, 28, 28, channels_last=True),
    Case("depthwise", 8, 256, 256, 56, 56, groups=256, channels_last=True),
]
QUICK = [
    Case("res5-like, small", 1, 128, 128, 19, 32, dilation=2, offset_groups=4),
    Case("early, batch 2", 2, 32, 32, 28, 28),
    Case("depthwise, small", 2, 64, 64, 28, 28, groups=64),
    Case("depthwise, small", 2, 64, 64, 28, 28, groups=64, channels_last=True),
]
MEMORY_CASE = Case("res5, batch 8", 8, 512, 512, 38, 63, dilation=2, offset_groups=4)


@dataclass(frozen=True)
class ModuleCase:
    """A 3×3 padded conv layer (N, C→C, H×W) at batch ``n``, as in compact CNNs."""

    n: int
    channels: int
    size: int
    dilation: int = 1
    modulated: bool = False

    def label(self) -> str:
        version = "v2" if self.modulated else "v1"
        return (f"({self.n},{self.channels}->{self.channels},{self.size}x{self.size}) "
                f"dil {self.dilation} {version}")


MODULE_CASES = [
    ModuleCase(16, 48, 16),
    ModuleCase(16, 48, 16, modulated=True),
    ModuleCase(16, 64, 24),
    ModuleCase(16, 64, 24, modulated=True),
    ModuleCase(16, 32, 32),
    ModuleCase(16, 32, 32, modulated=True),
    ModuleCase(16, 48, 16, dilation=2),
]
QUICK_MODULE_CASES = [ModuleCase(4, 16, 16), ModuleCase(4, 16, 16, modulated=True)]


def make_inputs(case: Case, requires_grad: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(case.n, case.cin, case.h, case.w, generator=g)
    weight = torch.randn(case.cout, case.cin // case.groups, 3, 3, generator=g) * 0.02
    # Offsets of a few pixels, as a trained offset branch produces.
    offset = torch.randn(case.n, 2 * case.offset_groups * 9, case.h, case.w, generator=g) * 2
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        weight = weight.contiguous(memory_format=torch.channels_last)
    tensors = {"input": x, "offset": offset, "weight": weight}
    for t in tensors.values():
        t.requires_grad_(requires_grad)
    return tensors


MAX_REPEATS = 50


def cpu_backend() -> str:
    """The backend "ours" runs on for CPU float32 tensors: numba unless ``DEFORMCONV_BACKEND``
    picks another."""
    return _dispatch.select_backend(torch.device("cpu"), torch.float32)


def best_times(ops: dict[str, Callable[[], object]], repeats: int,
               clock: Callable[[], float] = time.perf_counter,
               min_seconds: float = 0.0) -> dict[str, float]:
    """Best time in seconds per op over rounds in which each op runs once, taking turns, so
    that a burst of load from elsewhere hits them alike and every op has as many runs:
    ``repeats`` rounds, or as many as the slowest op needs to fill ``min_seconds`` (at most
    ``MAX_REPEATS``): a minimum over a series spread over more time is less likely to have
    met only bursts."""
    for fn in ops.values():
        fn()  # warm-up (compiles, allocates)
    times: dict[str, list[float]] = {name: [] for name in ops}
    rounds = repeats
    done = 0
    while done < rounds:
        for name, fn in ops.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
        done += 1
        if done == 1:
            slowest = max(series[0] for series in times.values())
            rounds = max(repeats, min(MAX_REPEATS, math.ceil(min_seconds / max(slowest, 1e-9))))
    return {name: min(series) for name, series in times.items()}


def backward_and_clear(out: torch.Tensor, leaves: Iterable[torch.Tensor]) -> None:
    """``out.sum().backward()``, then the leaves' gradients dropped: each timed run stores
    fresh gradients, as a training step after ``zero_grad(set_to_none=True)`` does, instead
    of adding to the last run's (an extra pass, which conv2d pays without the offset's)."""
    out.sum().backward()
    for leaf in leaves:
        leaf.grad = None


def op_runners(case: Case, backward: bool) -> dict[str, Callable[[], object]]:
    t = make_inputs(case, backward)
    pad = case.dilation

    def finish(out: torch.Tensor) -> None:
        if backward:
            backward_and_clear(out, t.values())

    ops = {
        "ours": lambda: finish(deform_conv2d(
            t["input"], t["offset"], t["weight"], padding=pad, dilation=case.dilation)),
        "conv2d": lambda: finish(F.conv2d(
            t["input"], t["weight"], padding=pad, dilation=case.dilation, groups=case.groups)),
    }
    if tv_deform_conv2d is not None:
        ops["torchvision"] = lambda: finish(tv_deform_conv2d(
            t["input"], t["offset"], t["weight"], padding=pad, dilation=case.dilation))
    return ops


def print_table(header: list[str], widths: list[int]) -> Callable[[list[str]], None]:
    """Print a markdown table header; return the function that prints one row."""
    def row(cells: list[str]) -> None:
        print("| " + " | ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
                                for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
              + " |", flush=True)
    row(header)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return row


def bench_ops(cases: list[Case], repeats: int, clock: Callable[[], float],
              min_seconds: float) -> None:
    row = print_table(["shape (N,Cin,Cout,H,W) dil/G", "pass", "ours ms", "conv2d ms", "tv ms",
                       "ours/conv2d", "tv/ours"], [46, 8, 8, 9, 8, 11, 7])
    for case in cases:
        for backward in case.backward:
            with torch.enable_grad() if backward else torch.no_grad():
                times = best_times(op_runners(case, backward), repeats, clock, min_seconds)
            tv = times.get("torchvision", float("nan"))
            row([case.label(), "fwd+bwd" if backward else "fwd", f"{times['ours'] * 1e3:.1f}",
                 f"{times['conv2d'] * 1e3:.1f}", f"{tv * 1e3:.1f}",
                 f"{times['ours'] / times['conv2d']:.2f}", f"{tv / times['ours']:.2f}"])


class TorchvisionDeformConv2d(nn.Module):
    """torchvision's DeformConv2d fed by an offset conv like ours (zero-initialised)."""

    def __init__(self, channels: int, dilation: int, modulated: bool) -> None:
        super().__init__()
        self.modulated = modulated
        self.conv_offset = nn.Conv2d(channels, (27 if modulated else 18), 3,
                                     padding=dilation, dilation=dilation)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)
        self.conv = TorchvisionDeformConv2dLayer(channels, channels, 3, padding=dilation,
                                        dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_offset(x)
        mask = out[:, 18:].sigmoid() if self.modulated else None
        return self.conv(x, out[:, :18], mask)


def module_runners(case: ModuleCase) -> dict[str, Callable[[], object]]:
    """Forward+backward of one layer: ours, the plain conv, torchvision's."""
    torch.manual_seed(0)
    x = torch.randn(case.n, case.channels, case.size, case.size, requires_grad=True)
    pad = case.dilation
    modules = {
        "ours": DeformConv2d(case.channels, case.channels, 3, padding=pad,
                             dilation=case.dilation, modulated=case.modulated),
        "conv2d": nn.Conv2d(case.channels, case.channels, 3, padding=pad,
                            dilation=case.dilation),
    }
    if tv_deform_conv2d is not None:
        modules["torchvision"] = TorchvisionDeformConv2d(case.channels, case.dilation,
                                                         case.modulated)
    return {name: lambda m=m: backward_and_clear(m(x), [x, *m.parameters()])
            for name, m in modules.items()}


def conv_bn_relu(cin: int, cout: int, deformable: bool, stride: int = 1) -> nn.Module:
    """A 3×3 conv (ours when ``deformable``, stride 1 then), batch norm and ReLU."""
    layer = (DeformConv2d(cin, cout, 3, padding=1, bias=False) if deformable
             else nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False))
    return nn.Sequential(layer, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def small_cnn(deformable: bool) -> nn.Module:
    """A digit classifier on 48 px images whose last two 3×3 convs may be deformable."""
    torch.manual_seed(0)
    return nn.Sequential(
        conv_bn_relu(1, 32, False), nn.MaxPool2d(2),          # 48 -> 24
        conv_bn_relu(32, 48, False), nn.MaxPool2d(2),         # 24 -> 12
        conv_bn_relu(48, 64, deformable), conv_bn_relu(64, 64, deformable),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


def demo_fcn(deformable: bool) -> nn.Module:
    """The demo's segmentation net with its defaults (``deformconv.runs.DemoSettings``),
    deformable or its plain twin, from the same seed."""
    from deformconv.runs import DemoSettings, build_model, demo_specs

    settings = DemoSettings()
    deformable_spec, plain_spec = demo_specs(settings, len(settings.scene["classes"]))
    return build_model(deformable_spec if deformable else plain_spec, seed=0)


def training_runners(net: Callable[[bool], nn.Module], x: torch.Tensor, target: torch.Tensor
                     ) -> dict[str, Callable[[], object]]:
    """One SGD step (cross-entropy on ``target``) of ``net(True)`` and its plain twin."""
    steps = {}
    for name, deformable in (("ours", True), ("conv2d", False)):
        model = net(deformable)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model: nn.Module = model, optimizer: torch.optim.Optimizer = optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), target).backward()
            optimizer.step()

        steps[name] = step
    return steps


def bench_modules(cases: list[ModuleCase], batch: int, repeats: int,
                  clock: Callable[[], float]) -> None:
    row = print_table(["layer (N,C->C,HxW), fwd+bwd", "ours ms", "conv2d ms", "tv ms",
                       "ours/conv2d", "tv/ours"], [40, 8, 9, 8, 11, 7])
    for case in cases:
        times = best_times(module_runners(case), repeats, clock)
        tv = times.get("torchvision", float("nan"))
        row([case.label(), f"{times['ours'] * 1e3:.2f}", f"{times['conv2d'] * 1e3:.2f}",
             f"{tv * 1e3:.2f}", f"{times['ours'] / times['conv2d']:.2f}",
             f"{tv / times['ours']:.2f}"])
    gen = torch.Generator().manual_seed(0)
    nets = {f"small CNN, 48 px, batch {batch}, train step": (
                small_cnn, torch.randn(batch, 1, 48, 48, generator=gen),
                torch.randint(0, 10, (batch,), generator=gen)),
            f"demo FCN, 64 px, batch {batch}, train step": (
                demo_fcn, torch.randn(batch, 3, 64, 64, generator=gen),
                torch.randint(0, 6, (batch, 64, 64), generator=gen))}
    for label, (net, x, target) in nets.items():
        times = best_times(training_runners(net, x, target), repeats, clock)
        row([label, f"{times['ours'] * 1e3:.2f}", f"{times['conv2d'] * 1e3:.2f}", "",
             f"{times['ours'] / times['conv2d']:.2f}", ""])


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_growth(fn: Callable[[], None]) -> int:
    """Peak RSS growth while ``fn`` runs (sampled every 0.5 ms and at the end)."""
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
    fn()
    done.set()
    sampler.join()
    return max(peak, rss_bytes()) - baseline


def peak_extra_memory(op: Callable, t: dict[str, torch.Tensor], backward: bool) -> int:
    """Peak RSS growth of ``op`` (and its backward) minus what the call returns: the output,
    and with ``backward`` the output gradient it is given and the gradients it fills."""
    results: list[torch.Tensor] = []

    def call() -> None:
        with torch.set_grad_enabled(backward):
            out = op(t["input"], t["offset"], t["weight"])
            if backward:
                grad_out = torch.ones_like(out)
                out.backward(grad_out)
                results.append(grad_out)
        results.append(out.detach())

    extra = peak_rss_growth(call)
    if backward:
        results += [t[k].grad for k in ("input", "offset", "weight") if t[k].grad is not None]
    extra -= sum(r.numel() * r.element_size() for r in results)
    for k in ("input", "offset", "weight"):
        t[k].grad = None
    return extra


MEMORY_OPS = ("ours", "conv2d", "torchvision")


def memory_probe(name: str, backward: bool) -> None:
    """Print the peak extra memory of one op (forward, or forward+backward) at MEMORY_CASE;
    run in a fresh process, so that the reusable workspace grows during the measured call."""
    c = MEMORY_CASE
    ops = {"ours": lambda x, off, w: deform_conv2d(x, off, w, padding=2, dilation=2),
           "conv2d": lambda x, off, w: F.conv2d(x, w, padding=2, dilation=2),
           "torchvision": lambda x, off, w: tv_deform_conv2d(x, off, w, padding=2, dilation=2)}
    op = ops[name]
    t = make_inputs(c, backward)
    # Warm-up on an 8x8 crop with 8 output channels: compiles kernels without growing the
    # reusable workspace (columns, weight copy), whose allocation the measured call counts.
    with torch.set_grad_enabled(backward):
        crop = [t[k].detach()[:1, :, :8, :8].requires_grad_(backward) for k in ("input", "offset")]
        small = op(*crop, t["weight"].detach()[:8].requires_grad_(backward))
        if backward:
            small.sum().backward()
    extra = peak_extra_memory(op, t, backward)
    what = "forward+backward" if backward else "forward"
    print(f"peak extra memory of the {what} at {c.name} ({c.n},{c.cin},{c.cout},{c.h},{c.w}), "
          f"{name}: {extra / 2**20:.1f} MiB", flush=True)


def bench_memory() -> None:
    """Each op and pass in a fresh process where glibc returns every large block at once
    (RSS is live memory)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    for backward in (False, True):
        for name in MEMORY_OPS:
            if name == "torchvision" and tv_deform_conv2d is None:
                continue
            probe = [sys.executable, __file__, "--memory-probe", name] + (
                ["--backward"] if backward else [])
            subprocess.run(probe, env=env, check=True)


COLD_SCRIPT = """
import time
import torch
start, cpu_start = time.perf_counter(), time.process_time()
from deformconv.ops import _dispatch, deform_conv2d
x = torch.randn(2, 8, 10, 10, requires_grad=True)
w = torch.randn(8, 8, 3, 3, requires_grad=True)
offset = torch.randn(2, 18, 10, 10, requires_grad=True)
deform_conv2d(x, offset, w, padding=1).sum().backward()
print(time.perf_counter() - start, time.process_time() - cpu_start)
"""


def bench_cold_start() -> None:
    """Import and first fwd+bwd (float32, no mask) in fresh processes, empty kernel cache
    first, then the cache the first one filled: wall clock, and the process's CPU time
    (compilation is single-threaded, so on a busy machine the CPU time is the steadier
    figure)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for state in ("empty kernel cache", "cached kernels"):
            run = subprocess.run([sys.executable, "-c", COLD_SCRIPT], env=env, check=True,
                                 capture_output=True, text=True)
            wall, cpu = map(float, run.stdout.strip().splitlines()[-1].split())
            print(f"import + first fwd+bwd, {state}: {wall:.2f} s, {cpu:.2f} s CPU "
                  "(after importing torch)", flush=True)


QUICK_SECTIONS = ("ops", "modules")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"small shapes, {' and '.join(QUICK_SECTIONS)} only (about 2 "
                             "minutes on 2 cores, compilation included)")
    parser.add_argument("--repeats", type=positive_int,
                        help="best of this many runs (default 5; the modules table 4 times as "
                             "many, as many with --quick); --device cuda: median of this many "
                             "rounds (default 20)")
    parser.add_argument("--min-seconds", type=non_negative_float,
                        help="ops table: time the ops until the slowest has run this long "
                             f"(up to {MAX_REPEATS} rounds; default 1, 0 with --quick)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by the process's CPU time instead of the wall clock: with one "
                             "thread (OMP_NUM_THREADS=1), the work done, "
                             "whatever else the machine runs")
    parser.add_argument("--only",
                        help=f"comma-separated sections out of {', '.join(SECTIONS)} (default: "
                             f"all; with --quick {', '.join(QUICK_SECTIONS)})")
    parser.add_argument("--memory-probe", choices=MEMORY_OPS, help=argparse.SUPPRESS)
    parser.add_argument("--backward", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: Triton vs cuDNN vs torchvision (bench_deform_conv_cuda.py)")
    parser.add_argument("--dry-run", action="store_true",
                        help="with --device cuda: tiny shapes in Triton's CPU interpreter")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        cpu_options = [option for option, given in (
            ("--only", args.only is not None), ("--min-seconds", args.min_seconds is not None),
            ("--cpu-time", args.cpu_time)) if given]
        if cpu_options:
            parser.error(f"{', '.join(cpu_options)}: not options of --device cuda "
                         "(bench_deform_conv_cuda.py times every op by CUDA events)")
        from bench_deform_conv_cuda import main as cuda_main

        cuda_main(args.quick, args.repeats, args.dry_run)
        return
    if args.dry_run:
        parser.error("--dry-run checks the CUDA benchmark in Triton's interpreter: "
                     "add --device cuda")
    if args.memory_probe:
        memory_probe(args.memory_probe, args.backward)
        return
    clock = time.process_time if args.cpu_time else time.perf_counter
    repeats = args.repeats or 5
    module_repeats = repeats * (1 if args.quick else 4)
    min_seconds = args.min_seconds if args.min_seconds is not None else (
        0.0 if args.quick else 1.0)
    if args.only is None:
        sections = set(QUICK_SECTIONS if args.quick else SECTIONS)
    else:
        sections = set(args.only.split(","))
        if unknown := sections - set(SECTIONS):
            parser.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
        if args.quick and (full_only := sorted(sections - set(QUICK_SECTIONS))):
            parser.error(f"--only {args.only}: --quick has no {' or '.join(full_only)} "
                         f"section (only {', '.join(QUICK_SECTIONS)}); drop --quick for it")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, ours on {cpu_backend()}, "
          f"{'CPU time' if args.cpu_time else 'wall clock'}, best of {repeats} "
          f"(ops: of up to {MAX_REPEATS} rounds filling {min_seconds:g} s for the slowest; "
          f"modules: best of {module_repeats})")
    if "ops" in sections:
        bench_ops(QUICK if args.quick else FULL, repeats, clock, min_seconds)
    if "modules" in sections:
        print()
        bench_modules(QUICK_MODULE_CASES if args.quick else MODULE_CASES,
                      4 if args.quick else 16, module_repeats, clock)
    if "memory" in sections:
        print()
        bench_memory()
    if "cold" in sections:
        print()
        bench_cold_start()


if __name__ == "__main__":
    main()
