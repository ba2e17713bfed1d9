"""Load a script of the repository's ``benchmarks/`` folder as a module, for its tests."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from deformconv.cli.bench import find_benchmarks


def load_script(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``benchmarks/<name>.py`` as module ``name``, with the folder on ``sys.path`` (the
    scripts import each other) for this test only."""
    folder = find_benchmarks()
    monkeypatch.syspath_prepend(str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module
