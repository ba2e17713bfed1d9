"""FLOP counts of the registered ops for ``torch.utils.flop_counter.FlopCounterMode``.

``torch`` counts matrix products only (a conv as ``2 · N · Cout · Hout · Wout · Cin/groups ·
kh · kw``, not its im2col). ``deform_conv2d`` multiplies the same product over its sampled
columns, so it counts as that conv, its backward as one such product for the columns'
gradient (wanted for the input or the offset and mask gradients) and one for the weight's.
Its sampling is not counted, as a conv's im2col is not. The RoI poolings multiply no
matrices: they count 0, as ``torchvision.ops.roi_align`` does.

The formulas are registered when ``torch.utils.flop_counter`` is imported, not with the ops:
that module imports triton, 0.2 s that every ``import deformconv`` would pay otherwise.
``FlopCounterMode`` copies the registry when it is made, which is after that import.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

import torch

_COUNTER = "torch.utils.flop_counter"

Shape = Sequence[int]


def _forward(input: Shape, offset: Shape, weight: Shape, *args: Any, out_shape: Shape,
             **kwargs: Any) -> int:
    from torch.utils.flop_counter import conv_flop_count

    return conv_flop_count(list(input), list(weight), list(out_shape))


def _backward(grad_out: Shape, input: Shape, offset: Shape, weight: Shape, mask: Shape | None,
              stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int,
              need_input: bool, need_offset_mask: bool, need_weight: bool, *,
              out_shape: Any = None, **kwargs: Any) -> int:
    from torch.utils.flop_counter import conv_flop_count

    products = int(need_input or need_offset_mask) + int(need_weight)
    return products * conv_flop_count(list(input), list(weight), list(grad_out))


def _register(counter: ModuleType) -> None:
    formulas = {torch.ops.deformconv.deform_conv2d: _forward,
                torch.ops.deformconv.deform_conv2d_backward: _backward}
    for op, formula in formulas.items():
        if op not in counter.flop_registry:  # torch refuses a second registration
            counter.register_flop_formula(op)(formula)


class _RegisteringLoader:
    """Loads ``torch.utils.flop_counter`` with its own loader, then registers the formulas."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _register(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, ...
        return getattr(self._loader, name)


class _CounterImportHook:
    """Finds ``torch.utils.flop_counter`` as the other finders do, with a registering loader
    (at each import of it: an ``importlib.reload`` makes a new registry)."""

    def __init__(self) -> None:
        self._finding = False

    def find_spec(self, name: str, path: Any, target: ModuleType | None = None
                  ) -> ModuleSpec | None:
        if name != _COUNTER or self._finding:
            return None
        self._finding = True  # the other finders' search below passes through here again
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._finding = False
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def register_with_flop_counter() -> None:
    """Registers the formulas now if the FLOP counter is imported, and at every import of it
    (a first one, a reload)."""
    if _COUNTER in sys.modules:
        _register(sys.modules[_COUNTER])
    if not any(isinstance(finder, _CounterImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _CounterImportHook())
