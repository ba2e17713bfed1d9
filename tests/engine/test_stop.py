"""StopSignals and TrainingStopped; the training loop's stop is tested with real signals in
test_processes.py (torchrun) and tests/cli/test_train.py (Ctrl-C)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from deformconv.engine.stop import STOP_SIGNALS, StopSignals, TrainingStopped

needs_main_thread = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers can be installed from the main thread only")


@needs_main_thread
def test_handlers_are_installed_and_restored() -> None:
    before = [signal.getsignal(s) for s in STOP_SIGNALS]
    with StopSignals() as signals:
        assert [signal.getsignal(s) for s in STOP_SIGNALS] == [signals._handle] * 2
    assert [signal.getsignal(s) for s in STOP_SIGNALS] == before


def test_outside_the_main_thread_nothing_is_installed() -> None:
    seen = []

    def enter() -> None:
        before = signal.getsignal(signal.SIGINT)
        with StopSignals():
            seen.append(signal.getsignal(signal.SIGINT) is before)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert seen == [True]


def test_first_signal_requests_a_stop_and_a_second_ctrl_c_stops_at_once(
        capfd: pytest.CaptureFixture) -> None:
    signals = StopSignals()
    signals._handle(signal.SIGTERM, None)
    assert signals.signum == signal.SIGTERM
    assert "SIGTERM received: stopping after this iteration" in capfd.readouterr().err
    signals._handle(signal.SIGTERM, None)  # a repeated SIGTERM: the stop is under way
    assert signals.signum == signal.SIGTERM and capfd.readouterr().err == ""
    with pytest.raises(KeyboardInterrupt):
        signals._handle(signal.SIGINT, None)


def test_quiet_ranks_and_forked_workers(capfd: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    quiet = StopSignals(announce=False)
    quiet._handle(signal.SIGINT, None)
    assert quiet.signum == signal.SIGINT and capfd.readouterr().err == ""

    signals = StopSignals()
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as in a process forked from this one
    signals._handle(signal.SIGINT, None)
    signals._handle(signal.SIGINT, None)  # neither requests a stop nor raises
    assert signals.signum is None and capfd.readouterr().err == ""


def test_training_stopped_says_where_and_pickles() -> None:
    stopped = TrainingStopped(signal.SIGINT, 3, 10, Path("runs/x/last.pt"))
    assert isinstance(stopped, KeyboardInterrupt)
    assert str(stopped) == "stopped by SIGINT after iteration 3/10; saved runs/x/last.pt"
    copy = pickle.loads(pickle.dumps(stopped))
    assert (copy.signum, copy.iteration, copy.total, copy.checkpoint, str(copy)) == (
        stopped.signum, 3, 10, Path("runs/x/last.pt"), str(stopped))
    assert str(TrainingStopped(signal.SIGTERM, 3, 10, None)) == (
        "stopped by SIGTERM after iteration 3/10")


WAITING_FOR_WORKERS = """
import os, signal, threading, time
import torch
from torch.utils.data import DataLoader, Dataset
from deformconv.engine.loader import eval_loader
from deformconv.engine.stop import StopSignals

class Slow(Dataset):
    def __len__(self):
        return 40
    def __getitem__(self, index):
        time.sleep(0.2)
        return torch.zeros(2, 4, 4), 0

with StopSignals(announce=False) as signals:
    batches = iter(eval_loader(Slow(), "classification", 1, num_workers=2))
    next(batches)
    threading.Timer(0.05, os.killpg, (os.getpgrp(), signal.SIGTERM)).start()
    for _ in range(6):  # the main process waits for its workers while the signal arrives
        next(batches)
    del batches  # as a run does when it stops: the loader ends its workers
    print("stop requested by", signal.Signals(signals.signum).name)
"""


def test_data_loading_workers_leave_a_group_signal_to_the_run():
    """A scheduler's SIGTERM reaches every process of the job. torch's workers died of it,
    and their loader, waiting for a batch, raised 'DataLoader worker ... is killed by signal'
    before the run could stop with a checkpoint."""
    done = subprocess.run([sys.executable, "-c", WAITING_FOR_WORKERS], capture_output=True,
                          text=True, timeout=60, check=False, start_new_session=True)
    assert (done.returncode, done.stdout) == (0, "stop requested by SIGTERM\n"), done.stderr


STARTING_WORKERS = """
import os, signal, sys
from torch.utils.data._utils import signal_handling
from deformconv import engine
from deformconv.cli import main

# torch's worker puts in its SIGTERM handler (which dies of the signal), then calls
# worker_init_fn, which has the signal ignored. A scheduler's SIGTERM to the process group
# in between, while the second epoch's worker starts (every epoch starts new workers), is
# sent here by that worker itself right after torch's handler goes in: the window every time.
set_handlers = signal_handling._set_worker_signal_handlers
second_epoch = False

