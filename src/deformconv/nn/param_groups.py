"""Optimizer parameter groups that give offset branches their own learning rate."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..ops.arguments import finite_float
from ._offset import OffsetBranchMixin, check_offset_lr_mult

__all__ = ["offset_lr_multipliers", "offset_param_groups"]


def offset_lr_multipliers(model: nn.Module, offset_lr_mult: float | None = None
                          ) -> dict[str, float]:
    """``{parameter name: learning-rate multiplier}`` of the offset branches' parameters
    (modules with :class:`OffsetBranchMixin`): each module's ``offset_lr_mult``, or
    ``offset_lr_mult`` for all when given."""
    if offset_lr_mult is not None:
        offset_lr_mult = check_offset_lr_mult(offset_lr_mult)
    mult_of: dict[int, float] = {}
    for module in model.modules():
        if isinstance(module, OffsetBranchMixin):
            mult = module.offset_lr_mult if offset_lr_mult is None else offset_lr_mult
            for param in module.offset_parameters():
                mult_of[id(param)] = mult
    return {name: mult_of[id(param)] for name, param in model.named_parameters()
            if id(param) in mult_of}


def offset_param_groups(
    model: nn.Module, lr: float, offset_lr_mult: float | None = None, **options: Any
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters by learning-rate multiplier.

    Parameters of every offset branch (modules with :class:`OffsetBranchMixin`) get
    ``lr * module.offset_lr_mult`` (or ``lr * offset_lr_mult`` when given, overriding every
    module's own); all other parameters get ``lr``. Frozen parameters are left out.

    Args:
        model: any module.
        lr: base learning rate (finite, > 0).
        offset_lr_mult: one multiplier (finite, >= 0) for all offset branches instead of
            each module's own.
        **options: extra keys copied into every group (``weight_decay``, ``momentum``...).

    Returns:
        Groups for ``torch.optim`` (one per distinct multiplier, base group first); each also
        holds ``"lr_mult"`` so schedulers that reset ``lr`` can restore the ratio.

    Example::

        >>> from torch import nn
        >>> from deformconv.nn import DeformConv2d
        >>> model = nn.Sequential(DeformConv2d(3, 8, 3, offset_lr_mult=0.5), nn.Conv2d(8, 8, 1))
        >>> groups = offset_param_groups(model, lr=0.01, momentum=0.9)
        >>> [(len(g["params"]), g["lr"]) for g in groups]
        [(4, 0.01), (2, 0.005)]
    """
    lr = finite_float(lr, "lr", positive=True)
    mults = offset_lr_multipliers(model, offset_lr_mult)
    by_mult: dict[float, list[nn.Parameter]] = {1.0: []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            by_mult.setdefault(mults.get(name, 1.0), []).append(param)
    return [
        {"params": params, "lr": lr * mult, "lr_mult": mult, **options}
        for mult, params in by_mult.items()
        if params
    ]
