"""ops.arguments: the argument checks shared by the ops, modules and models."""

from __future__ import annotations

import re

import numpy as np
import pytest

from deformconv.ops.arguments import boolean


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
