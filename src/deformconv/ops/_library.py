"""Registration of an op and its backward op with ``torch.library``, from one definition.

Each op is a pair of custom ops, ``deformconv::<name>`` and ``deformconv::<name>_backward``.
``define_op`` writes each schema once, registers one kernel per op that checks its
arguments and then runs the backend ``_dispatch`` picks, a fake (shape-only) kernel for
meta tensors and ``torch.compile``, the autograd formula that calls the backward op (behind
a refusal of forward-mode tangents, which every call of the op meets), and float32 autocast
for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch._library.autograd import Info, make_autograd_impl

from . import _dispatch
from ._checks import check_no_forward_tangent

NAMESPACE = "deformconv"


@dataclass(frozen=True)
class OpParts:
    """One custom op: its schema, argument check, kernel and fake.

    ``check(*args)`` raises on bad arguments (the registered ops are public and the kernels
    trust what passes). ``run(*args)`` defaults to the dispatched backend kernel; an op
    may wrap it to answer cases no backend needs to see. ``fake(*args)`` returns empty
    tensors of the real results' shapes and dtypes.
    """

    schema: str
    check: Callable[..., None]
    fake: Callable[..., Any]
    run: Callable[..., Any] | None = None


_LIBRARY = torch.library.Library(NAMESPACE, "FRAGMENT")


def no_feature_cells(input: torch.Tensor) -> bool:
    """Whether a feature map (N, C, H, W) has no image, channel or cell: a RoI op's samples
    all read zero padding there (with no image there is no RoI), so its results are zeros
    (the backends need not handle it)."""
    return 0 in input.shape


def zeroed(results: Any) -> Any:
    """A fake's results (a tensor or a tuple of tensors), filled with zeros."""
    return tuple(r.zero_() for r in results) if isinstance(results, tuple) else results.zero_()


def _register(name: str, op: str, kernel_name: str, parts: OpParts) -> torch._ops.OpOverload:
    """Define ``deformconv::<name>`` with the lower-level ``Library`` API, not
    ``torch.library.custom_op``: ``custom_op`` wraps every kernel in ``torch._disable_dynamo``,
    which imports ``torch._dynamo`` (1.2-1.9 s) on a process's first call, eager or not.
    ``torch.compile`` never traces into a registered kernel either way: it sees the op and
    its fake."""
    run = parts.run or (lambda *args: _dispatch.run(op, kernel_name, args))

    def kernel(*args: Any) -> Any:
        parts.check(*args)
        return run(*args)

    _LIBRARY.define(name + parts.schema, tags=(torch.Tag.pt2_compliant_tag,))
    _LIBRARY.impl(name, kernel, "CompositeExplicitAutograd")
    registered = getattr(getattr(torch.ops, NAMESPACE), name).default
    torch.library.register_fake(registered, parts.fake, lib=_LIBRARY)
    return registered


def _no_double_backward(ctx, *grads):
    raise RuntimeError("deformconv ops have no double backward: their backward ops are not "
                       "differentiable")


def _register_autograd(op: torch._ops.OpOverload, backward: Callable[..., Any],
                       setup_context: Callable[..., None] | None = None) -> None:
    """``torch.library.register_autograd(op, backward, setup_context=...)``, behind a check
    that no argument carries a forward-mode tangent.

    The autograd kernel is where every call of the op meets the tangents (the public
    functions, the modules, ``torch.ops.deformconv.*`` called directly): torch's own kernel
    sends an input that needs no reverse-mode gradient straight to the backend, dropping its
    tangent, and below it ``torch.func.jvp`` has already unwrapped the tensors. The kernel is
    built as ``register_autograd`` builds it, so that the check runs before it.
    """
    names = tuple(argument.name for argument in op._schema.arguments)
    generated = make_autograd_impl(op, Info(backward, setup_context))

    def autograd_kernel(keyset: torch._C.DispatchKeySet, *args: Any) -> Any:
        check_no_forward_tangent(op._opname, names, args)
        return generated(keyset, *args)

    _LIBRARY.impl(op._opname, autograd_kernel, "Autograd", with_keyset=True)


def define_op(name: str, forward: OpParts, backward: OpParts,
              setup_context: Callable[..., None], gradient: Callable[..., Any]):
    """Register ``deformconv::<name>`` and ``deformconv::<name>_backward``; return both.

    ``gradient(backward_op, ctx, *grads)`` is the autograd formula; it gets the registered
    backward op as its first argument.
    """
    forward_op = _register(name, name, "forward", forward)
    backward_op = _register(f"{name}_backward", name, "backward", backward)

    def autograd_backward(ctx, *grads):
        return gradient(backward_op, ctx, *grads)

    _register_autograd(forward_op, autograd_backward, setup_context)
    _register_autograd(backward_op, _no_double_backward)
    # under autocast, run both in float32 and keep their inner GEMMs out of autocast
    for op in (forward_op, backward_op):
        for device_type in ("cpu", "cuda"):
            torch.library.register_autocast(op, device_type, torch.float32)
    return forward_op, backward_op
