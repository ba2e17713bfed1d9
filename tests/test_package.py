"""The top-level package: ``nn``/``ops`` at import, the other subpackages on first use."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import deformconv

RunWithout = Callable[..., subprocess.CompletedProcess]  # the conftest fixture
LAZY = ("data", "engine", "models", "onnx", "runs", "viz")

# In a fresh interpreter: what `import deformconv` loads, then attribute access.
SCRIPT = """
import sys
import deformconv
loaded = sorted(m for m in sys.modules if m.startswith("deformconv."))
assert not [m for m in loaded if m.split(".")[1] in {lazy!r}], loaded
assert "torchvision" not in sys.modules
assert len(deformconv.data.SyntheticClassification(length=2)) == 2
assert sys.modules["deformconv.data"] is deformconv.data
"""


def test_import_is_cheap_and_subpackages_load_on_first_use() -> None:
    src = str(Path(deformconv.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", SCRIPT.format(lazy=set(LAZY))], check=True, env=env,
                   timeout=120)


def test_subpackages_are_listed_and_other_names_refused() -> None:
    assert set(LAZY) | {"nn", "ops", "__version__"} <= set(dir(deformconv))
    pytest.importorskip("torchvision")
    assert callable(deformconv.models.create)  # as the README writes it
    with pytest.raises(AttributeError, match="module 'deformconv' has no attribute 'cli_x'"):
        deformconv.cli_x  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'Scene'"):
        deformconv.Scene  # noqa: B018


def test_a_subpackage_whose_extra_is_missing_is_an_attribute_error_naming_the_extra() -> None:
    """hasattr() and inspect.getmembers() raised ModuleNotFoundError without torchvision."""
    script = """
import sys
sys.modules["torchvision"] = None  # as if the [vision] extra were not installed
import deformconv
assert not hasattr(deformconv, "models")
try:
    deformconv.models
except AttributeError as error:
    assert "needs torchvision" in str(error) and "deformconv[vision]" in str(error), error
else:
    raise AssertionError("no error")
"""
    src = str(Path(deformconv.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)


def test_the_declared_python_floor_is_the_one_the_extras_install_on(pyproject: dict) -> None:
    """It said >=3.10, but the onnx and dev extras (onnxruntime>=1.32) have no 3.10 wheel."""
    config = pyproject
    assert config["project"]["requires-python"] == ">=3.11"
    assert config["tool"]["ruff"]["target-version"] == "py311"
    requirements = [*config["project"]["dependencies"],
                    *(r for rs in config["project"]["optional-dependencies"].values() for r in rs)]
    assert not [r for r in requirements if "python_version" in r]  # nothing for older Pythons


def test_importing_models_without_torchvision_names_the_extra(run_without: RunWithout) -> None:
    """Both import forms raised ModuleNotFoundError "No module named 'torchvision.models'",
    from models/faster_rcnn.py, naming no extra."""
    run_without(["torchvision"], """
        import importlib
        hint = ("deformconv.models needs torchvision, part of the vision extra: "
                "pip install 'deformconv[vision]'")
        error = missing_extra(lambda: exec("from deformconv import models"), hint)
        assert error.name == "torchvision"
        missing_extra(lambda: importlib.import_module("deformconv.models"), hint)  # again
        import deformconv
        assert not hasattr(deformconv, "models") and "deformconv.models" not in sys.modules
    """)


def test_the_package_is_marked_typed() -> None:
    """PEP 561: without py.typed, mypy and pyright treat the (annotated) package as untyped."""
    assert (Path(deformconv.__file__).parent / "py.typed").is_file()


def test_the_license_text_ships_with_the_package(pyproject: dict) -> None:
    """pyproject said MIT, but no license text was in the repository, wheel or sdist."""
    project = pyproject["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (Path(__file__).parents[1] / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "2026 the deformconv developers" in text
