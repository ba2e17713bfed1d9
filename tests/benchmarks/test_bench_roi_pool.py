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


def test_measure_times_each_op_forward_and_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_script("bench_roi_pool", monkeypatch)
    calls: list[str] = []

    def theirs(x: torch.Tensor) -> torch.Tensor:
        calls.append("theirs")
        return x * 2

    def ours(x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        calls.append("ours" if offset is None else "ours, offset")
        return x * 2 if offset is None else x * offset

    rows = bench._measure(["a", "b", "c"], theirs, ours, torch.ones(3), torch.ones(3), 2)
    assert [name for name, _, _ in rows] == ["a", "b", "c"]
    assert all(0 <= forward < 1 and 0 <= both < 1 for _, forward, both in rows)
    # forward, then forward+backward: a warm-up and 2 rounds each, the three taking turns
    assert calls == ["theirs", "ours", "ours, offset"] * 6


def test_repeats_below_one_are_refused(capsys: pytest.CaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """--repeats 0 printed rows of 'inf | nan' and exited 0."""
    bench = load_script("bench_roi_pool", monkeypatch)
    with pytest.raises(SystemExit) as stop:
        bench.main(["--repeats", "0"])
    assert stop.value.code == 2
    assert "--repeats: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_header_names_the_backend(capsys: pytest.CaptureFixture,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With DEFORMCONV_BACKEND=torch the torch fallback was timed as 'ours', unsaid."""
    bench = load_script("bench_roi_pool", monkeypatch)
    monkeypatch.setenv("DEFORMCONV_BACKEND", "torch")
    rows = [("theirs", 1.0, 2.0), ("ours", 1.0, 2.0), ("ours, offset", 1.0, 2.0)]
    monkeypatch.setattr(bench, "roi_case", lambda _repeats: rows)
    monkeypatch.setattr(bench, "psroi_case", lambda _repeats: rows)
    bench.main([])
    assert "ours on torch," in capsys.readouterr().out.splitlines()[0]