def set_handlers_then_signal_the_group():
    set_handlers()
    if second_epoch:  # as forked from the training process after iteration 4
        os.killpg(os.getpgrp(), signal.SIGTERM)

signal_handling._set_worker_signal_handlers = set_handlers_then_signal_the_group
train = engine.train

def train_noting_the_epoch(*args, **kwargs):
    def hook(done):
        global second_epoch
        second_epoch = done >= 4  # batches of 2 from 8 samples: 4 iterations an epoch
    return train(*args, on_iteration_end=hook, **kwargs)

engine.train = train_noting_the_epoch
sys.exit(main(sys.argv[1:]))
"""


def test_a_group_signal_while_workers_start_stops_the_run_with_a_checkpoint(
        tmp_path: Path) -> None:
    """A group SIGTERM that reached a data-loading worker after torch's SIGTERM handler went
    in but before worker_init_fn had the signal ignored killed the worker: the run crashed
    ('DataLoader worker ... is killed by signal'), exit code 1, no checkpoint. Under torchrun,
    which signals each rank's process group, this happened often. Workers now start with the
    stop signals blocked; the run stops after the iteration it is in."""
    from deformconv.cli import main
    from deformconv.engine import load_checkpoint

    out = tmp_path / "run"
    run = ["train", "--model", "resnet18", "--base-channels", "4", "--image-size", "32",
           "--train-size", "8", "--val-size", "2", "--batch-size", "2", "--iterations", "6",
           "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", STARTING_WORKERS, *run, "--workers", "1"],
                          capture_output=True, text=True, timeout=120, check=False,
                          start_new_session=True, env=env)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert "stopped by SIGTERM after iteration 5/6" in done.stderr
    assert load_checkpoint(out / "last.pt")["iteration"] == 5
    assert main([*run, "--resume", "auto"]) == 0
    assert load_checkpoint(out / "last.pt")["iteration"] == 6


_FAILING_WORKERS = """
import sys, torch
from torch.utils.data import Dataset
sys.path.insert(0, sys.argv[1])
from _engine_toys import TinyClassifier, ToyClassification
from deformconv.engine import TrainConfig, evaluate, train

class Broken(ToyClassification):
    def __getitem__(self, index):
        if index == 5:
            raise ValueError("broken sample 5")
        return super().__getitem__(index)

class Failing(TinyClassifier):
    def forward(self, x):
        raise RuntimeError("forward failed")

kept = []  # the errors, referenced until the interpreter exits (as a CLI's handler may)
config = TrainConfig(task="classification", iterations=8, batch_size=2, num_workers=1,
                     out_dir=sys.argv[2], progress=False, device="cpu")
for run in (lambda: train(config, TinyClassifier(), Broken(16), None),
            lambda: evaluate(Failing(), ToyClassification(8), "classification",
                             batch_size=2, num_workers=1, progress=False)):
    try:
        run()
    except Exception as err:
        kept.append(err)
print([str(err).splitlines()[-1] for err in kept])
"""


def test_a_run_or_evaluation_that_fails_with_workers_lets_the_process_exit(
        tmp_path: Path) -> None:
    """An error left the loader's iterator referenced from its traceback, so its workers,
    which ignore SIGTERM during a run, were only stopped at interpreter exit by a
    ``terminate()`` they ignored: the process hung after printing the error."""
    script = tmp_path / "failing.py"
    script.write_text(_FAILING_WORKERS)
    done = subprocess.run([sys.executable, str(script), str(Path(__file__).parent),
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['ValueError: broken sample 5', 'forward failed']"


def test_a_signal_during_the_ranks_agreement_waits_for_the_next_check(monkeypatch) -> None:
    """Under torchrun a SIGINT that reached a rank while it waited in the stop check's
    all-reduce made it stop alone (its flag was read again after every rank had agreed on
    "no signal"): it waited in the checkpoint's all-gather, the others in the next forward's
    broadcast, for ever. Every rank now returns what they agreed on; the signal counts at the
    next check."""
    from types import SimpleNamespace

    from deformconv.engine import trainer

    signals = StopSignals()

    def signal_arrives_meanwhile(hits):
        signals.signum = signal.SIGINT
        return hits  # the other ranks saw none

    monkeypatch.setattr(trainer, "all_reduce_sum", signal_arrives_meanwhile)
    run = SimpleNamespace(info=SimpleNamespace(distributed=True))
    assert trainer._Run.stop_signal(run, signals) is None
    assert trainer._Run.stop_signal(run, signals) == signal.SIGINT
