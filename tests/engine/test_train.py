"""The train loop end to end on tiny models: learning, logging, checkpoints, exact resume."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import signal
import sys
import time

import pytest
import torch
from _engine_toys import (
    TinyClassifier,
    TinyDetector,
    TinySegmenter,
    ToyClassification,
    ToyDetection,
    ToySegmentation,
    file_size_limit,
    state_equal,
)

from deformconv.engine import (
    CheckpointError,
    DistInfo,
    RunInProgressError,
    SeededSamples,
    TrainConfig,
    TrainingStopped,
    evaluate,
    load_checkpoint,
    lr_factor,
    read_metrics,
    train,
)
from deformconv.engine.run_lock import out_dir_lock


def _config(tmp_path, name: str = "run", **kw) -> TrainConfig:
    base = {"task": "classification", "iterations": 10, "batch_size": 4, "lr": 0.1,
            "warmup_iters": 2, "schedule": "cosine", "checkpoint_every": 3, "eval_every": 4,
            "log_every": 1, "progress": False, "out_dir": str(tmp_path / name)}
    return TrainConfig(**{**base, **kw})


class _Stop(Exception):
    pass


def _stop_at(k: int):
    def hook(iteration: int) -> None:
        if iteration == k:
            raise _Stop

    return hook


def test_classification_learns_and_writes_outputs(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier()
    data, val = ToyClassification(size=48, seed=1), ToyClassification(size=24, seed=2)
    config = _config(tmp_path, iterations=60, lr=0.2, eval_every=20, checkpoint_every=20)
    extra = {"model": "tiny", "kwargs": {"num_classes": 3}}
    result = train(config, model, data, val, extra=extra)

    assert result.iteration == 60 and result.metrics["num_images"] == 24
    assert result.metrics["top1"] > 0.8  # chance is 1/3
    assert result.best_metric == max(
        r["top1"] for r in read_metrics(result.out_dir / "metrics.jsonl") if r["split"] == "val")
    records = read_metrics(result.out_dir / "metrics.jsonl")
    train_rows = [r for r in records if r["split"] == "train"]
    assert [r["iter"] for r in train_rows] == list(range(1, 61))
    assert {"loss", "lr", "images_per_s", "epoch"} <= train_rows[0].keys()
    assert sum(r["loss"] for r in train_rows[-10:]) < sum(r["loss"] for r in train_rows[:10])
    assert train_rows[0]["lr"] == pytest.approx(0.2 / 3)  # warm-up starts at lr * 1/3
    assert [r["iter"] for r in records if r["split"] == "val"] == [20, 40, 60]
    last = load_checkpoint(result.last_checkpoint)
    assert last["iteration"] == 60 and last["epoch"] == 5  # 12 iterations per epoch
    assert state_equal(last["model"], model.state_dict())
    assert last["extra"] == extra
    saved = json.loads((result.out_dir / "config.json").read_text())
    assert saved["extra"] == extra and TrainConfig.from_dict(saved["config"]) == config
    assert load_checkpoint(result.best_checkpoint)["best_metric"] == result.best_metric


def test_train_times_leave_out_validation_and_add_up_over_a_resume(tmp_path, monkeypatch):
    """The training steps' wall-clock and CPU time (the CPU time for the demo's curves by
    training time: a busy machine sways wall-clock time by tens of percent, and unevenly
    between runs trained one after the other) leave out validation, are saved with the
    checkpoint and go on from there in a resume."""
    from deformconv.engine import trainer

    def busy_evaluate(*args, **kwargs):  # 0.25 s of CPU, so of wall-clock time too
        end = time.process_time() + 0.25
        while time.process_time() < end:
            pass
        return evaluate(*args, **kwargs)

    clocks = {"train_seconds": time.perf_counter, "train_cpu_seconds": time.process_time}

    def now() -> dict[str, float]:
        return {key: clock() for key, clock in clocks.items()}

    monkeypatch.setattr(trainer, "evaluate", busy_evaluate)
    data, val = ToyClassification(size=20), ToyClassification(size=4, seed=3)
    start = now()
    with pytest.raises(_Stop):  # validation at 1..4 (1 s); last.pt at 3
        train(_config(tmp_path, iterations=6, eval_every=1), TinyClassifier(), data, val,
              on_iteration_end=_stop_at(4))
    spent = {key: value - start[key] for key, value in now().items()}
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    start = now()
    result = train(_config(tmp_path, iterations=6, eval_every=0, resume="auto"),
                   TinyClassifier(), data, val)
    resumed = {key: value - start[key] for key, value in now().items()}
    records = read_metrics(result.out_dir / "metrics.jsonl")
    assert {r["split"] for r in records} == {"train", "val"}
    for key in clocks:
        assert 0 < saved[key] < spent[key] - 0.75
        total = getattr(result, key)
        assert saved[key] < total < saved[key] + resumed[key]
        logged = [r[key] for r in records]
        assert logged == sorted(logged) and logged[-1] == pytest.approx(total)


def test_a_resume_of_a_checkpoint_without_cpu_time_says_it_is_unknown(tmp_path):
    """A checkpoint written before the CPU time was kept: its wall-clock seconds stood in
    for CPU seconds, a mixed figure the demo's "train CPU s" showed as CPU time."""
    data = ToyClassification(size=20)
    train(_config(tmp_path, iterations=4, eval_every=0), TinyClassifier(), data)
    path = tmp_path / "run" / "last.pt"
    state = load_checkpoint(path)
    del state["train_cpu_seconds"]
    torch.save(state, path)
    result = train(_config(tmp_path, iterations=8, eval_every=0, resume="auto"),
                   TinyClassifier(), data)
    assert result.train_cpu_seconds is None and result.train_seconds > 0
    after = [r for r in read_metrics(result.out_dir / "metrics.jsonl") if r["iter"] > 4]
    assert after and all(r["train_cpu_seconds"] is None for r in after)
    assert load_checkpoint(path)["train_cpu_seconds"] is None


