"""``benchmarks/bench_deform_conv.py``: its timer, runners and options, with stand-in ops
and clocks (no benchmark runs)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from torch import nn

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


def test_timed_backward_leaves_no_gradient_to_add_to(bench: ModuleType,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradients piled up over the timed runs (the offset's after 3 runs was 3 times one
    run's): every run after the first paid an extra add, and ours and torchvision one for the
    offset gradient that conv2d does not have."""
    made: list[dict[str, torch.Tensor]] = []
    make_inputs = bench.make_inputs

    def recorded_inputs(*args: object) -> dict[str, torch.Tensor]:
        made.append(make_inputs(*args))
        return made[-1]

    def stand_in(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, *,
                 padding: int, dilation: int) -> torch.Tensor:
        """A differentiable op of the same arguments: the test is about the runners."""
        return F.conv2d(input, weight, padding=padding, dilation=dilation) + offset.mean()

    monkeypatch.setattr(bench, "make_inputs", recorded_inputs)

    monkeypatch.setattr(bench, "deform_conv2d", stand_in)
    monkeypatch.setattr(bench, "tv_deform_conv2d", stand_in)
    with torch.enable_grad():
        runners = bench.op_runners(bench.Case("tiny", 1, 2, 2, 4, 4), backward=True)
        for run in list(runners.values()) * 2:
            run()
    assert set(runners) == {"ours", "conv2d", "torchvision"}
    assert all(t.grad is None for t in made[0].values())


def test_timed_module_backward_leaves_no_gradient(bench: ModuleType,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # our layer as a plain conv: the test is about the runners, not the op (nor Numba's start)
    monkeypatch.setattr(bench, "DeformConv2d", lambda cin, cout, k, padding, dilation, modulated:
                        nn.Conv2d(cin, cout, k, padding=padding, dilation=dilation))
    called: list[tuple[nn.Module, tuple]] = []
    hook = nn.modules.module.register_module_forward_hook(
        lambda module, inputs, _out: called.append((module, inputs)))
    try:
        runners = bench.module_runners(bench.ModuleCase(1, 2, 4))
        for run in list(runners.values()) * 2:
            run()
    finally:
        hook.remove()
    leaves = [t for module, inputs in called for t in (*module.parameters(), *inputs)
              if isinstance(t, torch.Tensor) and t.is_leaf and t.requires_grad]
    assert len({id(module) for module, _ in called}) >= 3 and leaves
    assert all(t.grad is None for t in leaves)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_repeats_below_one_are_refused(bench: ModuleType, capsys: pytest.CaptureFixture,
                                       device: str) -> None:
    """--repeats 0 said 'best of 0' and took one run."""
    with pytest.raises(SystemExit) as stop:
        bench.main(["--repeats", "0", "--device", device])
    assert stop.value.code == 2
    assert "--repeats: expected an integer >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("seconds", ["-1", "nan", "inf"])
def test_min_seconds_must_be_a_finite_number_at_least_zero(
        bench: ModuleType, capsys: pytest.CaptureFixture, seconds: str) -> None:
    """-1 was taken (as 0), nan and inf failed in math.ceil after the compilation."""
    with pytest.raises(SystemExit) as stop:
        bench.main(["--min-seconds", seconds])
    assert stop.value.code == 2
    assert f"--min-seconds: expected a number >= 0, got {seconds}" in capsys.readouterr().err


def _run_main(bench: ModuleType, monkeypatch: pytest.MonkeyPatch, *argv: str) -> list[str]:
    """``main(argv)`` with every section stubbed out; the sections called, with arguments."""
    called: list[str] = []
    for section in ("bench_ops", "bench_modules", "bench_memory", "bench_cold_start"):
        monkeypatch.setattr(bench, section, lambda *args, section=section:
                            called.append(f"{section}{args}"))
    bench.main(list(argv))
    return called


def test_header_names_the_backend(bench: ModuleType, capsys: pytest.CaptureFixture,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With DEFORMCONV_BACKEND=torch the torch fallback was timed as 'ours', unsaid."""
    monkeypatch.setenv("DEFORMCONV_BACKEND", "torch")
    _run_main(bench, monkeypatch, "--only", "ops")
    assert "ours on torch," in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize("only", ["memory,cold", "ops,memory", "cold"])
def test_quick_refuses_sections_it_has_not(bench: ModuleType, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch, only: str) -> None:
    """--quick --only memory,cold printed the header alone and exited 0."""
    with pytest.raises(SystemExit) as stop:
        _run_main(bench, monkeypatch, "--quick", "--only", only)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"--only {only}: --quick has no " in err and "drop --quick" in err


def test_quick_runs_ops_and_modules_with_the_given_min_seconds(
        bench: ModuleType, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--quick replaced an explicit --min-seconds by 0; the header said 'best of 5' of a
    modules table that takes the best of 4 times as many (of as many with --quick)."""
    called = _run_main(bench, monkeypatch, "--quick", "--min-seconds", "0.5")
    assert [c.split("(")[0] for c in called] == ["bench_ops", "bench_modules"]
    assert called[0].endswith(", 5, <built-in function perf_counter>, 0.5)")
    assert "best of 5 (ops: of up to 50 rounds filling 0.5 s for the slowest; modules: best " \
           "of 5)" in capsys.readouterr().out
    called = _run_main(bench, monkeypatch, "--only", "ops,modules", "--repeats", "3")
    assert called[0].endswith(", 3, <built-in function perf_counter>, 1.0)")
    assert "modules: best of 12)" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "repeats"), [([], None), (["--repeats", "5"], 5),
                                               (["--quick", "--repeats", "7"], 7)])
def test_cuda_gets_the_repeats_given(bench: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                     argv: list[str], repeats: int | None) -> None:
    """--device cuda --repeats 5 became 20 rounds: 5 stood for 'not given'."""
    cuda = load_script("bench_deform_conv_cuda", monkeypatch)
    got: list[int | None] = []
    monkeypatch.setattr(cuda, "main", lambda _quick, repeats, _dry: got.append(repeats))
    bench.main(["--device", "cuda", *argv])
    assert got == [repeats]


@pytest.mark.parametrize(("argv", "message"), [
    (["--device", "cuda", "--only", "ops", "--cpu-time"],
     "--only, --cpu-time: not options of --device cuda"),
    (["--device", "cuda", "--min-seconds", "2"], "--min-seconds: not options of --device cuda"),
    (["--dry-run"], "--dry-run checks the CUDA benchmark in Triton's interpreter: add "
                    "--device cuda"),
])
def test_options_of_the_other_device_are_refused(bench: ModuleType,
                                                 capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 argv: list[str], message: str) -> None:
    """They were ignored in silence."""
    with pytest.raises(SystemExit) as stop:
        _run_main(bench, monkeypatch, *argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err
