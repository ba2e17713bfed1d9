"""``benchmarks/bench_deform_conv.py``: its timer, runners and options, with stand-in ops
and clocks (no benchmark runs)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

from .scripts import load_script


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_script("bench_deform_conv", monkeypatch)


def _timed_ops(seconds: dict[str, float]) -> tuple[dict[str, Callable[[], None]], list[str],
                                                   Callable[[], float]]:
    """Ops that advance a fake clock by their time; the order they ran in; the clock."""
    now = [0.0]
    order: list[str] = []

    def op(name: str) -> Callable[[], None]:
        def run() -> None:
            order.append(name)
            now[0] += seconds[name]
        return run

    return {name: op(name) for name in seconds}, order, lambda: now[0]


def test_every_op_runs_as_often_taking_turns_throughout(bench: ModuleType) -> None:
    """A fast op ran until it filled min_seconds on its own after the slow one had stopped:
    at 0.05 s against 1 ms, 20 runs of ours against 50 of conv2d, the last 30 without turns."""
    ops, order, clock = _timed_ops({"ours": 0.05, "conv2d": 0.001})
    best = bench.best_times(ops, 5, clock=clock, min_seconds=1.0)
    assert order == ["ours", "conv2d"] * (1 + 20)  # a warm-up, then 20 rounds
    assert best == pytest.approx({"ours": 0.05, "conv2d": 0.001})


@pytest.mark.parametrize(("seconds", "rounds"), [
    ({"fast": 0.01, "tiny": 1e-5, "slow": 1.0}, 3),  # the slowest fills 0.1 s in fewer
    ({"fast": 0.01, "tiny": 1e-5}, 10),                # 0.1 s of the slower one
    ({"tiny": 1e-5, "tinier": 1e-6}, 50),              # at most MAX_REPEATS
])
def test_rounds_fill_min_seconds_for_the_slowest_op(bench: ModuleType, seconds: dict[str, float],
                                                    rounds: int) -> None:
    ops, order, clock = _timed_ops(seconds)
    bench.best_times(ops, 3, clock=clock, min_seconds=0.1)
    assert rounds <= bench.MAX_REPEATS
    assert order == list(seconds) * (1 + rounds)
