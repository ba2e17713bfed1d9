"""What the modules with an offset branch share (``nn/_offset.py``), across all three."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from deformconv.nn import DeformConv2d, DeformPSRoIPool, DeformRoIPool, OffsetBranchMixin

ROIS = torch.tensor([[0, 2.0, 3.0, 40.0, 30.0], [1, 10.0, 0.0, 31.0, 47.0]])


def _conv() -> tuple[nn.Module, tuple[Tensor, ...]]:
    module = DeformConv2d(4, 4, 3, padding=1, modulated=True)
    x = torch.randn(2, 4, 8, 8)
    x[0, 0, 2, 2] = float("nan")
    return module, (x,)


def _roi_pool() -> tuple[nn.Module, tuple[Tensor, ...]]:
    module = DeformRoIPool(3, 2, spatial_scale=0.25, sampling_ratio=2)
    x = torch.randn(2, 3, 16, 16)
    x[0, 1, 4, 4] = float("nan")  # inside RoI 0 only
    return module, (x, ROIS)


def _psroi_pool() -> tuple[nn.Module, tuple[Tensor, ...]]:
    module = DeformPSRoIPool(5, 2, 3, 0.25, sample_per_part=2)
    features = torch.randn(2, 5, 16, 16)
    features[0, 2, 3, 3] = float("nan")  # inside RoI 0 only
    return module, (torch.randn(2, 2 * 9, 16, 16), ROIS, features)


def _assert_same_nan_outputs(build: Callable[[], tuple[nn.Module, tuple[Tensor, ...]]],
                             run: Callable[[nn.Module, tuple[Tensor, ...]], Tensor]) -> None:
    """``run(module, inputs)`` (a traced, compiled or exported module) gives the eager
    module's outputs on a NaN input: NaN at the same outputs, the rest equal."""
    torch.manual_seed(0)
    module, inputs = build()
    with torch.no_grad():
        for param in module.offset_parameters():  # zero at init: offsets all 0, no NaN
            nn.init.normal_(param, std=0.5)
        eager = module(*inputs)
        got = run(module, inputs)
    assert eager.isnan().any() and not eager.isnan().all()
    torch.testing.assert_close(got, eager, equal_nan=True)


@pytest.mark.parametrize("build", [_conv, _roi_pool, _psroi_pool])
def test_a_nan_input_gives_the_same_nan_outputs_compiled(
        build: Callable[[], tuple[nn.Module, tuple[Tensor, ...]]]) -> None:
    """The NaN offsets a NaN input gives used to be handled by catching the op's
    NaNOffsetError, which torch.compile's graph never raises to Python: compiled modules
    raised it."""
    _assert_same_nan_outputs(build, lambda module, inputs: torch.compile(
        module, fullgraph=True, backend="aot_eager")(*inputs))


@pytest.mark.parametrize("build", [_conv, _roi_pool, _psroi_pool])
def test_a_nan_input_gives_the_same_nan_outputs_exported(
        build: Callable[[], tuple[nn.Module, tuple[Tensor, ...]]]) -> None:
    """A torch.export program ran the op on the NaN offsets as they were (the graph of an
    ONNX export reads them safely; the program runs the op itself), which raised
    NaNOffsetError."""
    _assert_same_nan_outputs(build, lambda module, inputs: torch.export.export(
        module, tuple(t.nan_to_num() for t in inputs)).module()(*inputs))


def test_a_nan_input_gives_the_same_nan_outputs_fx_traced() -> None:
    """An FX-traced conv (torchvision's create_feature_extractor) records the op as one
    call whose NaNOffsetError no except sees when the graph runs: it used to raise. (The
    RoI modules check their inputs' shapes in Python, which symbolic tracing cannot run.)"""
    _assert_same_nan_outputs(_conv, lambda module, inputs: torch.fx.symbolic_trace(module)(
        *inputs))


@pytest.mark.parametrize("build", [_conv, _roi_pool, _psroi_pool])
def test_an_inf_input_is_not_hidden_by_offsets_that_move_samples_out(
        build: Callable[[], tuple[nn.Module, tuple[Tensor, ...]]]) -> None:
    """A trained offset branch turns an inf pixel into ±inf offsets (not NaN), which the ops
    take as samples far outside the map, reading 0: the inf vanished from the output (the
    conv's outputs around it were exactly its bias). The outputs those offsets move are NaN
    now, as for NaN offsets; the other image's or RoI's stay finite."""
    torch.manual_seed(0)
    module, inputs = build()
    inputs = tuple(t.nan_to_num(nan=math.inf) for t in inputs)
    with torch.no_grad():
        for param in module.offset_parameters():
            nn.init.normal_(param, std=0.5)
        out = module(*inputs)
    assert out[0].isnan().any()
    if build is _conv:  # every output whose window holds the inf
        assert not torch.isfinite(out[0, :, 1:4, 1:4]).any()
    assert torch.isfinite(out[1]).all()


