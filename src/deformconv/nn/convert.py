"""Make any model deformable: swap chosen convs for :class:`DeformConv2d`, keeping weights."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Collection, Sequence

from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize

from ..ops.arguments import boolean, count
from ._offset import check_offset_lr_mult, named_offset_branches
from .deform_conv import DeformConv2d, DeformConv2dBase, same_padding

__all__ = ["convert_to_deformable"]

Selector = str | Sequence[str] | Callable[[str, nn.Conv2d], bool]


def _is_candidate(module: nn.Module) -> bool:
    """2-D convs with a kernel larger than 1×1 (1×1 has nothing to deform)."""
    return isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1)


# Every per-module hook dict of nn.Module, by the name a warning gives it: a DeformConv2d
# put in the conv's place would run none of them.
_HOOK_KINDS = {
    "forward pre": "_forward_pre_hooks",
    "forward": "_forward_hooks",
    "backward pre": "_backward_pre_hooks",
    "backward": "_backward_hooks",
    "state_dict pre": "_state_dict_pre_hooks",
    "state_dict post": "_state_dict_hooks",
    "load_state_dict pre": "_load_state_dict_pre_hooks",
    "load_state_dict post": "_load_state_dict_post_hooks",
}


def _hook_kinds(module: nn.Module) -> list[str]:
    """The kinds of hooks registered on ``module`` itself (``_HOOK_KINDS``' names)."""
    return [kind for kind, attribute in _HOOK_KINDS.items() if getattr(module, attribute, None)]


def _unconvertible(conv: nn.Conv2d) -> str | None:
    """Why a :class:`DeformConv2d` with ``conv``'s weights would not compute what ``conv``
    does; None when it would."""
    if isinstance(conv, LazyModuleMixin) and conv.has_uninitialized_params():
        # before the check for hooks below: its initialising pre-hook is one
        return "it is an uninitialised lazy module: run one forward pass first to initialise it"
    kind = type(conv)
    if kind.forward is not nn.Conv2d.forward or kind._conv_forward is not nn.Conv2d._conv_forward:
        return f"its class {kind.__name__} computes its own forward"
    if parametrize.is_parametrized(conv):
        return "it has a parametrization (parametrizations.weight_norm, spectral_norm, ...)"
    hooks = _hook_kinds(conv)
    if hooks:
        return (f"it has {', '.join(hooks)} hooks (the replacement would not run them; "
                "weight_norm and spectral_norm register some)")
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (deformable sampling pads with zeros)"
    if conv.padding == "same" and same_padding(conv.kernel_size, conv.dilation) is None:
        return "padding='same' pads one side more than the other"
    return None


def _patterns(include: Selector | None) -> list[str]:
    """The glob patterns of a name selector (none for the default or a predicate)."""
    if include is None or callable(include):
        return []
    if isinstance(include, str):
        return [include]
    # a Collection, not any iterable: a generator would be empty when read a second time
    if isinstance(include, Collection) and all(isinstance(p, str) for p in include):
        return list(include)
    raise TypeError(f"include must be a glob pattern (a str), a list of them or a predicate "
                    f"(name, conv) -> bool, got {include!r}")


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
    names = [name for name, _ in model.named_modules(remove_duplicate=False) if name]
    unmatched = [pattern for pattern in _patterns(include)
                 if not any(fnmatch.fnmatchcase(name, pattern) for name in names)]
    if unmatched:
        examples = [name for name, module in model.named_modules(remove_duplicate=False)
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
    output unchanged until the offsets are trained. (A modulated one halves each converted
    conv's sampled sum at first: DCN v2's initial mask is ``sigmoid(0) = 0.5``.)

    Args:
        model: any module (a torchvision or timm model, say).
        include: which convs to convert, by qualified name (``model.named_modules()``):
            a glob pattern or a list of them (``"layer4.*.conv2"``; a pattern that names a
            module takes the convs inside it: ``"layer4"``), or a predicate
            ``(name, conv) -> bool`` (anything else is a ``TypeError``). Default: every 3×3
            conv. Convs with a 1×1 kernel are never converted; selected convs that a
            :class:`DeformConv2d` cannot reproduce (a subclass with its own ``forward``
            such as timm's ``StdConv2d``, a parametrized conv, a conv with hooks of any
            kind (forward, backward, state-dict or load-state-dict), a padding mode
            other than zeros, a lazy conv before its first forward pass) are left as they
            are, with a warning. A pattern that matches no module name raises
            ``ValueError``. A conv registered under several names (shared) becomes one
            shared :class:`DeformConv2d` at each selected name. ``model`` itself cannot be
            replaced in place: a ``model`` that is a conv (larger than 1×1) raises
            ``ValueError``; wrap it in ``nn.Sequential``.
        offset_groups, modulated, offset_lr_mult: passed to each :class:`DeformConv2d`;
            checked even when no conv is converted.

    Returns:
        The qualified names of the converted convs, in module order.

    Example::

        >>> import torchvision
        >>> model = torchvision.models.resnet50(weights=None)
        >>> convert_to_deformable(model, "layer4.*.conv2", offset_groups=4)
        ['layer4.0.conv2', 'layer4.1.conv2', 'layer4.2.conv2']
    """
    count(offset_groups, "offset_groups")  # before dividing in_channels by it
    boolean(modulated, "modulated")  # even when no conv is chosen
    offset_lr_mult = check_offset_lr_mult(offset_lr_mult)  # likewise
    if _is_candidate(model):  # its name "" has no parent to set it in
        raise ValueError(
            f"model is itself a conv ({type(model).__name__} with kernel_size="
            f"{model.kernel_size}); convert_to_deformable replaces the convs inside a model "
            "and cannot replace the model itself: convert a container holding it, e.g. "
            "seq = nn.Sequential(conv); convert_to_deformable(seq), then use seq[0]"
        )
    _check_patterns(model, include)
    # The offset branches of existing deformable layers (any OffsetBranchMixin, a user's
    # too) and whatever sits in a DeformConv2dBase are never converted themselves.
    # A conv registered under several names (shared, tied) is seen under each of them.
    modules = list(model.named_modules(remove_duplicate=False))
    owners = [f"{name}." if name else "" for name, m in modules
              if isinstance(m, DeformConv2dBase)]
    branches = named_offset_branches(model)
    owners += [f"{name}." for name in branches]
    selected = [
        (name, module)
        for name, module in modules
        if name and name not in branches and not name.startswith(tuple(owners))
        and _is_candidate(module) and _selected(name, module, include)
    ]
    reasons = {name: _unconvertible(conv) for name, conv in selected}
    chosen = [(name, conv) for name, conv in selected if reasons[name] is None]
    _warn_skipped({name: why for name, why in reasons.items() if why is not None})
    for name, conv in chosen:
        if conv.in_channels % offset_groups:
            raise ValueError(
                f"offset_groups ({offset_groups}) must divide the in_channels of every "
                f"converted conv; {name!r} has in_channels={conv.in_channels}"
            )
    replacements: dict[int, DeformConv2d] = {}  # a shared conv stays shared, as one layer
    for name, conv in chosen:
        deform = replacements.get(id(conv))
        if deform is None:
            deform = replacements[id(conv)] = _deformable_twin(
                conv, offset_groups=offset_groups, modulated=modulated,
                offset_lr_mult=offset_lr_mult)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, deform)
    return [name for name, _ in chosen]


def _deformable_twin(conv: nn.Conv2d, **offset_settings: object) -> DeformConv2d:
    """A :class:`DeformConv2d` sharing ``conv``'s parameters and geometry, offsets at zero.

    Built on the meta device, then given ``conv``'s parameters and a zeroed offset branch on
    ``conv``'s device: it draws no random numbers (a seeded run initialises whatever it
    builds after a conversion as it would without one) and allocates no weight to discard.
    """
    deform = DeformConv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
        conv.padding, conv.dilation, conv.groups, conv.bias is not None,
        device="meta", dtype=conv.weight.dtype,
        **offset_settings,  # type: ignore[arg-type]
    )
    deform.weight = conv.weight
    deform.bias = conv.bias
    deform.offset_branch.to_empty(device=conv.weight.device)
    deform.zero_init_offsets()
    deform.train(conv.training)
    return deform


def _warn_skipped(reasons: dict[str, str]) -> None:
    """Warn about selected convs left as they are, naming a few and why."""
    if not reasons:
        return
    shown = "; ".join(f"{name}: {why}" for name, why in list(reasons.items())[:4])
    more = f"; and {len(reasons) - 4} more" if len(reasons) > 4 else ""
    warnings.warn(f"convert_to_deformable left {len(reasons)} selected conv(s) as they are, "
                  f"since a DeformConv2d would compute something else: {shown}{more}",
                  stacklevel=3)
