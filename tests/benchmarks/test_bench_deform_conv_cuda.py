"""``benchmarks/bench_deform_conv_cuda.py``: its tables and goals, from made-up numbers."""

from __future__ import annotations

import math

import pytest

from .scripts import load_script

# {backward: (ms per op, peak extra MiB per op)} in NAMES order: ours fp32, ours bf16,
# conv2d fp32, conv2d bf16 CL, torchvision fp32
RESULT = {False: ([10.0, 5.0, 8.0, 4.0, 50.0], [0.0, 0.0, 30.0, 15.0, 400.0]),
          True: ([30.0, 15.0, 20.0, 10.0, 200.0], [1.0] * 5)}


def test_no_extra_memory_meets_the_memory_goal(capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Ours allocating 0 MiB extra (the Triton forward has no column buffer) gave a NaN
    ratio, reported as 'not measured' and as nan in the memory table."""
    bench = load_script("bench_deform_conv_cuda", monkeypatch)
    shapes = [shape for shape in bench.SHAPES if shape.name in bench.GOAL_SHAPES]
    monkeypatch.setattr(bench, "measure", lambda *_args: RESULT)
    bench.run(shapes, 1, "cpu")
    out = capsys.readouterr().out
    for name in ("S1 res5", "S2"):
        assert (f"{name} forward peak extra memory, torchvision/ours fp32: inf (target >= 5.0) "
                "met (ours allocates nothing extra)") in out
    memory_table = out.split("peak extra GPU memory")[1].split("goals")[0]
    assert "| 0.0 | 0.0 | 30.0 | 15.0 | 400.0 | inf |" in memory_table
    assert "| 1.0 | 1.0 | 1.0 | 1.0 | 1.0 | 1.0 |" in memory_table
    assert "nan" not in out


def test_memory_ratio_edge_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_script("bench_deform_conv_cuda", monkeypatch)
    assert bench._memory_ratio(400.0, 0.0) == math.inf
    assert bench._memory_ratio(0.0, 0.0) == 1.0  # neither allocates: the same memory
    assert bench._memory_ratio(30.0, 15.0) == 2.0
    assert math.isnan(bench._memory_ratio(math.nan, math.nan))  # the dry run measures none
    assert math.isnan(bench._memory_ratio(400.0, math.nan))


def test_quick_run_says_once_that_goals_need_the_full_run(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """--quick's shapes ('S1 res5, batch 1', ...) are not the goals' shapes: all 11 goal
    lines said 'not measured'."""
    bench = load_script("bench_deform_conv_cuda", monkeypatch)
    monkeypatch.setattr(bench, "measure", lambda *_args: RESULT)
    bench.run(bench.QUICK, 1, "cpu")
    goals = capsys.readouterr().out.split("\n\n")[-1].strip()
    assert goals == ("goals (issue 14): not measured, they need the full run's shapes "
                     "(S1 res5, S2, S3 S1 depthwise), not --quick's or --dry-run's")


@pytest.mark.parametrize(("repeats", "rounds"), [(None, 20), (5, 5)])
def test_rounds_default_to_20_and_follow_repeats(monkeypatch: pytest.MonkeyPatch,
                                                repeats: int | None, rounds: int) -> None:
    """bench_deform_conv.py --device cuda --repeats 5 timed 20 rounds (5 stood for 'not
    given')."""
    bench = load_script("bench_deform_conv_cuda", monkeypatch)
    ran: list[int] = []
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench, "run", lambda _shapes, rounds, _device: ran.append(rounds))
    bench.main(quick=True, repeats=repeats, dry_run=False)
    assert ran == [rounds]
