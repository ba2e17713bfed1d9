"""What every module with a learned offset branch shares: zero init and an lr multiplier."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor

from ..ops._checks import AUTOCAST_DTYPES, autocast_on, check_same_dtype_device
from ..ops.arguments import count, finite_float, is_bool


class OffsetBranchMixin:
    """A module that predicts its own sampling offsets from its input.

    Subclasses keep the offset predictor in ``self.offset_branch`` and set
    ``self.offset_lr_mult`` (a finite number >= 0, checked): the paper trains these layers at
    ``β`` times the base learning rate (β = 1 for deformable convs, 0.01 for the fc of
    deformable RoI pooling).
    :func:`deformconv.nn.offset_param_groups` reads both, and so does the training engine
    with ``TrainConfig(offset_lr_mult=None)`` (``deformconv train --offset-lr-mult model``).
    """

    offset_branch: nn.Module
    _offset_lr_mult: float

    @property
    def offset_lr_mult(self) -> float:
        """The offset branch's learning-rate multiplier: a finite number >= 0 (0 freezes
        it); set to anything else, it raises an error naming ``offset_lr_mult``."""
        try:
            return self._offset_lr_mult
        except AttributeError:
            if "offset_lr_mult" in self.__dict__:  # pickled whole before it was checked
                return self.__dict__["offset_lr_mult"]
            raise

    @offset_lr_mult.setter
    def offset_lr_mult(self, value: float) -> None:
        self._offset_lr_mult = check_offset_lr_mult(value)

    def offset_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the offset (and mask) predictor only."""
        return self.offset_branch.parameters()

    def zero_init_offsets(self) -> None:
        """Zero the offset branch's last layer, so the module starts as its plain twin.

        Call it after a custom init loop over ``nn.Conv2d`` / ``nn.Linear`` layers
        (``nn.init.kaiming_normal_(m.weight)``): that loop reaches the branch's output layer
        (one of those) and un-zeros it."""
        zero_init_last(self.offset_branch)


def check_offset_lr_mult(value: object) -> float:
    """``value`` as an offset branch's learning-rate multiplier: a finite number >= 0, else
    an error naming ``offset_lr_mult``."""
    return finite_float(value, "offset_lr_mult", nonnegative=True)