def test_a_run_started_from_another_runs_checkpoint_says_it_continues_it(tmp_path, capsys):
    """The demo's equal-time run, new, starts from the plain run's checkpoint: the trainer
    printed "resumed from .../plain/branch.pt", which a new user read as a leftover run
    being reused. Both a resume and such a start continue the checkpoint's run."""
    data = ToyClassification(size=20)
    train(_config(tmp_path, iterations=4, eval_every=0), TinyClassifier(), data)
    capsys.readouterr()
    first = tmp_path / "run" / "last.pt"
    train(_config(tmp_path, "longer", iterations=8, eval_every=0, resume=str(first)),
          TinyClassifier(), data)
    out = capsys.readouterr().out
    assert f"continuing from {first} at iteration 4/8" in out and "resumed" not in out


def test_epochs_set_the_length(tmp_path):
    config = _config(tmp_path, iterations=None, epochs=2, eval_every=0, checkpoint_every=0)
    result = train(config, TinyClassifier(), ToyClassification(size=20))
    assert result.iteration == 10  # 2 epochs x (20 // 4) batches


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    data, val = ToyClassification(size=20), ToyClassification(size=8, seed=3)

    torch.manual_seed(0)
    full_model = TinyClassifier()
    train(_config(tmp_path, "full"), full_model, data, val)

    torch.manual_seed(0)
    with pytest.raises(_Stop):  # dies after iteration 8; last.pt is from iteration 6
        train(_config(tmp_path, "cut"), TinyClassifier(), data, val, on_iteration_end=_stop_at(8))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["iteration"] == 6

    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    resumed_model = TinyClassifier()
    result = train(_config(tmp_path, "cut", resume="auto"), resumed_model, data, val)

    assert state_equal(resumed_model.state_dict(), full_model.state_dict())
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    cut = load_checkpoint(result.last_checkpoint)
    assert torch.equal(full["optimizer"]["state"][0]["momentum_buffer"],
                       cut["optimizer"]["state"][0]["momentum_buffer"])
    assert cut["best_metric"] == full["best_metric"]
    # the log reads as one run: lines written after the checkpoint were dropped on resume
    losses = [[(r["iter"], r["loss"]) for r in read_metrics(tmp_path / name / "metrics.jsonl")
               if r["split"] == "train"] for name in ("full", "cut")]
    assert losses[0] == losses[1]


def test_a_resume_at_another_thread_count_says_it_is_not_bit_identical(tmp_path, capsys):
    """Checkpoints record torch's thread count; a resume at another count says the run
    continues at N threads where it trained at M (it used to say nothing, and the CPU
    kernels' sums split by thread count). Same count, or a checkpoint without it: no note."""
    data = ToyClassification(size=20)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        train(_config(tmp_path, iterations=3, eval_every=0), TinyClassifier(), data)
        last = tmp_path / "run" / "last.pt"
        assert load_checkpoint(last)["threads"] == 1
        capsys.readouterr()
        torch.set_num_threads(2)
        train(_config(tmp_path, iterations=4, eval_every=0, resume="auto"), TinyClassifier(),
              data)
        note = [line for line in capsys.readouterr().out.splitlines() if "threads" in line]
        assert note == ["note: the run continues at 2 threads where it trained at 1, so it "
                        "will not be bit-identical to an uninterrupted run"]
        assert load_checkpoint(last)["threads"] == 2
        train(_config(tmp_path, iterations=5, eval_every=0, resume="auto"), TinyClassifier(),
              data)
        old = {k: v for k, v in load_checkpoint(last).items() if k != "threads"}
        torch.save(old, last)  # a checkpoint from before the field
        torch.set_num_threads(1)
        capsys.readouterr()
        train(_config(tmp_path, iterations=6, eval_every=0, resume="auto"), TinyClassifier(),
              data)
        assert "threads" not in capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)


def test_best_checkpoint_belongs_to_the_run(tmp_path):
    """best.pt saved after the checkpoint a run resumes from (in the part it retrains) is
    deleted, and the resumed run ends with the straight run's best.pt; it used to keep the
    abandoned model, and TrainResult.best_checkpoint was None after any resume without a new
    best. A new run into a folder deletes another run's best.pt (it used to stay)."""
    data, val = ToyClassification(size=20), ToyClassification(size=8, seed=3)
    torch.manual_seed(0)
    straight = train(_config(tmp_path, "full"), TinyClassifier(), data, val)
    torch.manual_seed(0)
    with pytest.raises(_Stop):
        train(_config(tmp_path, "cut"), TinyClassifier(), data, val, on_iteration_end=_stop_at(8))
    abandoned = load_checkpoint(tmp_path / "cut" / "last.pt")  # iteration 6
    torch.save({**abandoned, "iteration": 8, "best_metric": 2.0}, tmp_path / "cut" / "best.pt")
    resumed = train(_config(tmp_path, "cut", resume="auto"), TinyClassifier(), data, val)
    assert resumed.best_checkpoint == tmp_path / "cut" / "best.pt"
    assert resumed.best_metric == straight.best_metric
    best = load_checkpoint(resumed.best_checkpoint)
    assert best["iteration"] == load_checkpoint(straight.best_checkpoint)["iteration"]
    assert best["best_metric"] == straight.best_metric
    # a resume that finds no better value keeps pointing at the run's best.pt
    again = train(_config(tmp_path, "cut", iterations=12, eval_every=0, resume="auto"),
                  TinyClassifier(), data, val)
    assert again.best_checkpoint == tmp_path / "cut" / "best.pt"
    # an unreadable best.pt counts as stale
    (tmp_path / "cut" / "best.pt").write_bytes(b"not a checkpoint")
    again = train(_config(tmp_path, "cut", iterations=14, eval_every=0, resume="auto"),
                  TinyClassifier(), data, val)
    assert again.best_checkpoint == tmp_path / "cut" / "best.pt"  # written at the end
    assert load_checkpoint(again.best_checkpoint)["iteration"] == 14
    # a new run without validation: the old run's best.pt is not this one's
    fresh = train(_config(tmp_path, "cut", iterations=2), TinyClassifier(), data)
    assert fresh.best_checkpoint is None and not (tmp_path / "cut" / "best.pt").exists()


