"""ops.arguments: the argument checks shared by the ops, modules and models."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from deformconv.ops.arguments import boolean, finite_float


@pytest.mark.parametrize("value", [True, False, np.bool_(True), np.bool_(False)])
def test_boolean_takes_python_and_numpy_bools(value) -> None:
    result = boolean(value, "flag")
    assert type(result) is bool and result == bool(value)


@pytest.mark.parametrize("value", ["no", "False", 1, 0, None, 1.0, np.int64(1)])
def test_boolean_refuses_anything_else_naming_the_argument(value) -> None:
    """bool('no') is True: a truthy string or number turned an option on."""
    with pytest.raises(TypeError, match=re.escape(
            f"flag must be a bool (True or False), got {value!r}")):
        boolean(value, "flag")


@pytest.mark.parametrize("value", [True, False, np.bool_(True), torch.tensor(True)])
def test_finite_float_refuses_bools_naming_the_argument(value) -> None:
    """True was taken as 1.0 (spatial_scale=True, gamma=True, offset_lr_mult=True)."""
    with pytest.raises(TypeError, match=re.escape(
            f"scale must be a finite number > 0, not a bool, got {value!r}")):
        finite_float(value, "scale", positive=True)


@pytest.mark.parametrize("value", [0.5, 2, np.float32(0.5), np.float64(0.5), np.int64(2),
                                   torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64)])
def test_finite_float_takes_numbers(value) -> None:
    result = finite_float(value, "scale", positive=True)
    assert type(result) is float and result == float(value)

