"""The demo's runs and folder: resumes, locks, the checks before any work."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

import deformconv.engine as engine
from deformconv.engine import TrainingStopped
from deformconv.runs import DemoSettings, run_demo
from deformconv.runs.demo import MARKER, RUN_CPU, SUMMARY
from deformconv.runs.demo_report import verdict


def _smoke(**changes: Any) -> DemoSettings:
    return DemoSettings.smoke(progress=False, **changes)


def _stopped_demo(out: Path, monkeypatch: pytest.MonkeyPatch, run: str = "deformable",
                  **changes: Any) -> None:
    """A smoke demo in ``out`` stopped (SIGINT) after iteration 2 of ``run``."""
    train = engine.train

    def stopping(config: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(config.out_dir).name == run:
            kwargs["on_iteration_end"] = lambda done: (
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None) if done == 2 else None)
        return train(config, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(engine, "train", stopping)
        with pytest.raises(TrainingStopped):
            run_demo(_smoke(**changes), out)


def test_a_resumed_demo_reports_the_times_spent_before_the_stop_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Each run's CPU seconds were those of the resuming call only (a finished run's: one
    validation), so the report's cost ratio was 23.81x where it was 1.14x; the demo's wall
    time counted the resumed part only."""
    out = tmp_path / "demo"
    _stopped_demo(out, monkeypatch)
    plain = json.loads((out / "plain" / RUN_CPU).read_text())
    before = json.loads((out / "deformable" / RUN_CPU).read_text())
    spent = json.loads((out / MARKER).read_text())["spent"]
    assert plain["finished"] and not before["finished"] and before["cpu_seconds"] > 0
    assert spent["seconds"] > 0 and spent["cpu_seconds"] > 0

    summary = run_demo(_smoke(), out, resume=True)
    runs = summary["runs"]
    assert runs["plain"]["cpu_seconds"] == plain["cpu_seconds"]  # finished: kept
    after = json.loads((out / "deformable" / RUN_CPU).read_text())
    assert after["finished"] and runs["deformable"]["cpu_seconds"] == after["cpu_seconds"]
    assert after["cpu_seconds"] > before["cpu_seconds"]
    assert summary["total_seconds"] > spent["seconds"]
    assert summary["machine"]["cpu_seconds"] > spent["cpu_seconds"]
    ratio = after["cpu_seconds"] / plain["cpu_seconds"]
    assert any(f"**{ratio:.2f}×**" in line for line in verdict(summary))

    # a finished demo: nothing to resume, nothing rewritten
    written = (out / SUMMARY).read_bytes()
    capsys.readouterr()
    assert run_demo(_smoke(), out, resume=True) == json.loads(written)
    assert capsys.readouterr().out.strip() == (
        f"nothing to resume: the demo in {out} has finished; its report is at "
        f"{out / 'report.md'}")
    assert (out / SUMMARY).read_bytes() == written