def test_resume_errors_name_the_checkpoint_and_what_changed(tmp_path):
    data = ToyClassification(size=20)
    train(_config(tmp_path, iterations=3, eval_every=0), TinyClassifier(), data)
    last = tmp_path / "run" / "last.pt"
    with pytest.raises(ValueError, match=rf"cannot resume from {last}: its optimizer has 2 "
                                         r"parameter groups, this run's 3 \(lr_mults"):
        train(_config(tmp_path, iterations=6, lr_mults={"head.": 0.1}, resume="auto"),
              TinyClassifier(), data)
    with pytest.raises(ValueError, match=rf"cannot resume from {last}: its weights do not fit"):
        train(_config(tmp_path, iterations=6, resume="auto"), TinyClassifier(num_classes=5),
              data)


def test_resume_takes_the_configs_learning_rate_momentum_and_weight_decay(tmp_path):
    """A resumed run with a new lr (a common move: continue at a lower rate) uses it from
    its first step, scaled by the schedule, offset group included; it used to keep the
    checkpoint's."""
    data = ToyClassification(size=20)
    base = {"eval_every": 0, "offset_lr_mult": 0.5}
    train(_config(tmp_path, **base, iterations=4), TinyClassifier(), data)
    config = _config(tmp_path, **base, iterations=8, lr=0.02, momentum=0.5, weight_decay=1e-3,
                     resume="auto")
    train(config, TinyClassifier(), data)
    logged = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
              if r["split"] == "train" and r["iter"] > 4]
    assert logged == [0.02 * lr_factor(it, config, 8) for it in range(4, 8)]
    groups = load_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]["param_groups"]
    assert [(g["initial_lr"], g["momentum"], g["weight_decay"]) for g in groups] == [
        (0.02, 0.5, 1e-3), (0.01, 0.5, 1e-3)]  # the offset conv's group at half the rate


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path):
    """While another process holds the folder's lock (here: a lock taken on the file as it
    would), a run into it is refused with the holder's pid; the folder is free again
    afterwards. Within one process the lock is re-entrant (the command holds it too)."""
    fcntl = pytest.importorskip("fcntl")
    data = ToyClassification(size=20)
    config = _config(tmp_path, iterations=2, eval_every=0)
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / ".lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4242\n")
        holder.flush()
        with pytest.raises(RunInProgressError,
                           match=r"another process \(pid 4242\) is training into"):
            train(config, TinyClassifier(), data)
        assert not (tmp_path / "run" / "last.pt").exists()
    with out_dir_lock(tmp_path / "run"):
        assert train(config, TinyClassifier(), data).iteration == 2


