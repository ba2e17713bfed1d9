"""Vector-Jacobian products for the fallback backwards.

A ``torch.library`` custom op runs below the autograd dispatch key, so
``torch.autograd.grad`` inside a backward op sees tensors without history, whatever the
grad mode. ``torch.func.vjp`` carries its own autodiff level and works there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def vjp(fn: Callable[..., Tensor], primals: tuple[Tensor, ...], cotangent: Tensor
        ) -> tuple[Tensor, ...]:
    """Gradients of ``<fn(*primals), cotangent>`` with respect to each primal."""
    _, pullback = torch.func.vjp(fn, *primals)
    return pullback(cotangent)
