"""deformconv: deformable convolution and deformable RoI pooling for PyTorch.

``nn`` and ``ops`` are imported with the package; the other subpackages (``data``,
``engine``, ``models``, ``onnx``, ``runs``, ``viz``) on first use, so that
``import deformconv; deformconv.models.create(...)`` works without making every
``import deformconv`` pay for torchvision and the training engine.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from . import nn, ops
from ._extras import MissingExtraError, extra_of, install_hint

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports them
    from . import data as data
    from . import engine as engine
    from . import models as models
    from . import onnx as onnx
    from . import runs as runs
    from . import viz as viz

__version__ = "0.1.0"
__all__ = ["__version__", "nn", "ops"]

_LAZY_SUBPACKAGES = frozenset({"data", "engine", "models", "onnx", "runs", "viz"})


def __getattr__(name: str) -> ModuleType:
    if name not in _LAZY_SUBPACKAGES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return importlib.import_module(f".{name}", __name__)  # also sets it on the package
    except ModuleNotFoundError as error:
        if extra_of(error.name) is None:
            raise
        # an AttributeError, so that hasattr() and introspection see a missing extra as absent
        message = (str(error) if isinstance(error, MissingExtraError)
                   else f"deformconv.{name} {install_hint(error.name or '')}")
        raise AttributeError(message) from error


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBPACKAGES)