def test_a_run_removes_the_temporary_files_a_killed_checkpoint_write_left(tmp_path):
    """A run killed while writing last.pt or best.pt (or the command line's
    final_metrics.json) left hidden temporary files of their size that no run removed, not
    even one told to overwrite the folder; a run removes them
    holding the folder's lock (not while another process, which may be writing one, holds
    it), and nothing else."""
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "run"
    out.mkdir()
    stale = [".last.pt.k1ll3d_a.tmp", ".best.pt.0123abcd.tmp", ".metrics.jsonl.abcdefgh.tmp",
             ".final_metrics.json.0a1b2c3d.tmp"]
    kept = [".last.pt.mine.tmp", "notes.tmp"]
    for name in stale + kept:
        (out / name).write_bytes(b"x" * 1000)
    config = _config(tmp_path, iterations=2, eval_every=0)
    with open(out / ".lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunInProgressError):
            train(config, TinyClassifier(), ToyClassification(size=8))
    assert all((out / name).exists() for name in stale)
    train(config, TinyClassifier(), ToyClassification(size=8))
    left = {p.name for p in out.iterdir()}
    assert not left & set(stale) and set(kept) <= left and "last.pt" in left


def test_a_folder_where_no_file_can_be_created_is_refused_before_anything(tmp_path,
                                                                           monkeypatch):
    """A resume trained until its first checkpoint before failing (Permission denied on
    .last.pt.*.tmp), having rewritten config.json; it now stops before on_start, naming the
    folder. (Root ignores a folder's mode: creating files there is made to fail as it does.)"""
    import tempfile
    from pathlib import Path

    out = tmp_path / "run"
    train(_config(tmp_path, iterations=2), TinyClassifier(), ToyClassification(size=8))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    mkstemp = tempfile.mkstemp

    def denied_in_out(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == out:
            raise PermissionError(13, "Permission denied", str(out / ".x.tmp"))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", denied_in_out)
    calls = []
    with pytest.raises(PermissionError, match=rf"cannot create files in {out} \(to write "
                                              r"last.pt\): Permission denied; make the folder"):
        train(_config(tmp_path, iterations=4, resume="auto"), TinyClassifier(),
              ToyClassification(size=8), on_iteration_end=calls.append,
              on_start=lambda: calls.append("on_start"))
    assert calls == []
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_full_disk_is_not_called_a_permission_problem(tmp_path, monkeypatch):
    """check_writable turned any OSError (no space left) into "make the folder writable"."""
    import errno
    import tempfile

    def full(*args, dir, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", f"{dir}/.last.pt.x1y2z3w4.tmp")

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(OSError) as raised:
        train(_config(tmp_path, iterations=2), TinyClassifier(), ToyClassification(size=8))
    assert raised.value.errno == errno.ENOSPC and not isinstance(raised.value, PermissionError)
    # the file meant, not the temporary one ("cannot write .../.last.pt.x1y2z3w4.tmp")
    assert raised.value.filename == str(tmp_path / "run" / "last.pt")


def test_on_start_runs_after_the_checks_under_the_lock(tmp_path):
    """The folder and its lock are taken once the run's checks passed (a run refused for a
    batch larger than its data used to leave a folder holding only .lock); ``on_start`` runs
    there, holding the lock, before anything is written, and raising stops the run."""
    fcntl = pytest.importorskip("fcntl")
    data = ToyClassification(size=20)
    out = tmp_path / "run"
    calls = []
    with pytest.raises(ValueError, match="fewer than one batch of batch_size=40"):
        train(_config(tmp_path, batch_size=40), TinyClassifier(), data,
              on_start=lambda: calls.append("refused run"))
    assert not out.exists() and calls == []

    def seen() -> None:
        calls.append(sorted(p.name for p in out.iterdir()))
        # held: a lock on another open file description fails, as another process's would
        with open(out / ".lock") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)

    assert train(_config(tmp_path, iterations=2, eval_every=0), TinyClassifier(), data,
                 on_start=seen).iteration == 2
    assert calls == [[".lock"]]

    def refuse() -> None:
        raise _Stop

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(_Stop):
        train(_config(tmp_path, iterations=2, eval_every=0), TinyClassifier(), data,
              on_start=refuse)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # a folder created for the run goes with it (it was left holding .lock)
    with pytest.raises(_Stop):
        train(_config(tmp_path, "new", iterations=2, eval_every=0), TinyClassifier(), data,
              on_start=refuse)
    assert not (tmp_path / "new").exists()


class _Unreadable(ToyClassification):
    def __getitem__(self, index):
        raise AssertionError("the data was read")


def test_class_weights_not_one_per_class_are_refused_before_the_folder(tmp_path):
    """Refused at the first step, they left a folder holding .lock and an empty
    metrics.jsonl; against a model's num_classes now before anything else, for detection
    too."""
    model = TinyClassifier()
    model.num_classes = 3
    with pytest.raises(ValueError, match=re.escape(
            "class_weights must hold one weight per class of the model's 3 outputs, got "
            "shape (2,)")):
        train(_config(tmp_path, class_weights=[1.0, 2.0]), model, _Unreadable(size=8))
    with pytest.raises(ValueError, match="class_weights are for classification and "
                                         "segmentation"):
        train(_config(tmp_path, task="detection", class_weights=[1.0, 2.0]), TinyDetector(),
              ToyDetection(size=4))
    assert not (tmp_path / "run").exists()


class _Broken(TinyClassifier):
    def forward(self, x):
        raise RuntimeError("cannot run on this batch")


def test_a_new_run_failing_in_its_first_step_leaves_no_folder(tmp_path):
    """It left the folder it created holding .lock and an empty metrics.jsonl (class
    weights of a model without num_classes, BatchNorm on a batch of one 1x1 map); a folder
    that existed is left, and a run failing later keeps its log."""
    data = ToyClassification(size=8)
    with pytest.raises(ValueError, match="class_weights must hold one weight per class"):
        train(_config(tmp_path, "new/run", class_weights=[1.0, 2.0]), TinyClassifier(), data)
    with pytest.raises(RuntimeError, match="cannot run on this batch"):
        train(_config(tmp_path, "new/run"), _Broken(), data)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    with pytest.raises(RuntimeError, match="cannot run on this batch"):
        train(_config(tmp_path, "mine"), _Broken(), data)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "kept"
    assert not (tmp_path / "mine" / "metrics.jsonl").exists()
    with pytest.raises(_Stop):
        train(_config(tmp_path, "later", checkpoint_every=0, eval_every=0), TinyClassifier(),
              data, on_iteration_end=_stop_at(2))
    assert [r["iter"] for r in read_metrics(tmp_path / "later" / "metrics.jsonl")] == [1, 2]


def test_on_finish_gets_the_result_under_the_lock(tmp_path):
    """``on_finish`` runs once the final checkpoint is written, holding the lock, so that a
    summary written there (the command line's final_metrics.json) has no other run come
    between; it raising raises from train."""
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "run"
    results = []

    def finished(result) -> None:
        results.append((result.iteration, (out / "last.pt").is_file()))
        with open(out / ".lock") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)

    config = _config(tmp_path, iterations=2, eval_every=0)
    result = train(config, TinyClassifier(), ToyClassification(size=8), on_finish=finished)
    assert results == [(2, True)] and result.iteration == 2

    def fail(result) -> None:
        raise _Stop

    with pytest.raises(_Stop):
        train(_config(tmp_path, "other", iterations=2, eval_every=0), TinyClassifier(),
              ToyClassification(size=8), on_finish=fail)


def test_resume_refuses_changed_data_order_and_bad_files(tmp_path):
    data = ToyClassification(size=20)
    train(_config(tmp_path, iterations=3, eval_every=0), TinyClassifier(), data)
    with pytest.raises(ValueError, match="batch_size: checkpoint 4 vs now 2"):
        train(_config(tmp_path, iterations=6, batch_size=2, resume="auto"), TinyClassifier(),
              data)
    with pytest.raises(ValueError, match="optimizer: checkpoint 'sgd' vs now 'adamw'"):
        train(_config(tmp_path, iterations=6, optimizer="adamw", resume="auto"),
              TinyClassifier(), data)
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="it is at iteration 3, beyond this run's 2"):
        train(_config(tmp_path, iterations=2, resume="auto"), model, data)
    # the refused resume left the caller's model alone (it loaded the checkpoint's weights)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match=r"could not read checkpoint .*bad\.pt"):
        train(_config(tmp_path, resume=str(bad)), TinyClassifier(), data)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        train(_config(tmp_path, resume=str(tmp_path / "missing.pt")), TinyClassifier(), data)


