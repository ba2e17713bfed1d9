"""Switching a model to eval mode for a while without losing its submodules' own modes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, then every submodule back in its own mode:
    ``model.train(was_training)`` would also put a submodule kept in eval (a frozen
    BatchNorm, say) in training mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
