"""``deformconv bench``: the op benchmarks of the repository's ``benchmarks/`` folder."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from ._common import CLIError, positive_int, user_path

HELP = "benchmark deform_conv2d and the deformable RoI pooling ops against torch/torchvision"
SCRIPTS = {"deform_conv": "bench_deform_conv.py", "roi_pool": "bench_roi_pool.py"}
BENCH_ENV = "DEFORMCONV_BENCHMARKS"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help=HELP, description=HELP + ". Runs the scripts in the source tree's "
        f"benchmarks/ folder (or --bench-dir, or ${BENCH_ENV}); they are not part of the wheel.",
        epilog="example: deformconv bench --quick --only deform_conv")
    parser.add_argument("--quick", action="store_true",
                        help="3 repeats, and for deform_conv small shapes and only its ops "
                             "and modules tables (which still take about 2 minutes on 2 cores: "
                             "kernel compilation, torchvision's slow depthwise backward)")
    parser.add_argument("--only", choices=sorted(SCRIPTS), action="append",
                        help="run only this benchmark (repeatable; default: all)")
    parser.add_argument("--repeats", type=positive_int,
                        help="timed runs per case (default: each script's own, 3 with --quick)")
    parser.add_argument("--bench-dir", type=user_path, help="folder holding the benchmark scripts")
    parser.set_defaults(run=run_bench)
    return parser


def find_benchmarks(explicit: str | None = None) -> Path:
    """The ``benchmarks/`` folder: given, from the environment, or beside ``src/`` in a checkout."""
    if explicit or os.environ.get(BENCH_ENV):
        folder = Path(explicit or os.environ[BENCH_ENV]).expanduser()
        if not folder.is_dir():
            raise CLIError(f"benchmark folder not found: {folder}")
        return folder
    # src/deformconv/cli/bench.py -> the repository root is three folders above the package
    folder = Path(__file__).resolve().parents[3] / "benchmarks"
    if not folder.is_dir():
        raise CLIError("benchmarks/ not found: they live in the source repository, not the "
                       f"installed package; pass --bench-dir or set {BENCH_ENV}")
    return folder


def run_bench(args: argparse.Namespace) -> int:
    folder = find_benchmarks(args.bench_dir)
    chosen = list(dict.fromkeys(args.only or sorted(SCRIPTS)))  # each once, in given order
    scripts = [folder / SCRIPTS[name] for name in chosen]
    missing = [str(s) for s in scripts if not s.is_file()]
    if missing:
        raise CLIError(f"benchmark script(s) missing: {', '.join(missing)}")
    repeats = args.repeats or (3 if args.quick else None)
    env = None
    if args.threads:  # torch reads it at start-up; the CPU kernels use torch's count
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    status = 0
    for name, script in zip(chosen, scripts, strict=True):
        command = [sys.executable, str(script)]
        if args.quick and name == "deform_conv":
            command.append("--quick")
        if repeats is not None:
            command += ["--repeats", str(repeats)]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        status = subprocess.run(command, check=False, env=env).returncode or status
    return status
