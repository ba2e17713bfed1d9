"""Import the scripts of ``experiments/`` (a folder of scripts, not a package) in tests."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def load(name: str) -> ModuleType:
    """The script ``experiments/<name>.py`` as a module (its folder joins ``sys.path``, as
    when it runs as a script)."""
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    return importlib.import_module(name)


def run_args(out: Path, *extra: str, training: bool = True) -> list[str]:
    """Arguments for a smoke run into ``out`` on one thread (tests share the cores), a
    ``training`` study's runs in this process."""
    jobs = ["--jobs", "1"] if training else []
    return ["--smoke", "--out", str(out), "--threads", "1", *jobs, *extra]
