"""deformconv: deformable convolution and deformable RoI pooling for PyTorch.

``nn`` and ``ops`` are imported with the package; the other subpackages (``data``,
``engine``, ``models``, ``onnx``, ``runs``, ``viz``) on first use, so that
``import deformconv; deformconv.models.create(...)`` works without making every
``import deformconv`` pay for torchvision and the training engine.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from . import nn, ops

__version__ = "0.1.0"
__all__ = ["__version__", "nn", "ops"]

_LAZY_SUBPACKAGES = frozenset({"data", "engine", "models", "onnx", "runs", "viz"})


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)  # also sets it on the package
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBPACKAGES)