@pytest.mark.parametrize("build", [_conv, _roi_pool, _psroi_pool])
def test_a_generic_reset_loop_keeps_the_offsets_zero(
        build: Callable[[], tuple[nn.Module, tuple[Tensor, ...]]]) -> None:
    """Meta-device init (``to_empty``, then ``reset_parameters`` on every submodule, as
    FSDP's ``param_init_fn`` does) visits the offset branch's own output layer after its
    parent: as a plain conv/linear it took a random init, so the module no longer started
    as its plain twin."""
    with torch.device("meta"):
        module, _ = build()
    module = module.to_empty(device="cpu")
    for submodule in module.modules():
        if hasattr(submodule, "reset_parameters"):
            submodule.reset_parameters()
    last = [m for m in module.offset_branch.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert not last[-1].weight.any() and not last[-1].bias.any()


def test_zero_init_offsets_restores_the_plain_start_after_a_custom_init_loop() -> None:
    """The documented recipe: a loop re-initialising every nn.Conv2d / nn.Linear reaches the
    offset branches too (their output layers are such layers) and un-zeros them;
    ``zero_init_offsets()`` on each OffsetBranchMixin module afterwards puts them back."""
    torch.manual_seed(0)
    plain = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.ModuleList([DeformConv2d(4, 4, 3, padding=1), DeformRoIPool(4, 2),
                           DeformPSRoIPool(4, 1, 2, 1.0)])
    model[0].weight, model[0].bias = plain.weight, plain.bias
    x = torch.randn(1, 4, 8, 8)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
    assert all(m.offset_branch.weight.any() for m in (model[0], model[2]))
    assert not torch.allclose(model[0](x), plain(x), atol=1e-4)
    for m in model.modules():
        if isinstance(m, OffsetBranchMixin):
            m.zero_init_offsets()
    for m in model:
        assert not any(p.any() for p in m.offset_branch.parameters())
    torch.testing.assert_close(model[0](x), plain(x), rtol=1e-4, atol=1e-5)


def test_an_eager_forward_logs_no_fx_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.fx's is_fx_tracing() logs a deprecation warning (once per process): asking it
    on every forward printed that warning in every program using a deformable module."""
    warned = []
    monkeypatch.setattr(torch.fx._symbolic_trace, "is_fx_tracing_warning",
                        lambda: warned.append(True), raising=False)
    for build in (_conv, _roi_pool, _psroi_pool):
        module, inputs = build()
        module(*(t.nan_to_num() for t in inputs))
    assert warned == []


def test_zero_init_layers_draw_the_random_numbers_their_plain_class_draws() -> None:
    """Seeded models (the demo, the studies) must keep their weights: a zero-init offset
    layer that skipped nn.Conv2d's random init shifted every later draw (the demo's plain
    twin went from mIoU 0.599 to 0.590)."""
    from deformconv.nn._offset import ZeroInitConv2d, ZeroInitLinear

    for zero_init, plain in ((lambda: ZeroInitConv2d(4, 18, 3), lambda: nn.Conv2d(4, 18, 3)),
                             (lambda: ZeroInitLinear(8, 6), lambda: nn.Linear(8, 6))):
        torch.manual_seed(0)
        zero_init()
        after_zero_init = torch.rand(3)
        torch.manual_seed(0)
        plain()
        torch.testing.assert_close(after_zero_init, torch.rand(3), rtol=0, atol=0)


@pytest.mark.parametrize("pool", [
    lambda scale: DeformRoIPool(3, 2, spatial_scale=scale),
    lambda scale: DeformPSRoIPool(4, 1, 2, spatial_scale=scale),
])
def test_a_spatial_scale_that_is_no_number_is_named(pool: Callable[[object], nn.Module]) -> None:
    """math.isfinite raised its own 'must be real number, not str'."""
    with pytest.raises(TypeError, match="spatial_scale must be a number > 0, got 'a'"):
        pool("a")