@pytest.mark.parametrize(("field", "value"), [("rng", []), ("iteration", 2.0)])
def test_a_resume_of_a_malformed_checkpoint_is_refused_naming_it(tmp_path, field, value):
    """It failed in the trainer: IndexError (rng []) or a TypeError in the data order's
    seeding (iteration 2.0)."""
    data = ToyClassification(size=8)
    train(_config(tmp_path, iterations=2, eval_every=0), TinyClassifier(), data)
    last = tmp_path / "run" / "last.pt"
    torch.save({**torch.load(last, weights_only=True), field: value}, last)
    with pytest.raises(CheckpointError, match=rf"checkpoint .*last\.pt is malformed: {field}"):
        train(_config(tmp_path, iterations=4, resume="auto"), TinyClassifier(), data)


def test_segmentation_trains_and_evaluates(tmp_path):
    torch.manual_seed(0)
    model, data = TinySegmenter(), ToySegmentation(size=16)
    before = evaluate(model, data, "segmentation", batch_size=8)["miou"]
    config = _config(tmp_path, task="segmentation", iterations=40, lr=0.5, eval_every=0)
    result = train(config, model, data, data)
    assert set(result.metrics) == {"miou", "iou", "pixel_acc", "num_pixels", "num_images"}
    assert result.metrics["num_pixels"] == 16 * 7 * 8  # first row of each mask is 255
    assert len(result.metrics["iou"]) == 3
    assert result.metrics["miou"] > before + 0.1


def test_detection_trains_and_reports_coco_metrics(tmp_path):
    torch.manual_seed(0)
    config = _config(tmp_path, task="detection", iterations=6, batch_size=2, lr=0.05,
                     eval_every=0, grad_clip_norm=5.0)
    result = train(config, TinyDetector(), ToyDetection(size=8), ToyDetection(size=4, seed=1))
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= result.metrics.keys()
    assert all(0.0 <= result.metrics[k] <= 1.0 for k in ("AP", "AP50", "AP75"))
    train_rows = [r for r in read_metrics(result.out_dir / "metrics.jsonl")
                  if r["split"] == "train"]
    assert {"loss_box", "loss_cls", "grad_norm"} <= train_rows[-1].keys()
    assert train_rows[-1]["loss"] == pytest.approx(
        train_rows[-1]["loss_box"] + train_rows[-1]["loss_cls"], rel=1e-5)


def test_bf16_autocast_and_clipping(tmp_path):
    model = TinyClassifier()
    config = _config(tmp_path, iterations=4, bf16=True, grad_clip_norm=0.01, eval_every=0)
    result = train(config, model, ToyClassification(size=16), ToyClassification(size=8))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    rows = [r for r in read_metrics(result.out_dir / "metrics.jsonl") if r["split"] == "train"]
    assert rows[0]["grad_norm"] > 0.01  # the norm before clipping is what gets logged
    assert 0.0 <= result.metrics["top1"] <= 1.0


def test_non_finite_loss_stops_with_iteration(tmp_path):
    """The iteration named is the one whose loss was not finite, counted as the log counts
    them (it named the one before: iteration 5 after the log's finite iteration 5)."""
    model = TinyClassifier()
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss is nan at iteration 1 "):
        train(_config(tmp_path), model, ToyClassification(size=8))


def test_a_diverged_run_logs_the_losses_before_it(tmp_path):
    """Between two train lines the losses were lost: a run diverging at iteration 3 with
    log_every=10 left an empty metrics.jsonl."""
    model = TinyClassifier()

    def poison(iteration: int) -> None:
        if iteration == 3:
            with torch.no_grad():
                model.head.bias.fill_(float("nan"))

    with pytest.raises(FloatingPointError, match="loss is nan at iteration 4 "):
        train(_config(tmp_path, log_every=10, eval_every=0, checkpoint_every=0), model,
              ToyClassification(size=16), on_iteration_end=poison)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [(r["split"], r["iter"]) for r in records] == [("train", 3)]
    assert math.isfinite(records[0]["loss"])


def test_tensorboard_optional(tmp_path, capsys):
    result = train(_config(tmp_path, iterations=2, tensorboard=True, eval_every=0),
                   TinyClassifier(), ToyClassification(size=8))
    if importlib.util.find_spec("tensorboard") is None:
        assert "TensorBoard logging is off" in capsys.readouterr().err
        assert not (result.out_dir / "tensorboard").exists()
    else:
        assert any((result.out_dir / "tensorboard").iterdir())
    assert not math.isnan(read_metrics(result.out_dir / "metrics.jsonl")[-1]["loss"])


def test_evaluate_matches_a_direct_computation_and_restores_mode():
    model, data = TinyClassifier().train(), ToyClassification(size=7)
    result = evaluate(model, data, "classification", batch_size=3, device="auto")
    assert model.training and result["num_images"] == 7
    model.eval()
    samples = SeededSamples(data, seed=0, epoch=0)  # what the eval loader reads
    with torch.no_grad():
        correct = sum(int(model(samples[i][0][None].to(next(model.parameters()).device))
                          .argmax().cpu() == samples[i][1]) for i in range(7))
    assert result["top1"] == correct / 7
    low = evaluate(model, data, "classification", batch_size=3, device="auto", bf16=True)
    assert low["num_images"] == 7 and 0.0 <= low["top1"] <= 1.0


@pytest.mark.parametrize("rank", [0, 1])
def test_evaluate_checks_for_a_stop_as_often_on_every_rank(rank):
    """7 samples on 2 ranks in batches of 1: rank 0 has 4 batches, rank 1 has 3, and checks
    once more after them, so that a collective in the check pairs up with rank 0's."""
    checks = []
    evaluate(TinyClassifier(), ToyClassification(size=7), "classification", batch_size=1,
             dist_info=DistInfo(rank=rank, world_size=2), stop_check=lambda: checks.append(1))
    assert len(checks) == 4


