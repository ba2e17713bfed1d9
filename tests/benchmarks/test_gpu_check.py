"""``benchmarks/gpu_check.sh``: its steps and summary, with a stand-in Python that only
records how it was called."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from deformconv.cli.bench import find_benchmarks


def _dry_run(tmp_path: Path, out: Path) -> list[str]:
    """Run ``gpu_check.sh --dry-run out`` with a Python that logs its arguments; the calls."""
    log = tmp_path / "calls.txt"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    python.chmod(0o755)
    done = subprocess.run(["bash", str(find_benchmarks() / "gpu_check.sh"), "--dry-run",
                           str(out)], env={**os.environ, "PYTHON": str(python)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return log.read_text().splitlines()


def test_dry_run_smoke_is_small_and_summary_starts_afresh(tmp_path: Path) -> None:
    """The dry run's smoke ran the full-size shapes, which Triton's interpreter took over its
    300 s cap for on 2 cores; a second dry run appended its 4 summary lines to the first's."""
    out = tmp_path / "out"
    calls = _dry_run(tmp_path, out)
    assert "benchmarks/triton_smoke.py cpu --small" in calls
    _dry_run(tmp_path, out)
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == [
        "== syntax", "== smoke", "== tests", "== bench"]
