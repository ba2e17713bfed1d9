"""Vector-Jacobian products for the fallback backwards.

A ``torch.library`` custom op runs below the autograd dispatch key (the autograd keys are
in the thread's excluded set), so ``torch.autograd.grad`` inside a backward op would see
tensors without history. :func:`vjp` lifts that exclusion for its own recomputed forward.
Not ``torch.func.vjp``: its wrapped tensors break under a ``TorchDispatchMode`` (FLOP
counters, opcheck's schema check) and it refuses saved-tensor hooks (activation offloading).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import Tensor

Backward = TypeVar("Backward", bound=Callable[..., tuple[Tensor, ...]])
_AUTOGRAD_KEYS = (torch._C.DispatchKey.AutogradFunctionality,
                  torch._C.DispatchKey.ADInplaceOrView)


def differentiating(backward: Backward) -> Backward:
    """A fallback ``backward`` that differentiates its forward with :func:`vjp`, run outside
    ``torch.inference_mode`` (a backward op called under it): what it computes for the
    recorded forward (indices, sample grids) must not be inference tensors, which
    autograd cannot save."""
    return torch.inference_mode(False)(backward)


def _as_is(tensor: Tensor) -> Tensor:
    return tensor


@contextmanager
def _autograd_recording() -> Iterator[None]:
    """Inside, ops record autograd history again, as above the custom op. The graph lives
    only inside :func:`vjp`: a user's saved-tensor hooks (``save_on_cpu``) would copy each of
    its saved tensors out and back for nothing, so they are set aside."""
    excluded = torch._C._dispatch_tls_local_exclude_set()
    for key in _AUTOGRAD_KEYS:
        excluded = excluded.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(),
                                         excluded), torch.enable_grad(), \
            torch.autograd.graph.saved_tensors_hooks(_as_is, _as_is):
        yield


def _leaf(tensor: Tensor) -> Tensor:
    """``tensor`` as a new autograd leaf (an inference tensor, made under
    ``torch.inference_mode``, which autograd may not record, copied)."""
    return (tensor.clone() if tensor.is_inference() else tensor.detach()).requires_grad_()


def vjp(fn: Callable[..., Tensor], primals: tuple[Tensor, ...], cotangent: Tensor
        ) -> tuple[Tensor, ...]:
    """Gradients of ``<fn(*primals), cotangent>`` with respect to each primal."""
    with _autograd_recording():
        leaves = tuple(_leaf(p) for p in primals)
        out = fn(*leaves)
        if not out.requires_grad:  # nothing reaches the output (no RoI, no sample)
            return tuple(torch.zeros_like(p) for p in primals)
        grads = torch.autograd.grad(out, leaves, cotangent, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for p, g in zip(primals, grads,
                                                                         strict=True))
