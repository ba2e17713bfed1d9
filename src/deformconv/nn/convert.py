"""Make any model deformable: swap chosen convs for :class:`DeformConv2d`, keeping weights."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence

from torch import nn

from .deform_conv import DeformConv2d, DeformConv2dBase

__all__ = ["convert_to_deformable"]

Selector = str | Sequence[str] | Callable[[str, nn.Conv2d], bool]


def _is_candidate(module: nn.Module) -> bool:
    """Plain zero-padded 2-D convs with a kernel larger than 1×1 (1×1 has nothing to deform)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size != (1, 1)
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
    )


def _patterns(include: Selector | None) -> list[str]:
    """The glob patterns of a name selector (none for the default or a predicate)."""
    if include is None or callable(include):
        return []
    return [include] if isinstance(include, str) else list(include)


def _selected(name: str, conv: nn.Conv2d, include: Selector | None) -> bool:
    """Whether ``include`` chooses conv ``name``: by a predicate, or by a pattern that
    matches its name or the name of a module it sits in (``"layer4"`` takes its convs)."""
    if include is None:
        return conv.kernel_size == (3, 3)
    if callable(include):
        return bool(include(name, conv))
    patterns = _patterns(include)
    parts = name.split(".")
    scopes = [".".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(scope, pattern) for scope in scopes for pattern in patterns)


def _check_patterns(model: nn.Module, include: Selector | None) -> None:
    """A pattern that matches no module at all is a mistake (a typo, a name of another
    model): say so rather than convert nothing."""
    names = [name for name, _ in model.named_modules() if name]
    unmatched = [pattern for pattern in _patterns(include)
                 if not any(fnmatch.fnmatchcase(name, pattern) for name in names)]
    if unmatched:
        examples = [name for name, module in model.named_modules()
                    if name and _is_candidate(module)][:4]
        raise ValueError(
            f"include: {unmatched} match no module of the model; patterns match qualified "
            f"names from model.named_modules(), its convs are named like {examples}"
        )


def convert_to_deformable(
    model: nn.Module,
    include: Selector | None = None,
    *,
    offset_groups: int = 1,
    modulated: bool = False,
    offset_lr_mult: float = 1.0,
) -> list[str]:
    """Replace chosen ``nn.Conv2d`` layers of ``model`` by :class:`DeformConv2d`, in place.

    Each new layer shares the old one's ``weight`` and ``bias`` parameters and geometry, and
    its offset branch starts at zero, so a non-modulated conversion leaves the model's
    output unchanged until the offsets are trained.

    Args:
        model: any module (a torchvision or timm model, say).
        include: which convs to convert, by qualified name (``model.named_modules()``):
            a glob pattern or a list of them (``"layer4.*.conv2"``; a pattern that names a
            module takes the convs inside it: ``"layer4"``), or a predicate
            ``(name, conv) -> bool``. Default: every 3×3 conv. Only zero-padded convs with a
            kernel larger than 1×1 are ever converted. A pattern that matches no module name
            raises ``ValueError``.
        offset_groups, modulated, offset_lr_mult: passed to each :class:`DeformConv2d`.

    Returns:
        The qualified names of the converted convs, in module order.

    Example::

        >>> import torchvision
        >>> model = torchvision.models.resnet50(weights=None)
        >>> convert_to_deformable(model, "layer4.*.conv2", offset_groups=4)
        ['layer4.0.conv2', 'layer4.1.conv2', 'layer4.2.conv2']
    """
    _check_patterns(model, include)
    # The offset convs inside existing deformable layers are never converted themselves.
    owners = tuple(
        f"{name}." if name else ""
        for name, m in model.named_modules()
        if isinstance(m, DeformConv2dBase)
    )
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if name and not name.startswith(owners) and _is_candidate(module)
        and _selected(name, module, include)
    ]
    for name, conv in chosen:
        if conv.in_channels % offset_groups:
            raise ValueError(
                f"offset_groups ({offset_groups}) must divide the in_channels of every "
                f"converted conv; {name!r} has in_channels={conv.in_channels}"
            )
    for name, conv in chosen:
        deform = DeformConv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, offset_groups=offset_groups,
            modulated=modulated, offset_lr_mult=offset_lr_mult,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        deform.weight = conv.weight
        deform.bias = conv.bias
        deform.train(conv.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, deform)
    return [name for name, _ in chosen]