def test_run_settings_that_used_to_leak_or_mislead(tmp_path):
    """Integer class weights failed inside cross_entropy ('expected scalar type Float but
    found Long'); the logged lr was the first parameter group's (here the conv's, at
    lr_mults' 0.5); deterministic=True stayed on after the run."""
    data = ToyClassification(size=20)
    config = _config(tmp_path, iterations=4, eval_every=0, class_weights=[1, 2, 1],
                     lr_mults={"conv.": 0.5}, deterministic=True)
    before = torch.are_deterministic_algorithms_enabled()
    train(config, TinyClassifier(), data)
    assert torch.are_deterministic_algorithms_enabled() == before
    logged = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
              if r["split"] == "train"]
    assert logged == [0.1 * lr_factor(it, config, 4) for it in range(4)]


def test_resuming_a_finished_run_logs_nothing_twice(tmp_path):
    """A requeued job resumes its finished run: it used to validate and log iteration 8's
    val line a second time."""
    data, val = ToyClassification(size=20), ToyClassification(size=8, seed=3)
    config = _config(tmp_path, iterations=8, eval_every=4, log_every=4)
    first = train(config, TinyClassifier(), data, val)
    again = train(_config(tmp_path, iterations=8, eval_every=4, log_every=4, resume="auto"),
                  TinyClassifier(), data, val)
    assert again.metrics == first.metrics
    lines = [(r["split"], r["iter"]) for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert lines == [("train", 4), ("val", 4), ("train", 8), ("val", 8)]
    # a stopped run shortened to its checkpoint's iteration has not finished: it validates
    with pytest.raises(_Stop):
        train(_config(tmp_path, "cut", iterations=10, eval_every=4), TinyClassifier(), data,
              val, on_iteration_end=_stop_at(7))  # last.pt at 6
    train(_config(tmp_path, "cut", iterations=6, eval_every=4, resume="auto"),
          TinyClassifier(), data, val)
    records = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["iter"] for r in records if r["split"] == "val"] == [4, 6]
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["config"]["iterations"] == 6


def test_resuming_the_final_validations_best_checkpoint_logs_nothing_twice(tmp_path):
    """best.pt written by the final validation was saved unfinished: resuming it validated
    and logged the last iteration's val line a second time, where its last.pt (the same
    state) did nothing. A best.pt from the middle of a run still continues training."""
    data, val = ToyClassification(size=20), ToyClassification(size=8, seed=3)
    folder = tmp_path / "run"
    config = {"iterations": 6, "eval_every": 0, "log_every": 3}
    first = train(_config(tmp_path, **config), TinyClassifier(), data, val)
    assert load_checkpoint(folder / "best.pt")["finished"] is True
    again = train(_config(tmp_path, **config, resume=str(folder / "best.pt")), TinyClassifier(),
                  data, val)
    assert again.metrics == first.metrics and again.best_checkpoint == folder / "best.pt"
    (folder / "last.pt").unlink()  # written again, as the run's final checkpoint
    train(_config(tmp_path, **config, resume=str(folder / "best.pt")), TinyClassifier(),
          data, val)
    assert load_checkpoint(folder / "last.pt")["finished"] is True
    lines = [(r["split"], r["iter"]) for r in read_metrics(folder / "metrics.jsonl")]
    assert lines == [("train", 3), ("train", 6), ("val", 6)]
    # a mid-run best.pt (iteration 4; last.pt at 6) continues training from there
    with pytest.raises(_Stop):
        train(_config(tmp_path, "mid", iterations=8, eval_every=4), TinyClassifier(), data,
              val, on_iteration_end=_stop_at(6))
    assert load_checkpoint(tmp_path / "mid" / "best.pt")["finished"] is False
    resumed = train(_config(tmp_path, "mid", iterations=8, eval_every=4,
                            resume=str(tmp_path / "mid" / "best.pt")), TinyClassifier(), data,
                    val)
    assert resumed.iteration == 8
    records = read_metrics(tmp_path / "mid" / "metrics.jsonl")
    assert [r["iter"] for r in records if r["split"] == "val"] == [4, 8]
    assert load_checkpoint(tmp_path / "mid" / "last.pt")["iteration"] == 8


def _request_stop() -> None:
    """What Ctrl-C does during a run: the run's SIGINT handler records a stop request."""
    signal.getsignal(signal.SIGINT)(signal.SIGINT, None)


class _StopOnRead(torch.utils.data.Dataset):
    """``dataset`` whose sample ``at`` requests a stop when read; records what was read."""

    def __init__(self, dataset, at: int) -> None:
        self.dataset, self.at, self.read = dataset, at, []

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        self.read.append(index)
        if index == self.at:
            _request_stop()
        return self.dataset[index]


