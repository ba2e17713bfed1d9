"""``benchmarks/bench_roi_pool.py``: its runners and options, without running it."""

from __future__ import annotations

import pytest
import torch

from .scripts import load_script


def test_forward_backward_leaves_no_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """The input gradient the three ops share piled up over their timed runs."""
    bench = load_script("bench_roi_pool", monkeypatch)
    x, offset = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    run = bench.forward_backward(lambda a, b: a * b, x, offset)
    run()
    run()
    assert x.grad is None and offset.grad is None
