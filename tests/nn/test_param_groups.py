"""offset_param_groups: offset branches at their own learning rate, nothing lost or doubled."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from deformconv.nn import DeformConv2d, DeformPSRoIPool, DeformRoIPool, offset_param_groups


def _model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 1),
        DeformConv2d(4, 4, 3, padding=1, offset_lr_mult=0.5),
        DeformRoIPool(4, 2, offset_lr_mult=0.01),
    )


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_groups_follow_each_module_multiplier():
    model = _model()
    groups = offset_param_groups(model, lr=0.1, momentum=0.9)
    by_mult = {g["lr_mult"]: g for g in groups}
    assert set(by_mult) == {1.0, 0.5, 0.01}
    assert _ids(by_mult[0.5]["params"]) == _ids(model[1].conv_offset.parameters())
    assert _ids(by_mult[0.01]["params"]) == _ids(model[2].offset_fc.parameters())
    assert by_mult[0.01]["lr"] == pytest.approx(0.001)
    assert all(g["momentum"] == 0.9 for g in groups)
    all_params = [p for g in groups for p in g["params"]]
    assert len(all_params) == len(_ids(all_params)) == len(list(model.parameters()))


def test_global_multiplier_overrides_and_frozen_parameters_are_left_out():
    model = _model()
    model[0].requires_grad_(False)
    groups = offset_param_groups(model, lr=1.0, offset_lr_mult=0.0)
    assert [(g["lr_mult"], len(g["params"])) for g in groups] == [(1.0, 2), (0.0, 4)]
    assert not _ids(model[0].parameters()) & _ids(p for g in groups for p in g["params"])


def test_optimizer_applies_the_rates():
    model = _model()
    optimizer = torch.optim.SGD(offset_param_groups(model, lr=0.1), lr=0.1)
    lrs = sorted(g["lr"] for g in optimizer.param_groups)
    assert lrs == pytest.approx([0.001, 0.05, 0.1])


def test_model_without_offset_branches_gives_one_group():
    groups = offset_param_groups(nn.Linear(2, 2), lr=0.1)
    assert len(groups) == 1 and groups[0]["lr"] == 0.1


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
    # NaN passed the old `lr <= 0` and `offset_lr_mult < 0` checks: NaN learning rates
    ({"lr": math.nan}, "lr must be a finite number > 0, got nan"),
    ({"lr": math.inf}, "lr must be a finite number > 0, got inf"),
    ({"lr": 0.1, "offset_lr_mult": -1.0}, "offset_lr_mult must be a finite number >= 0, got -1"),
    ({"lr": 0.1, "offset_lr_mult": math.nan}, "offset_lr_mult must be a finite number >= 0, got n"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        offset_param_groups(_model(), **kwargs)


@pytest.mark.parametrize("build", [
    lambda mult: DeformConv2d(4, 4, 3, offset_lr_mult=mult),
    lambda mult: DeformRoIPool(4, 2, offset_lr_mult=mult),
    lambda mult: DeformPSRoIPool(4, 2, 3, 0.25, offset_lr_mult=mult),
])
@pytest.mark.parametrize("mult", [-1.0, math.nan, math.inf])
def test_modules_refuse_a_bad_offset_lr_mult(build, mult):
    """Stored unchecked, a negative multiplier gave the offset branch a negative lr (ascent)
    through offset_param_groups and the engine's per-module path, a NaN one a NaN lr."""
    with pytest.raises(ValueError, match=re.escape(
            f"offset_lr_mult must be a finite number >= 0, got {mult!r}")):
        build(mult)
    module = build(0.0)  # 0 freezes the offsets
    assert module.offset_lr_mult == 0.0
    with pytest.raises(ValueError, match="offset_lr_mult must be a finite number >= 0"):
        module.offset_lr_mult = mult  # set later, it is checked as well
    assert module.offset_lr_mult == 0.0


@pytest.mark.parametrize("build", [
    lambda mult: DeformConv2d(4, 4, 3, offset_lr_mult=mult),
    lambda mult: DeformRoIPool(4, 2, offset_lr_mult=mult),
    lambda mult: DeformPSRoIPool(4, 2, 3, 0.25, offset_lr_mult=mult),
])
def test_modules_refuse_a_bool_offset_lr_mult(build):
    """offset_lr_mult=True was taken as 1.0."""
    with pytest.raises(TypeError, match=re.escape(
            "offset_lr_mult must be a finite number >= 0, not a bool, got True")):
        build(True)


def test_a_module_pickled_whole_by_an_earlier_version_keeps_its_multiplier():
    """Earlier versions kept offset_lr_mult as a plain attribute, now a checked property:
    reading it on such an unpickled module raised AttributeError."""
    import pickle

    layer = DeformConv2d(4, 4, 3, padding=1, offset_lr_mult=0.25)
    layer.__dict__["offset_lr_mult"] = layer.__dict__.pop("_offset_lr_mult")  # the old layout
    old = pickle.loads(pickle.dumps(layer))
    assert old.offset_lr_mult == 0.25
    assert [g["lr"] for g in offset_param_groups(nn.Sequential(old), 1.0)] == [1.0, 0.25]