def test_a_stop_in_the_final_validation_ends_it_and_a_resume_validates(tmp_path):
    """Ctrl-C in the final validation (or the last iteration) was announced as a stop, then
    the whole validation ran and the run finished. It now ends the validation at the next
    batch, unlogged, with last.pt of the last iteration, and a resume validates."""
    data, val = ToyClassification(size=20), ToyClassification(size=8, seed=3)
    config = {"iterations": 6, "eval_every": 0, "log_every": 3, "eval_batch_size": 2}
    folder = tmp_path / "run"
    torch.manual_seed(0)
    straight = train(_config(tmp_path, "straight", **config), TinyClassifier(), data, val)
    torch.manual_seed(0)
    stopping = _StopOnRead(val, at=2)  # in the second of four batches
    with pytest.raises(TrainingStopped, match="SIGINT in the final validation after "
                       "iteration 6/6") as stopped:
        train(_config(tmp_path, **config), TinyClassifier(), data, stopping)
    assert stopped.value.checkpoint == folder / "last.pt"
    assert stopping.read == [0, 1, 2, 3]  # the batch it came in, not the rest
    state = load_checkpoint(folder / "last.pt")
    assert (state["iteration"], state["finished"]) == (6, False)
    assert not (folder / "best.pt").exists()
    resumed = train(_config(tmp_path, **config, resume="auto"), TinyClassifier(), data, val)
    assert resumed.metrics == straight.metrics
    lines = [(r["split"], r["iter"]) for r in read_metrics(folder / "metrics.jsonl")]
    assert lines == [("train", 3), ("train", 6), ("val", 6)]
    final, expected = (load_checkpoint(path) for path in (folder / "last.pt",
                                                           straight.last_checkpoint))
    assert final["finished"] and state_equal(final["model"], expected["model"])
    assert torch.equal(final["rng"][0]["torch"], expected["rng"][0]["torch"])
    # a stop in the last iteration ends the validation before its first batch is scored
    stopping = _StopOnRead(val, at=-1)
    with pytest.raises(TrainingStopped):
        train(_config(tmp_path, "last", **config), TinyClassifier(), data, stopping,
              on_iteration_end=lambda done: _request_stop() if done == 6 else None)
    assert stopping.read == [0, 1]
    assert load_checkpoint(tmp_path / "last" / "last.pt")["finished"] is False
    # a finished run resumed again (a requeued job) keeps its final last.pt when stopped
    with pytest.raises(TrainingStopped):
        train(_config(tmp_path, **config, resume="auto"), TinyClassifier(), data,
              _StopOnRead(val, at=0))
    assert load_checkpoint(folder / "last.pt")["finished"] is True
    assert len(read_metrics(folder / "metrics.jsonl")) == 3


