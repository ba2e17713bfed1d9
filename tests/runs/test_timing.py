"""runs.timing: thread counts."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from deformconv.runs import set_threads


@pytest.mark.parametrize(("count", "error", "message"), [
    (0, ValueError, "count must be > 0, got 0"),
    (-2, ValueError, "count must be > 0, got -2"),
    (1.5, TypeError, "count must be an int, got 1.5"),
    ("2", TypeError, "count must be an int, got '2'"),
])
def test_set_threads_names_a_bad_count(count: object, error: type, message: str) -> None:
    """torch raised its own RuntimeError ('set_num_threads expects a positive integer')."""
    before = torch.get_num_threads()
    with pytest.raises(error, match=re.escape(message)):
        set_threads(count)  # type: ignore[arg-type]
    assert torch.get_num_threads() == before


def test_set_threads_takes_numpy_ints() -> None:
    before = torch.get_num_threads()
    try:
        set_threads(np.int64(1))  # type: ignore[arg-type]
        assert torch.get_num_threads() == 1
    finally:
        set_threads(before)
