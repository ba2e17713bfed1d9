"""The public API's docstrings: every function and class has one, and an ``Args:`` section
names every parameter."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

# module -> the optional packages importing it needs
MODULES = {
    "deformconv.data": (),
    "deformconv.data.transforms": (),
    "deformconv.engine": (),
    "deformconv.models": ("torchvision",),
    "deformconv.nn": (),
    "deformconv.onnx": (),
    "deformconv.ops": (),
    "deformconv.runs": ("torchvision",),
    "deformconv.viz": (),
}


def args_entries(doc: str) -> set[str] | None:
    """Names the ``Args:`` section documents (``a, b: ...`` and ``a (Tensor): ...`` entries),
    or None without one."""
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Args:"), None)
    if start is None:
        return None
    indent = len(lines[start]) - len(lines[start].lstrip())
    names: set[str] = set()
    pending = ""  # an entry's names that go on past the end of a line: "a, b,\n    c: ..."
    for line in lines[start + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        line, pending = pending + line.lstrip() if pending else line, ""
        if re.fullmatch(rf" {{{indent + 4}}}[\w*, ]+,", line):
            pending = line + " "
            continue
        entry = re.match(rf"^ {{{indent + 4}}}([\w*, ]+?)(?: \(.*\))?:", line)
        if entry:
            names |= {name.strip().lstrip("*") for name in entry.group(1).split(",")}
    return names


def public_callables(module_name: str) -> list[tuple[str, object]]:
    for package in MODULES[module_name]:
        pytest.importorskip(package)
    module = importlib.import_module(module_name)
    return [(name, getattr(module, name)) for name in module.__all__
            if inspect.isfunction(getattr(module, name)) or inspect.isclass(getattr(module, name))]


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_public_callables_have_docstrings_that_name_every_argument(module_name: str) -> None:
    undocumented, missing = [], {}
    for name, obj in public_callables(module_name):
        doc = inspect.getdoc(obj)
        if not doc:
            undocumented.append(name)
            continue
        documented = args_entries(doc)
        if documented is None:
            continue
        parameters = inspect.signature(obj).parameters.values()
        left_out = [p.name for p in parameters if p.name != "self" and p.name not in documented
                    and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if left_out:
            missing[name] = left_out
    assert not undocumented, f"{module_name}: no docstring: {undocumented}"
    assert not missing, f"{module_name}: parameters missing from Args: {missing}"


def test_the_models_docstring_names_every_registered_model() -> None:
    pytest.importorskip("torchvision")
    models = importlib.import_module("deformconv.models")
    named = set()
    for stem, depths in re.findall(r"``(\w*?)(\d+(?:/\d+)*)``", models.__doc__):
        named |= {stem + depth for depth in depths.split("/")}
    named |= set(re.findall(r"``(\w+)``", models.__doc__))
    assert not set(models.list_models()) - named