def test_a_failing_final_validation_keeps_the_training_before_it(tmp_path, monkeypatch):
    """A final validation that raised (pycocotools missing, a broken val set) lost every
    iteration since the last checkpoint: last.pt of the last iteration is now written first,
    and a resume validates and ends as a straight run does. A mid-run validation that raises
    writes nothing: a resume from there would train on without that validation."""
    import deformconv.engine.trainer as trainer

    data, val = ToyClassification(size=20), ToyClassification(size=8, seed=3)
    config = {"iterations": 5, "eval_every": 4, "checkpoint_every": 0, "log_every": 5}
    torch.manual_seed(0)
    straight = train(_config(tmp_path, "straight", **config), TinyClassifier(), data, val)
    real_evaluate, calls = trainer.evaluate, []

    def failing_at(*failing_calls):
        def evaluate(*args, **kwargs):
            calls.append(1)
            if len(calls) in failing_calls:
                raise RuntimeError("the val set's disk is gone")
            return real_evaluate(*args, **kwargs)

        return evaluate

    monkeypatch.setattr(trainer, "evaluate", failing_at(2))  # the final validation
    folder = tmp_path / "run"
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="disk is gone"):
        train(_config(tmp_path, **config), TinyClassifier(), data, val)
    state = load_checkpoint(folder / "last.pt")
    assert (state["iteration"], state["finished"]) == (5, False)
    resumed = train(_config(tmp_path, **config, resume="auto"), TinyClassifier(), data, val)
    assert resumed.metrics == straight.metrics
    assert load_checkpoint(folder / "last.pt")["finished"] is True
    assert state_equal(load_checkpoint(folder / "last.pt")["model"],
                       load_checkpoint(straight.last_checkpoint)["model"])
    lines = [(r["split"], r["iter"]) for r in read_metrics(folder / "metrics.jsonl")]
    assert lines == [(r["split"], r["iter"])
                     for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")]
    calls.clear()
    monkeypatch.setattr(trainer, "evaluate", failing_at(1))  # iteration 4's
    with pytest.raises(RuntimeError, match="disk is gone"):
        train(_config(tmp_path, "mid", **config), TinyClassifier(), data, val)
    assert not (tmp_path / "mid" / "last.pt").exists()


@pytest.mark.skipif(importlib.util.find_spec("pycocotools") is None,
                    reason="needs pycocotools to block")
def test_detection_without_pycocotools_fails_before_training(tmp_path, monkeypatch):
    """Its COCO evaluation failed after all the iterations, with no checkpoint."""
    monkeypatch.setitem(sys.modules, "pycocotools.cocoeval", None)
    config = _config(tmp_path, task="detection", iterations=2)
    with pytest.raises(ModuleNotFoundError, match="pycocotools"):
        train(config, TinyDetector(), ToyDetection(size=4), ToyDetection(size=2, seed=1))
    assert not (tmp_path / "run").exists()


def test_a_finished_run_extended_logs_what_a_straight_run_does(tmp_path):
    """The final line of a run off the log_every grid reset the log window: extended from 5
    to 10 iterations, the line at 10 averaged iterations 6-10, a straight run's 1-10."""
    data = ToyClassification(size=20)
    short = {"log_every": 4, "eval_every": 0, "checkpoint_every": 0, "schedule": "step"}
    torch.manual_seed(0)
    train(_config(tmp_path, "extended", iterations=5, **short), TinyClassifier(), data)
    train(_config(tmp_path, "extended", iterations=10, resume="auto", **short),
          TinyClassifier(), data)
    torch.manual_seed(0)
    train(_config(tmp_path, "straight", iterations=10, **short), TinyClassifier(), data)
    lines = {name: {r["iter"]: r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl")}
             for name in ("extended", "straight")}
    assert list(lines["extended"]) == [4, 5, 8, 10]  # 5: the first run's last line
    assert list(lines["straight"]) == [4, 8, 10]
    assert lines["extended"][8] == lines["straight"][8]  # the window 5..8 carried over
    assert lines["extended"][10] == lines["straight"][10]


def test_an_empty_val_set_is_refused_before_training(tmp_path):
    """It used to fail at the first validation, after the training up to it."""
    config = _config(tmp_path)
    with pytest.raises(ValueError, match=r"val_set is empty \(0 samples\); pass val_set=None"):
        train(config, TinyClassifier(), ToyClassification(size=8), [])
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_config_changed_after_construction_is_checked(tmp_path):
    """Fields are checked when train() starts too: an "adam" set afterwards trained SGD."""
    config = _config(tmp_path)
    config.optimizer = "adam"
    with pytest.raises(ValueError, match=r"optimizer must be one of .*got 'adam'"):
        train(config, TinyClassifier(), ToyClassification(size=8))


def test_a_refused_resume_leaves_the_folder_as_it_was(tmp_path):
    """config.json used to be rewritten with the refused settings."""
    train(_config(tmp_path, iterations=2), TinyClassifier(), ToyClassification(size=8))
    written = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(ValueError, match="cannot resume"):
        train(_config(tmp_path, iterations=4, batch_size=2, resume="auto"), TinyClassifier(),
              ToyClassification(size=8))
    assert (tmp_path / "run" / "config.json").read_text() == written


def test_a_resume_failing_at_its_first_step_leaves_config_json_as_it_was(tmp_path):
    """Settings that pass the checks but fail in the first step (class weights for 2 of
    the model's classes) rewrote config.json: it then described a run that never trained
    with them."""
    train(_config(tmp_path, iterations=2), TinyClassifier(), ToyClassification(size=8))
    config_json = tmp_path / "run" / "config.json"
    written = config_json.read_text()
    with pytest.raises(ValueError, match="class_weights must hold one weight per class"):
        train(_config(tmp_path, iterations=4, resume="auto", class_weights=[1.0, 2.0]),
              TinyClassifier(), ToyClassification(size=8))
    assert config_json.read_text() == written
    train(_config(tmp_path, iterations=4, resume="auto", lr=0.05), TinyClassifier(),
          ToyClassification(size=8))
    assert json.loads(config_json.read_text())["config"]["lr"] == 0.05


def test_a_resume_that_cannot_write_leaves_config_and_log_whole(tmp_path):
    """On a full disk config.json was cut to the bytes that fit (invalid JSON) and the log's
    rewrite lost the lines after them."""
    train(_config(tmp_path, iterations=4), TinyClassifier(), ToyClassification(size=8))
    written = {name: (tmp_path / "run" / name).read_text()
               for name in ("config.json", "metrics.jsonl")}
    with file_size_limit(200), pytest.raises(OSError, match="File too large"):
        train(_config(tmp_path, iterations=6, resume="auto"), TinyClassifier(),
              ToyClassification(size=8))
    assert {name: (tmp_path / "run" / name).read_text() for name in written} == written


def test_targets_the_model_cannot_score_are_named():
    """Classification evaluation scored them as misses (top-1 0.0); training raised torch's
    bare IndexError."""
    from deformconv.engine import compute_loss

    samples = [(torch.rand(3, 8, 8), 7)] * 4
    message = r"classification targets hold class ids outside \[0, 3\), the model's 3 outputs"
    with pytest.raises(ValueError, match=message):
        evaluate(TinyClassifier(), samples, "classification", batch_size=2)
    with pytest.raises(ValueError, match=message):
        compute_loss("classification", TinyClassifier(), torch.rand(2, 3, 8, 8),
                     torch.tensor([0, 7]))
    masks = torch.full((1, 8, 8), 255)
    masks[0, 0, 0] = 5
    with pytest.raises(ValueError, match=r"segmentation targets hold class ids outside "
                                         r"\[0, 3\) other than 255 \(ignored\)"):
        compute_loss("segmentation", TinySegmenter(), torch.rand(1, 3, 8, 8), masks)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_a_batch_of_zero_weight_classes_has_zero_loss(task):
    """cross_entropy's weighted mean is 0/0 there: the run stopped at once, blaming the lr."""
    from deformconv.engine import compute_loss

    model = TinyClassifier() if task == "classification" else TinySegmenter()
    targets = torch.zeros(2, dtype=torch.long)
    if task == "segmentation":
        targets = torch.zeros(2, 8, 8, dtype=torch.long)
    weights = torch.tensor([0.0, 1.0, 1.0])
    loss, _ = compute_loss(task, model, torch.rand(2, 3, 8, 8), targets, weights)
    assert loss.item() == 0.0
    loss.backward()  # still a graph: the step runs, it just moves nothing


def test_samples_that_are_not_pairs_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"the dataset must give \(image, target\) pairs; "
                                         r"batch item 0 is a tuple of 1"):
        train(_config(tmp_path), TinyClassifier(),
              torch.utils.data.TensorDataset(torch.rand(8, 3, 8, 8)))


def test_a_resume_into_another_folder_writes_its_own_best(tmp_path):
    """The best value came along from the checkpoint, so no later validation beat it and
    the new folder never got a best.pt."""
    data, val = ToyClassification(size=16), ToyClassification(size=8, seed=2)
    train(_config(tmp_path, iterations=4, eval_every=2), TinyClassifier(), data, val)
    result = train(_config(tmp_path, "other", iterations=6, eval_every=2, lr=1e-9,
                           resume=str(tmp_path / "run" / "last.pt")),
                   TinyClassifier(), data, val)
    assert result.best_checkpoint is not None and (tmp_path / "other" / "best.pt").is_file()


def test_extra_that_is_not_json_is_named_before_anything_is_written(tmp_path):
    from pathlib import Path

    with pytest.raises(TypeError, match=r"extra must hold plain values .* PosixPath"):
        train(_config(tmp_path), TinyClassifier(), ToyClassification(size=8),
              extra={"data": Path("/data")})
    assert not (tmp_path / "run" / "config.json").exists()
