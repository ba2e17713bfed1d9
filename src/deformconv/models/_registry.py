"""Name -> entry point registry and the ``create`` factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from ..conventions import TASKS
from ..ops.arguments import boolean, count

__all__ = ["TASKS", "create", "list_models", "model_task", "register_model"]

EntryPoint = TypeVar("EntryPoint", bound=Callable[..., nn.Module])

_ENTRY_POINTS: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}


def register_model(task: str) -> Callable[[EntryPoint], EntryPoint]:
    """Decorator registering ``fn(num_classes, deformable=True, **kwargs)`` under its name."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def register(fn: EntryPoint) -> EntryPoint:
        if fn.__name__ in _ENTRY_POINTS:
            raise ValueError(f"model {fn.__name__!r} is already registered")
        _ENTRY_POINTS[fn.__name__] = fn
        _TASKS[fn.__name__] = task
        return fn

    return register


def list_models(task: str | None = None) -> list[str]:
    """Sorted registered names, only those of ``task`` (one of ``TASKS``) when given."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} or None, got {task!r}")
    return sorted(name for name in _ENTRY_POINTS if task is None or _TASKS[name] == task)


def model_task(name: str) -> str:
    """The task of a registered model: what its ``forward`` takes and returns."""
    _check_name(name)
    return _TASKS[name]


def _check_name(name: str) -> None:
    if name not in _ENTRY_POINTS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")


def create(name: str, num_classes: int, deformable: bool = True, channels_last: bool = False,
           **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: one of :func:`list_models`.
        num_classes: classes (an int > 0), background included for detection models.
        deformable: ``False`` builds the plain twin (same architecture and parameter names,
            without offset branches) for ablations.
        channels_last: store the conv weights channels-last and make ``forward`` take its
            (N, C, H, W) image batches so: on the CPU, convs and the deformable convs run
            faster that way (benchmarks/README.md). The state dict is the same either way.
        **kwargs: passed to the entry point (architecture options, see each model).

    Example::

        >>> model = create("deeplab_resnet50", num_classes=21, deformable=True)
    """
    _check_name(name)
    count(num_classes, "num_classes")
    deformable = boolean(deformable, "deformable")
    channels_last = boolean(channels_last, "channels_last")
    model = _ENTRY_POINTS[name](num_classes=num_classes, deformable=deformable, **kwargs)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        model.register_forward_pre_hook(_channels_last_images)
    return model


def _channels_last_images(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A forward pre-hook: every 4-D tensor argument stored channels-last."""
    return tuple(a.contiguous(memory_format=torch.channels_last)
                 if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args)
