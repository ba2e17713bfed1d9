"""Fixtures shared by the op tests."""

from __future__ import annotations

import pytest
import torch

from deformconv.ops import _dispatch


@pytest.fixture
def deterministic_mode(monkeypatch: pytest.MonkeyPatch):
    """``torch.use_deterministic_algorithms``, to set for a test: restored after it, and
    the ops' warn-once memory starts empty."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    monkeypatch.setattr(_dispatch, "_warned_not_deterministic", set(), raising=False)
    yield torch.use_deterministic_algorithms
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
