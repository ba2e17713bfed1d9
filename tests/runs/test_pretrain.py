"""deformconv.runs.pretrain: trained once per settings, cached, one trainer at a time."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from deformconv.runs import (
    PretrainSettings,
    load_pretrained,
    pretrained_backbone,
    pretraining_seconds,
    set_threads,
)

TINY = PretrainSettings(base_channels=4, image_size=32, train_size=8, val_size=4,
                        iterations=2, batch_size=2)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    set_threads(1)  # tiny models: more threads only spin against the other tests' (restored)


def test_trained_once_then_read_back(tmp_path):
    first = pretrained_backbone(TINY, tmp_path)
    again = pretrained_backbone(TINY, tmp_path)
    assert not first["cached"] and again["cached"]
    assert first["checkpoint"] == again["checkpoint"] and first["iterations"] == 2
    # the weights depend on the threads, which the key leaves out: the record says them
    assert first["threads"] == again["threads"] == 1
    assert 0.0 <= first["metrics"]["top1"] <= 1.0
    assert "conv1.weight" in load_pretrained(first["checkpoint"])
    assert [p.name for p in tmp_path.iterdir()] == [f"pretrain-{TINY.key()}"]  # no lock left


def test_every_setting_is_in_the_key():
    assert TINY.key() != PretrainSettings(**{**TINY.__dict__, "iterations": 3}).key()
    assert TINY.key() == PretrainSettings(**TINY.__dict__).key()


def test_waits_while_another_live_process_trains(tmp_path):
    """A lock held by a live process: no second training; its result is read once there."""
    lock = tmp_path / f"pretrain-{TINY.key()}.lock"
    lock.write_text(str(os.getppid()))  # alive for as long as this test runs
    trained = pretrained_backbone(TINY, tmp_path / "elsewhere")  # the other process's run
    got = {}
    waiter = threading.Thread(target=lambda: got.update(
        pretrained_backbone(TINY, tmp_path, poll_seconds=0.05)))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive() and not got  # waiting, not training
    (tmp_path / "elsewhere" / f"pretrain-{TINY.key()}").rename(
        tmp_path / f"pretrain-{TINY.key()}")
    lock.unlink()
    waiter.join(timeout=30)
    assert got["cached"] and got["metrics"] == trained["metrics"]


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / f"pretrain-{TINY.key()}.lock").write_text(dead)
    info = pretrained_backbone(TINY, tmp_path, poll_seconds=0.01)
    assert not info["cached"]
    assert not (tmp_path / f"pretrain-{TINY.key()}.lock").exists()


def test_stopped_pretraining_continues(tmp_path, capfd):
    """A run stopped in <folder>.partial resumes there instead of starting over (here it
    had reached its last iteration: no step is taken again)."""
    from deformconv.runs.pretrain import _pretrain

    partial = tmp_path / f"pretrain-{TINY.key()}.partial"
    _pretrain(TINY, partial, "cpu", False)
    capfd.readouterr()
    info = pretrained_backbone(TINY, tmp_path)
    assert not info["cached"] and not partial.exists()
    assert info["iterations"] == TINY.iterations
    assert f"continuing from {partial / 'last.pt'} at iteration 2/2" in capfd.readouterr().out


def test_pretraining_seconds_estimates_without_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert pretraining_seconds(TINY, time.process_time) > 0
    assert not list(tmp_path.iterdir())
