"""The demo's runs and folder: resumes, locks, the checks before any work."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

import deformconv.engine as engine
import deformconv.runs.demo as demo
from deformconv._folder_lock import LOCK_FILE
from deformconv.engine import RunInProgressError, TrainingStopped
from deformconv.runs import DemoSettings, run_demo
from deformconv.runs.demo import DEMO_LOCK, MARKER, RUN_CPU, SUMMARY
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


class _Killed(Exception):
    """Stands for a SIGKILL (with the demo's recording of its time switched off)."""


def test_a_killed_demo_counts_the_runs_time_and_says_what_its_own_leaves_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain run, killed after its mid-run checkpoint, resumed from it having recorded
    none of the CPU time that led there (its cost too small, the cost ratio too large); the
    resumed demo's whole times left out the time before the kill and the report did not
    say so."""
    out = tmp_path / "demo"
    train = engine.train

    def killed_in_plain(config: Any, *args: Any, **kwargs: Any) -> Any:
        hook = kwargs["on_iteration_end"]

        def after(done: int) -> None:
            hook(done)
            if Path(config.out_dir).name == "plain" and done == config.checkpoint_every + 1:
                raise _Killed

        return train(config, *args, **{**kwargs, "on_iteration_end": after})

    with monkeypatch.context() as patch:
        patch.setattr(engine, "train", killed_in_plain)
        patch.setattr(demo, "_record_spent", lambda *args: None)  # a kill records nothing
        with pytest.raises(_Killed):
            run_demo(_smoke(), out)
    recorded = json.loads((out / "plain" / RUN_CPU).read_text())
    assert not recorded["finished"] and recorded["cpu_seconds"] > 0
    assert json.loads((out / MARKER).read_text())["running"]

    summary = run_demo(_smoke(), out, resume=True)
    assert summary["runs"]["plain"]["cpu_seconds"] > recorded["cpu_seconds"]
    assert summary["machine"]["unrecorded_stop"]
    assert "leave out the time before the kill" in (out / "report.md").read_text()


def _ctrl_c(*args: Any) -> None:
    raise KeyboardInterrupt


def _sigterm(*args: Any) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def _full_disk(*args: Any) -> None:
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize(("stop", "raised"), [(_ctrl_c, KeyboardInterrupt),
                                              (_sigterm, KeyboardInterrupt),
                                              (_full_disk, OSError)])
def test_a_stop_or_error_during_the_analysis_keeps_the_demos_time(
        stop: Any, raised: type[BaseException], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C once the runs had finished (drawing the figures) saved no time: the resumed
    demo's report gave the time of its resumed part only. A SIGTERM there killed the demo,
    and an error ended it, without recording it either; their resumes' reports then called
    the demo killed."""
    import deformconv.runs.demo_report as demo_report

    out = tmp_path / "demo"
    with monkeypatch.context() as patch:
        patch.setattr(demo_report, "analyse", stop)
        with pytest.raises(raised) as stopped:
            run_demo(_smoke(), out)
    if stop is _sigterm:
        assert stopped.value.signum == signal.SIGTERM  # type: ignore[attr-defined]
    marker = json.loads((out / MARKER).read_text())
    assert not marker["running"] and marker["spent"]["cpu_seconds"] > 0
    summary = run_demo(_smoke(), out, resume=True)
    assert summary["machine"]["cpu_seconds"] > marker["spent"]["cpu_seconds"]
    assert summary["total_seconds"] > marker["spent"]["seconds"]
    assert not summary["machine"]["unrecorded_stop"]
    assert "before the kill" not in (out / "report.md").read_text()
    assert not json.loads((out / MARKER).read_text())["running"]  # finished


@contextlib.contextmanager
def _held_by_another_process(folder: Path, lock_file: str) -> Iterator[int]:
    """A second Python process holding ``folder/lock_file`` (folder_lock) while inside;
    its pid."""
    code = ("import sys; from pathlib import Path; "
            "from deformconv._folder_lock import folder_lock; "
            "lock = folder_lock(Path(sys.argv[1]), RuntimeError, lock_file=sys.argv[2]); "
            "lock.__enter__(); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder), lock_file],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def _earlier_demo(out: Path) -> dict[str, bytes]:
    """A (stand-in) finished demo in ``out``: its marker, summary and a run's checkpoint;
    the files' contents."""
    (out / "plain").mkdir(parents=True)
    files = {MARKER: b"{}", SUMMARY: b"{}", "plain/last.pt": b"the plain run"}
    for name, content in files.items():
        (out / name).write_bytes(content)
    return files


def _contents(out: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in files}


@pytest.mark.skipif(sys.platform == "win32", reason="no folder locks on Windows")
@pytest.mark.parametrize("resume", [False, True])
def test_a_demo_is_refused_while_another_runs_in_its_folder(tmp_path: Path,
                                                           resume: bool) -> None:
    """--overwrite deleted the folder of a demo still training in it (both then wrote
    there); a demo holds its folder's lock throughout, and a second one is refused."""
    out = tmp_path / "demo"
    files = _earlier_demo(out)
    with (_held_by_another_process(out, DEMO_LOCK) as pid,
          pytest.raises(RunInProgressError) as refused):
        run_demo(_smoke(), out, overwrite=not resume, resume=resume)
    assert f"another process (pid {pid}) is running a demo in {out}" in str(refused.value)
    assert _contents(out, files) == files


@pytest.mark.skipif(sys.platform == "win32", reason="no folder locks on Windows")
def test_overwrite_refuses_a_run_folder_that_a_live_run_trains_into(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    files = _earlier_demo(out)
    with (_held_by_another_process(out / "plain", LOCK_FILE) as pid,
          pytest.raises(RunInProgressError) as refused):
        run_demo(_smoke(), out, overwrite=True)
    assert f"another process (pid {pid}) is training into {out / 'plain'}" in str(refused.value)
    assert _contents(out, files) == files


@pytest.mark.skipif(sys.platform == "win32", reason="no folder locks on Windows")
def test_a_demo_holds_its_folder_while_it_runs(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process sees the folder's lock held by the demo while its runs train; the
    lock file goes with the demo."""
    out = tmp_path / "demo"
    train = engine.train
    holders = []

    def training(config: Any, *args: Any, **kwargs: Any) -> Any:
        if not holders:
            code = ("import sys; from pathlib import Path; "
                    "from deformconv._folder_lock import lock_holder; "
                    "print(lock_holder(Path(sys.argv[1]), sys.argv[2]))")
            holders.append(subprocess.run([sys.executable, "-c", code, str(out), DEMO_LOCK],
                                          capture_output=True, text=True, check=True
                                          ).stdout.strip())
        return train(config, *args, **kwargs)

    monkeypatch.setattr(engine, "train", training)
    run_demo(_smoke(equal_time=False), out)
    assert holders == [str(os.getpid())]
    assert not (out / DEMO_LOCK).exists()


def test_a_resume_missing_what_the_equal_time_run_needs_is_refused_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A deleted plain/branch.pt or plain/metrics.jsonl failed the resume with a raw error
    only after the deformable run had trained, and again at every resume."""
    out = tmp_path / "demo"
    _stopped_demo(out, monkeypatch)
    marker = json.loads((out / MARKER).read_text())
    marker["step_ratio"] = 1.5  # an equal-time run longer than the plain one: it branches
    (out / MARKER).write_text(json.dumps(marker))
    plain = out / "plain"
    (plain / "branch.pt").unlink()
    (plain / "metrics.jsonl").unlink()
    deformable = (out / "deformable" / "last.pt").read_bytes()
    capsys.readouterr()
    with pytest.raises(ValueError) as refused:
        run_demo(_smoke(), out, resume=True)
    assert str(refused.value) == (
        f"{plain}/branch.pt and {plain}/metrics.jsonl are missing: the equal-time run "
        "continues the plain run from its branch point; start the demo again with "
        f"--overwrite, or remove the folder {plain} to have the resume retrain the plain run")
    assert "rendering" not in capsys.readouterr().out
    assert (out / "deformable" / "last.pt").read_bytes() == deformable  # nothing trained

    shutil.rmtree(plain)  # as the message says: the resume retrains the plain run
    summary = run_demo(_smoke(), out, resume=True)
    assert summary["runs"]["plain, equal time"]["branched_at"] is not None
    assert summary["runs"]["plain, equal time"]["iterations"] == 6


def test_a_resume_compares_the_device_auto_resolves_to(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--device auto was refused against a saved cpu where auto is the CPU."""
    import torch

    from deformconv.runs.demo import ChangedSettingsError, resumed_demo

    out = tmp_path / "demo"
    out.mkdir()
    state = {"settings": asdict(_smoke()), "device": "cpu", "step_ratio": 1.0,
             "step_seconds": {"plain": 1.0, "deformable": 1.0}}
    (out / MARKER).write_text(json.dumps(state))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resumed_demo(_smoke(device="auto"), out)["device"] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ChangedSettingsError, match=r"device 'cpu' \(now 'auto'\)"):
        resumed_demo(_smoke(device="auto"), out)
