"""Real processes: a training run SIGKILLed mid-way and resumed, and 2-process DDP via torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _engine_toys import main, state_equal

from deformconv.engine import load_checkpoint, read_metrics

SCRIPT = Path(__file__).with_name("_engine_toys.py")
KILLED_RUN = Path(__file__).with_name("_killed_run.py")  # signals after an iteration


def _start(*args: str, kill_at: str | None = None, torchrun: bool = False) -> subprocess.Popen:
    """The toy script in a process (or two under torchrun); ``kill_at``: signal it as
    ``_killed_run.py``'s ``ITERATION[:SIGNAL[:RANK]]`` says."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    launcher = [sys.executable]
    if torchrun:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    if kill_at is not None:
        launcher += [str(KILLED_RUN), kill_at]
    return subprocess.Popen([*launcher, str(SCRIPT), *args], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def in_process():
    """Run the toy script's ``main`` here (one thread, like the subprocesses), then restore."""
    threads = torch.get_num_threads()
    yield main
    torch.set_num_threads(threads)


def _finish(proc: subprocess.Popen, expect: int | None = 0) -> str:
    """Wait for ``proc`` (killed after 120 s, failing the test); its exit code must be
    ``expect`` (``None``: any failure)."""
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers
        out, _ = proc.communicate()
        pytest.fail(f"still running after 120 s (a rank waiting for another?), output:\n{out}")
    ok = proc.returncode != 0 if expect is None else proc.returncode == expect
    assert ok, f"exit code {proc.returncode}, output:\n{out}"
    return out


def test_killed_process_resumes_to_identical_weights(tmp_path, in_process):
    full, cut = tmp_path / "full", tmp_path / "cut"
    killed = _start(str(cut), "10", kill_at="8")
    in_process([str(full), "10"])  # the uninterrupted reference, while the other one runs
    _finish(killed, expect=-signal.SIGKILL)  # died after iteration 8, no final checkpoint
    assert load_checkpoint(cut / "last.pt")["iteration"] == 6  # checkpoint_every=3
    assert not list(cut.glob(".*.tmp"))  # no temp file left by the atomic writes
    assert "continuing from" in _finish(_start(str(cut), "10", "--resume"))

    a = torch.load(full / "rank0.pt", weights_only=True)
    b = torch.load(cut / "rank0.pt", weights_only=True)
    assert state_equal(a, b)
    assert load_checkpoint(cut / "last.pt")["iteration"] == 10


def test_two_process_ddp_matches_single_process(tmp_path, in_process):
    # 2 ranks x batch 2 see, step by step, the same samples as 1 process x batch 4
    # (rank r takes every other index of the same permutation), and DDP averages the
    # gradients: without dropout both runs follow the same trajectory up to rounding.
    # CPU processes (gloo) whatever hardware the test machine has. On the way, rank 0 alone
    # gets a SIGTERM after iteration 4: both ranks stop there (rank 1 would otherwise wait
    # in iteration 5's gradient all-reduce), with a checkpoint that the job resumes from.
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    common = ["6", "--dropout", "0", "--device", "cpu", "--eval-extra"]
    stopped = _start(str(ddp), *common, "--batch-size", "2", torchrun=True, kill_at="4:SIGTERM:0")
    in_process([str(single), *common, "--batch-size", "4"])
    out = _finish(stopped, expect=None)  # torchrun reports the stopped workers
    assert "SIGTERM received: stopping after this iteration" in out
    assert out.count("stopped by SIGTERM after iteration 4/6") == 2  # both ranks
    assert load_checkpoint(ddp / "last.pt")["iteration"] == 4  # checkpoint_every=3
    _finish(_start(str(ddp), *common, "--batch-size", "2", "--resume", torchrun=True))

    rank0 = torch.load(ddp / "rank0.pt", weights_only=True)
    rank1 = torch.load(ddp / "rank1.pt", weights_only=True)
    assert state_equal(rank0, rank1)
    reference = torch.load(single / "rank0.pt", weights_only=True)
    for name, value in reference.items():
        torch.testing.assert_close(rank0[name], value, rtol=1e-5, atol=1e-6, msg=name)

    last = load_checkpoint(ddp / "last.pt")
    assert last["world_size"] == 2 and len(last["rng"]) == 2  # every rank's RNG state
    records = read_metrics(ddp / "metrics.jsonl")  # written by rank 0 only: no duplicates
    assert [r["iter"] for r in records if r["split"] == "train"] == list(range(1, 7))
    val = [r for r in records if r["split"] == "val"]
    assert len(val) == 1 and val[0]["num_images"] == 7  # shards cover the val set once
    single_val = [r for r in read_metrics(single / "metrics.jsonl") if r["split"] == "val"]
    assert val[0]["top1"] == single_val[0]["top1"]

    # distributed evaluation: shards reduced/gathered to the single-process numbers
    evals = [json.loads((folder / f"eval_rank{r}.json").read_text())
             for folder, r in ((ddp, 0), (ddp, 1), (single, 0))]
    assert evals[0] == evals[1]
    seg = [e["segmentation"] for e in evals]
    assert seg[0]["num_pixels"] == seg[2]["num_pixels"] == 5 * 7 * 8
    assert seg[0]["iou"] == seg[2]["iou"] and seg[0]["miou"] == seg[2]["miou"]
    det = [e["detection"] for e in evals]
    assert det[0]["num_images"] == det[2]["num_images"] == 5
    for key in ("AP", "AP50", "AP75"):
        assert det[0][key] == pytest.approx(det[2][key], abs=1e-12)


def test_a_busy_folder_stops_every_rank_with_rank_0_s_error(tmp_path):
    """Only rank 0 takes the run folder's lock: when another process held it, rank 0 raised
    RunInProgressError and rank 1, waiting in the next all-reduce, died with a gloo
    traceback ("Connection closed by peer"). Now every rank learns of the refusal."""
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as holder:  # another process's run holds the folder
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4242\n")
        holder.flush()
        text = _finish(_start(str(out), "2", "--device", "cpu", torchrun=True), expect=None)
    assert "RunInProgressError: another process (pid 4242) is training into" in text
    assert "RefusedByMainProcess: rank 0 refused to start the run" in text
    assert "Connection closed" not in text and "gloo" not in text.lower()
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_a_non_finite_loss_on_one_rank_stops_every_rank_there(tmp_path):
    """Only the rank whose loss was NaN raised FloatingPointError; the other one went on into
    the backward pass's gradient all-reduce, waiting for it (for ever, or gloo's timeout;
    torchrun then killed it). Now every rank raises the same error at that iteration."""
    out = tmp_path / "run"
    text = _finish(_start(str(out), "6", "--device", "cpu", "--batch-size", "2",
                          "--nan-loss-at", "3:1", torchrun=True), expect=None)
    message = ("FloatingPointError: loss is nan on rank 1 (of 2 ranks) at iteration 4 "
               "(epoch 0); lower lr or set grad_clip_norm")
    assert text.count(message) == 2, text  # both ranks
    assert "Connection closed" not in text and "gloo" not in text.lower()
    records = read_metrics(out / "metrics.jsonl")
    assert [r["iter"] for r in records if r["split"] == "train"] == [1, 2, 3]
