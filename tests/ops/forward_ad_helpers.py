"""Forward-mode AD through the two APIs torch offers, for the ops' refusal of it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

FORWARD_AD_APIS = ("torch.func.jvp", "forward_ad", "torch.func.jacfwd")


def tangent_of(api: str, fn: Callable[..., Tensor], args: Sequence[Tensor | None],
               index: int) -> Tensor | None:
    """The tangent of ``fn(*args)`` along ones in ``args[index]``, computed with ``api``
    (jacfwd: its Jacobian)."""
    def along(value: Tensor) -> Tensor:
        return fn(*args[:index], value, *args[index + 1:])

    primal = args[index]
    assert primal is not None
    if api == "torch.func.jvp":
        return torch.func.jvp(along, (primal,), (torch.ones_like(primal),))[1]
    if api == "torch.func.jacfwd":
        return torch.func.jacfwd(along)(primal)
    with forward_ad.dual_level():
        return forward_ad.unpack_dual(
            along(forward_ad.make_dual(primal, torch.ones_like(primal)))).tangent