def _exporting() -> bool:
    """Whether ``torch.export`` is tracing (torch < 2.7 cannot tell: False)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


def _exporting_onnx() -> bool:
    """Whether ``torch.onnx.export`` is tracing (its graph, not ours, reads the offsets);
    not a plain ``torch.export``, whose program runs the op itself."""
    return torch.onnx.is_in_onnx_export()


def _fx_tracing() -> bool:
    """Whether ``torch.fx.symbolic_trace`` is tracing (torchvision's feature extractor);
    not ``is_fx_tracing()``, which logs a deprecation warning on its first call."""
    symbolic_trace = torch.fx._symbolic_trace
    if hasattr(symbolic_trace, "is_fx_symbolic_tracing"):
        return bool(symbolic_trace.is_fx_symbolic_tracing())
    return bool(getattr(symbolic_trace, "_is_fx_tracing_flag", False))  # torch < 2.8


def _without_values(tensor: Tensor) -> bool:
    """Whether ``tensor`` has no values to read: on the meta device, a fake tensor (shape
    propagation) or batched under ``torch.func.vmap``."""
    return (tensor.device.type == "meta" or isinstance(tensor, FakeTensor)
            or torch._C._functorch.is_batchedtensor(tensor))


def nan_offsets_propagate(op: Callable[[Tensor], Tensor], offset: Tensor, *,
                          per_position: bool = True) -> Tensor:
    """``op(offset)``, where a module's own predicted offset that is not finite (from a NaN
    or inf in its input) makes what it moves NaN, as a conv's output is where its window
    holds a NaN or inf. The ops refuse NaN offsets with an error about an argument the
    module's user never passed (which would also stop a training loop that skips
    non-finite losses), and read 0 at inf ones, which would hide the inf.

    ``offset`` (N|K, *, h, w) and ``op``'s output (N|K, C, h, w): a non-finite value at
    (n, :, i, j) makes output (n, :, i, j) NaN; without ``per_position`` (the output's
    positions do not match the offset's), all of output n.
    """
    if _exporting_onnx():
        return op(offset) + _nan_where_not_finite(offset, per_position)
    # torch.compile, torch.export and FX trace the op as a node whose error no except ever
    # sees: there the masking always runs, and where all is finite it leaves op(offset) as
    # it is.
    tracing = (torch.compiler.is_compiling() or _exporting() or _fx_tracing()
               or _without_values(offset))
    # one float32 sum, no temporary: it is not finite when an offset is not (or when the
    # sum overflows, which only costs the masking below, exact without non-finite offsets)
    if not tracing and bool(offset.sum(dtype=torch.float32).isfinite()):
        return op(offset)
    bad = ~offset.isfinite()
    out = op(offset.masked_fill(bad, 0.0))
    where = bad.any(1, keepdim=True) if per_position else bad.flatten(1).any(1).view(-1, 1, 1, 1)
    return out.masked_fill(where, math.nan)


def _nan_where_not_finite(offset: Tensor, per_position: bool) -> Tensor:
    """0 where ``offset``'s values are finite, NaN where one is not (0 * inf is NaN), per
    position (N|K, 1, h, w) or per row (N|K, 1, 1, 1): added to ``op(offset)``, what the
    masking gives, for a graph that ``torch.onnx.export`` traces in three cheap nodes (Mul,
    ReduceSum, Add) instead of the masking's seven. The op itself sees the offsets as they
    are: the graphs read NaN and inf positions safely (a DeformConv node reads 0 there). A
    program of ``torch.export.export`` runs the op itself: it has the masking."""
    zeros = offset * 0
    if per_position:
        return zeros.sum(1, keepdim=True)
    return zeros.flatten(1).sum(1).view(-1, 1, 1, 1)


def named_offset_branches(model: nn.Module) -> dict[str, nn.Module]:
    """``{qualified name: branch}`` of every offset branch in ``model`` (the
    ``offset_branch`` of each :class:`OffsetBranchMixin` module), under each name of a
    shared module."""
    branches = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, OffsetBranchMixin):
            branch = module.offset_branch
            branch_name = next(n for n, m in module.named_modules() if m is branch)
            branches[f"{name}.{branch_name}" if name else branch_name] = branch
    return branches


def offset_state_keys(model: nn.Module) -> set[str]:
    """``model.state_dict()`` keys of every offset branch: what a checkpoint of the plain
    twin lacks (load it with ``strict=False`` and expect exactly these missing)."""
    return {f"{name}.{key}" for name, branch in named_offset_branches(model).items()
            for key in branch.state_dict()}


def _zero_weight_and_bias(layer: nn.Conv2d | nn.Linear) -> None:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def zero_init_last(branch: nn.Module) -> None:
    """Zero the weight and bias of the last conv/linear layer in ``branch``.

    Zero offsets (and mask logits) make a deformable layer start as its plain twin.
    """
    layers = [m for m in branch.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    _zero_weight_and_bias(layers[-1])


class ZeroInitConv2d(nn.Conv2d):
    """An offset branch's output conv, zero from the start: its own ``reset_parameters``
    zeroes it, so that generic init loops (``to_empty`` then ``reset_parameters`` on every
    submodule, FSDP's ``param_init_fn``) keep the deformable layer starting as its plain
    twin; a plain ``nn.Conv2d`` there took a random init after its parent's zeroing."""

    def reset_parameters(self) -> None:
        super().reset_parameters()  # its random draws, so a seeded model's other weights stay
        _zero_weight_and_bias(self)


class ZeroInitLinear(nn.Linear):
    """An offset branch's output fc, zero from the start (see :class:`ZeroInitConv2d`)."""

    def reset_parameters(self) -> None:
        super().reset_parameters()  # as in ZeroInitConv2d
        _zero_weight_and_bias(self)


def check_matches_parameters(module: nn.Module, **inputs: Tensor | None) -> None:
    """Refuse each of ``inputs`` (by name) that is on another device than ``module``'s first
    parameter or of another dtype, with the ops' message naming both (``ops._checks.
    check_same_dtype_device``), before an offset branch fails on it with torch's message
    naming neither. Under autocast float32, float16 and bfloat16 may mix (autocast casts
    them, the ops run in float32); a Proxy (FX tracing) or None has nothing to check."""
    name, parameter = next(module.named_parameters())
    for input_name, input in inputs.items():
        if not isinstance(input, Tensor):
            continue
        if (input.device == parameter.device and autocast_on(input.device.type)
                and {input.dtype, parameter.dtype} <= set(AUTOCAST_DTYPES)):
            continue  # autocast casts them to one dtype
        check_same_dtype_device(input_name, input, **{name: parameter})


def check_counts(**values: object) -> None:
    """Raise an error naming the first argument that is not an int > 0 (``ops.arguments.
    count``): a float fails later inside ``torch.empty`` without the name, a bool passes."""
    for name, value in values.items():
        count(value, name)


def check_positive(**values: float | tuple[int, int]) -> None:
    """Raise a ``ValueError`` naming the first argument that is not > 0 (NaN and inf are
    not; a pair must be > 0 in both entries), or a ``TypeError`` for one that is no number
    (a bool included: True is no scale of 1)."""
    for name, value in values.items():
        numbers = value if isinstance(value, tuple) else (value,)
        if any(map(is_bool, numbers)):
            raise TypeError(f"{name} must be a number > 0, not a bool, got {value!r}")
        try:
            positive = all(math.isfinite(v) and v > 0 for v in numbers)
        except TypeError:  # math.isfinite('a'): "must be real number, not str"
            raise TypeError(f"{name} must be a number > 0, got {value!r}") from None
        if not positive:
            raise ValueError(f"{name} must be > 0, got {value!r}")
