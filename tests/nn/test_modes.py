"""eval_mode: a model in eval mode for a block, its submodules' modes restored after."""

from __future__ import annotations

import pytest
from torch import nn

from deformconv.nn import eval_mode


def test_each_submodule_gets_its_own_mode_back_even_after_an_error() -> None:
    model = nn.Sequential(nn.BatchNorm2d(2), nn.Dropout()).train()
    model[0].eval()
    with pytest.raises(RuntimeError), eval_mode(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
        raise RuntimeError
    assert [m.training for m in model.modules()] == [True, False, True]
