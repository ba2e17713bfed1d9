"""The optional dependencies' map and ``require``, which names the extra to install."""

from __future__ import annotations

import re

import pytest

from deformconv import _extras
from deformconv._extras import EXTRAS, MissingExtraError, require

# Import names of the packages whose distribution names differ
IMPORT_NAMES = {"pillow": "PIL", "pyyaml": "yaml"}


def test_the_map_lists_each_extras_packages_and_no_core_dependency(pyproject: dict) -> None:
    """One map (it was in cli/__init__.py, while deformconv/__init__.py guessed the extra)."""
    project = pyproject["project"]
    listed = {}
    for extra in ("vision", "onnx"):
        for requirement in project["optional-dependencies"][extra]:
            name = re.match(r"[\w.-]+", requirement).group().lower()
            listed[IMPORT_NAMES.get(name, name.replace("-", "_"))] = extra
    assert listed == EXTRAS
    core = {re.match(r"[\w.-]+", r).group() for r in project["dependencies"]}
    assert not core & set(EXTRAS)


def test_require_imports_or_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import json.decoder

    assert require("json.decoder", "deformconv.test") is json.decoder
    monkeypatch.setitem(EXTRAS, "deformconv_absent_pkg", "vision")
    with pytest.raises(MissingExtraError) as caught:
        require("deformconv_absent_pkg.sub", "deformconv.thing")
    assert str(caught.value) == ("deformconv.thing needs deformconv_absent_pkg, part of the "
                                 "vision extra: pip install 'deformconv[vision]'")
    assert caught.value.name == "deformconv_absent_pkg"
    assert isinstance(caught.value, ModuleNotFoundError)  # `except ImportError` still works


def test_a_missing_module_no_extra_installs_is_raised_as_it_is() -> None:
    with pytest.raises(ModuleNotFoundError) as caught:
        require("deformconv_absent_pkg", "deformconv.thing")
    assert type(caught.value) is ModuleNotFoundError
    assert caught.value.name == "deformconv_absent_pkg"
    assert _extras.extra_of("deformconv_absent_pkg") is None
