"""Optional dependencies: the extra that installs each, and imports that name it when missing.

``require("torchvision", "deformconv.models")`` imports and returns the module, or raises
:class:`MissingExtraError` (a ``ModuleNotFoundError``, so ``except ImportError`` still
catches it) saying ``deformconv.models needs torchvision, part of the vision extra: pip
install 'deformconv[vision]'``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "extra_of", "install_hint", "require"]

# Top-level module of each optional dependency -> the extra (pyproject.toml) that installs it
EXTRAS: dict[str, str] = {
    "torchvision": "vision", "PIL": "vision", "matplotlib": "vision", "pycocotools": "vision",
    "yaml": "vision", "onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnx",
}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra to install."""


def extra_of(module_name: str | None) -> str | None:
    """The extra that installs ``module_name`` (any dotted name), None if none does."""
    return EXTRAS.get((module_name or "").split(".")[0])


def install_hint(*module_names: str) -> str:
    """``needs <package>, part of the <extra> extra: pip install 'deformconv[<extra>]'``
    for optional dependencies' (dotted) module names (several: ``needs onnx, onnxruntime,
    part of the onnx extra``)."""
    tops = list(dict.fromkeys(name.split(".")[0] for name in module_names))
    extras = list(dict.fromkeys(EXTRAS[top] for top in tops))
    part = (f"part of the {extras[0]} extra" if len(extras) == 1
            else f"parts of the {', '.join(extras)} extras")
    return f"needs {', '.join(tops)}, {part}: pip install 'deformconv[{','.join(extras)}]'"


def require(module_name: str, needed_by: str) -> ModuleType:
    """Import optional dependency ``module_name`` for ``needed_by`` (what the user called,
    e.g. ``"deformconv.models"``), or raise :class:`MissingExtraError` naming the extra.

    A missing module that no extra installs (a broken install of the dependency itself) is
    raised as it is.
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if isinstance(error, MissingExtraError) or extra_of(error.name) is None:
            raise
        missing = (error.name or "").split(".")[0]
        raise MissingExtraError(f"{needed_by} {install_hint(missing)}", name=missing) \
            from error
