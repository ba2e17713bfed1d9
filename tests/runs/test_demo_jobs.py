"""The demo's twins trained side by side in worker processes (``DemoSettings.jobs``)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

import deformconv.runs.demo as demo_module
from deformconv.engine import load_checkpoint
from deformconv.runs import DemoSettings, demo_data, demo_specs, run_demo, set_threads
from deformconv.runs.demo import _Job, _scenes, _train_side_by_side, _Workers


def test_side_by_side_trains_the_same_twins_as_one_after_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    summaries = {}
    for jobs in (1, 2):
        # each run trains on 1 thread (two processes need two threads to share): both ways
        # then compute the same in every bit
        set_threads(jobs)
        summaries[jobs] = run_demo(DemoSettings.smoke(jobs=jobs, progress=False),
                                   tmp_path / f"jobs{jobs}")
    set_threads(1)
    # the scenes the workers read are deleted with their folder
    assert not list(temporary.glob("deformconv-demo-*"))
    assert [summaries[jobs]["machine"]["jobs"] for jobs in (1, 2)] == [1, 2]
    assert [summaries[jobs]["machine"]["train_threads"] for jobs in (1, 2)] == [1, 1]
    for name in ("plain", "deformable"):
        one, two = (summaries[jobs]["runs"][name] for jobs in (1, 2))
        assert two["iterations"] == one["iterations"]
        assert two["metrics"]["miou"] == pytest.approx(one["metrics"]["miou"], rel=1e-6)
        weights = [load_checkpoint(run["checkpoint"])["model"] for run in (one, two)]
        torch.testing.assert_close(weights[1], weights[0])
    side_by_side = summaries[2]
    # the equal-time run continued the plain run's branch point in the same worker
    assert side_by_side["runs"]["plain, equal time"]["branched_at"] is not None
    # the whole demo's CPU time counts the workers' training
    trained = sum(run["cpu_seconds"] for run in side_by_side["runs"].values())
    assert side_by_side["machine"]["cpu_seconds"] > trained


def _job(runs: tuple[str, ...], out: Path) -> _Job:
    settings = DemoSettings.smoke(progress=False)
    _, _, _, classes = demo_data(settings)
    deformable, plain = demo_specs(settings, classes)
    specs = {"plain": plain, "deformable": deformable}
    return _Job(runs, settings, specs, [1.0] * (classes + 1), 1.0, out, {}, threads=1)


def test_a_worker_maps_the_parents_scenes_instead_of_rendering(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job(("plain",), tmp_path)
    _, train_set, val_set, _ = demo_data(job.settings)
    job.scenes = tmp_path / "scenes.pt"
    torch.save({"train": train_set, "val": val_set}, job.scenes)

    def render(settings: DemoSettings) -> None:
        raise AssertionError("a worker with the parent's scenes rendered them again")

    monkeypatch.setattr(demo_module, "demo_data", render)
    mapped_train, mapped_val = _scenes(job)
    for mapped, rendered in ((mapped_train, train_set), (mapped_val, val_set)):
        torch.testing.assert_close(mapped.images, rendered.images)
        torch.testing.assert_close(mapped.targets, rendered.targets)
    assert mapped_train.transforms is not None  # the training augmentation came along


def test_a_worker_error_reaches_the_caller(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="no such run"):
        _train_side_by_side([_job(("no such run",), tmp_path)])


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_worker_that_dies_stops_the_demo_with_an_error(tmp_path: Path) -> None:
    """A worker killed before it returns (by the OOM killer, say) is an error, not a hang."""
    others = {child.pid for child in multiprocessing.active_children()}

    def kill_the_worker() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = [c for c in multiprocessing.active_children() if c.pid not in others]
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    threading.Thread(target=kill_the_worker, daemon=True).start()
    with pytest.raises(RuntimeError, match="a demo worker died \\(exit code -9\\)"):
        _train_side_by_side([_job(("plain",), tmp_path)])


def test_waiting_workers_stop_when_the_parent_fails_before_their_jobs() -> None:
    """The workers start before the parent renders the scenes; an error there stops them
    and deletes their shared folder."""
    others = {child.pid for child in multiprocessing.active_children()}
    with pytest.raises(ValueError, match="rendering failed"), _Workers(2) as workers:
        workers.wait_ready()
        folder = workers.folder
        started = [c for c in multiprocessing.active_children() if c.pid not in others]
        assert len(started) == 2 and folder.is_dir()
        raise ValueError("rendering failed")
    assert not [c for c in multiprocessing.active_children() if c.pid not in others]
    assert not folder.exists()


def test_threads_set_to_gives_the_count_back() -> None:
    from deformconv.runs.timing import threads_set_to

    set_threads(3)
    with threads_set_to(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3


def test_one_thread_is_one_process_of_one_thread() -> None:
    """--threads 1 with the default --jobs 2 trained in 2 processes of 1 thread each: two
    threads in all on a machine the user asked to spare."""
    from deformconv.runs.demo import process_layout

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert process_layout(cpu, 2, 1) == (1, 1)
    assert process_layout(cpu, 2, 2) == (2, 1)  # the default, as the published runs
    assert process_layout(cpu, 2, 5) == (2, 2)
    assert process_layout(cpu, 3, 8) == (2, 4)
    assert process_layout(cpu, 1, 4) == (1, 4)
    assert process_layout(cuda, 2, 4) == (1, 4)
