"""The training loop, in plain sight: data -> loss -> backward -> clip -> SGD step -> schedule.

Runs as one process or under torchrun (DistributedDataParallel, one process per device).
Checkpoints hold everything that decides the rest of the run (weights, optimizer and
scheduler state, every rank's RNG states, the iteration count; the data order is a pure
function of seed, epoch and position), so a resumed run continues bit for bit (on a
CPU at the thread count it trained at, which checkpoints record).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm import tqdm

from .checkpoint import (
    CHECKPOINT_FORMAT,
    check_writable,
    checkpoint_iteration,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
    write_atomically,
)
from .config import TrainConfig
from .distributed import (
    DistInfo,
    alike_on_every_rank,
    all_gather_objects,
    all_reduce_sum,
    cleanup_distributed,
    init_distributed,
)
from .evaluate import autocast, evaluate
from .loader import iters_per_epoch, loader_batches, train_loader
from .metrics_log import MetricsLogger
from .optim import build_optimizer, build_scheduler, lr_factor
from .run_lock import out_dir_lock
from .seeding import get_rng_state, seed_everything, set_rng_state
from .stop import STOP_SIGNALS, StopSignals, TrainingStopped
from .tasks import (
    PRIMARY_METRIC,
    check_class_weights,
    compute_loss,
    make_evaluator,
    model_classes,
    num_images,
    to_device,
)

__all__ = ["RefusedByMainProcess", "TrainResult", "train"]

# Fields that fix the data order, the RNG streams and the optimizer state's layout: a
# resumed run must keep them.
RESUME_FIXED = ("task", "seed", "batch_size", "optimizer")
# What the main process writes into the run's folder through write_atomically, holding its lock
# (final_metrics.json: the command line's on_finish).
ATOMIC_FILES = ("last.pt", "best.pt", "config.json", "metrics.jsonl", "final_metrics.json")


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    iteration: int
    metrics: dict[str, Any]  # final val metrics ({} without a val set)
    best_metric: float | None  # best val value of PRIMARY_METRIC[task] seen
    last_checkpoint: Path | None  # None on ranks other than 0
    best_checkpoint: Path | None
    out_dir: Path
    # Wall-clock seconds of the training steps (drawing batches included), without
    # validation and checkpoint writes; a resumed run adds to the time saved with it.
    train_seconds: float
    # The same steps' CPU seconds (this process's threads; not the loader workers'); None
    # for a run resumed from a checkpoint written before they were kept (2026-12-03).
    train_cpu_seconds: float | None


def train(
    config: TrainConfig,
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None = None,
    *,
    on_iteration_end: Callable[[int], None] | None = None,
    on_start: Callable[[], None] | None = None,
    on_finish: Callable[[TrainResult], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_set`` as ``config`` says; evaluate on ``val_set`` if given.

    Writes ``<out_dir>/last.pt`` (every ``checkpoint_every`` iterations and at the end),
    ``best.pt`` (best val metric, when ``keep_best``) and ``metrics.jsonl``. With
    ``config.resume`` set, continues the run saved in that checkpoint. Under torchrun each
    process calls this with the same arguments; only rank 0 writes files.
    ``on_iteration_end(iteration)`` is called after each completed iteration (a hook for
    callers and tests; it may raise to stop the run). ``on_start()`` is called by the main
    process once the run's checks passed (a resume's included), holding ``out_dir``'s lock,
    before the run writes or removes anything there (the command line clears an earlier
    run's files in it; raising stops the run, leaving the folder as ``on_start`` did, and a
    folder the run created is removed again). ``on_finish(result)`` is called by the main
    process once the run finished (its final checkpoint written), still holding the lock,
    e.g. to write a summary into ``out_dir`` that no other run can come between; raising
    raises from ``train``. ``extra`` (plain values: str, numbers,
    lists, dicts) is stored in every checkpoint under ``"extra"``, e.g. how to rebuild the
    model and data, and in ``<out_dir>/config.json`` beside the config (written once the
    run's first step ran: a resume failing there leaves the earlier file).

    While it runs, ``out_dir`` is locked: another process's run into it raises
    :class:`~deformconv.engine.RunInProgressError`. The lock (and the folder) is taken after
    the run's checks: a refused run leaves no folder behind, nor does a new run that fails
    in its first step (settings its first batch refutes, a model that cannot run on it):
    it writes nothing but the lock's file before that step succeeded (an earlier run's
    ``metrics.jsonl`` stays as it was), and a folder the lock created is removed again if
    it holds nothing else. One where no file can be
    created (no write permission) is refused then with ``PermissionError``, before anything
    is written. Under torchrun rank 0 takes it and calls ``on_start``; if either fails,
    rank 0 raises that error and the other ranks
    :class:`~deformconv.engine.RefusedByMainProcess`.

    SIGINT (Ctrl-C) or SIGTERM stops the run at the end of the iteration, after writing
    ``last.pt``, with :class:`~deformconv.engine.TrainingStopped` (a ``KeyboardInterrupt``);
    under torchrun a signal to any rank stops all ranks there. One during the last iteration
    or the final validation ends that validation at its next batch, unlogged, with
    ``last.pt`` of the last iteration; a resume validates. A second Ctrl-C stops at once.

    A non-finite loss raises ``FloatingPointError`` naming the iteration, after a train line
    of the losses since the last one (``metrics.jsonl`` shows the run up to it); under
    torchrun every rank raises it there, naming the ranks whose loss was not finite. A final
    validation that raises writes ``last.pt`` of the last iteration first (one process; not
    under torchrun), so that a resume validates again instead of training again; a
    detection run without pycocotools fails before its first iteration.

    A run into an ``out_dir`` that holds another run's files replaces them (the command
    line refuses such a folder unless told to overwrite it or resume). Every run removes
    the temporary files of its checkpoints that a run killed while writing one left there
    (``.last.pt.*.tmp``, ``.best.pt.*.tmp``).
    """
    was_initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    # config.deterministic holds for this run only (CUBLAS_WORKSPACE_CONFIG stays set)
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled(),
                     torch.backends.cudnn.benchmark)
    info = init_distributed(config.device)
    try:
        return _train(config, model, train_set, val_set, info, on_iteration_end, on_start,
                      on_finish, extra or {})
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.benchmark = deterministic[2]
        if not was_initialized:
            cleanup_distributed()


def _train(
    config: TrainConfig,
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    info: DistInfo,
    on_iteration_end: Callable[[int], None] | None,
    on_start: Callable[[], None] | None,
    on_finish: Callable[[TrainResult], None] | None,
    extra: dict[str, Any],
) -> TrainResult:
    with alike_on_every_rank():  # the same settings, data and checkpoint on every rank
        config.validate()  # fields set after construction were not checked
        # against the model's num_classes where it has one; the first step checks the logits
        check_class_weights(config.task, config.class_weights, model_classes(model))
        if val_set is not None and not len(val_set):  # type: ignore[arg-type]
            raise ValueError("val_set is empty (0 samples); pass val_set=None to train "
                             "without validation")
        if val_set is not None:
            make_evaluator(config.task)  # a missing dependency (pycocotools) fails now
        config_json = _config_json(config, info, extra)  # on every rank: a bad extra stops all
    out_dir = Path(config.out_dir)
    _prepare_process(config, info)
    model.to(info.device)
    run = _Run(config, model, train_set, val_set, info, out_dir, extra)
    with alike_on_every_rank():
        run.resume_if_asked()
    # After the checks: a refused run (or resume) leaves the folder as it was, or absent.
    with _started(out_dir, info, on_start):
        if info.is_main:
            _remove_stale_temp_files(out_dir)
        run.adopt_best_checkpoint()
        if info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            run.unwritten_config = config_json
        result = _train_loop(run, on_iteration_end)
        if info.is_main and on_finish is not None:
            on_finish(result)
        return result


class RefusedByMainProcess(RuntimeError):
    """Raised by :func:`train` on ranks other than 0 when rank 0 refused to start the run
    (its folder busy, or ``on_start`` raised); rank 0 raises the error that says why."""


@contextlib.contextmanager
def _started(out_dir: Path, info: DistInfo, on_start: Callable[[], None] | None
             ) -> Iterator[None]:
    """Rank 0 holds ``out_dir``'s lock while inside, having checked that it can create
    files there and called ``on_start``; every rank learns whether it could, so that a
    refusal stops all of them (not only rank 0, the others then failing in the next
    collective with the connection closed)."""
    with contextlib.ExitStack() as held:
        error: Exception | None = None
        if info.is_main:
            try:
                held.enter_context(out_dir_lock(out_dir))
                check_writable(out_dir / "last.pt")  # now, not at the first checkpoint
                if on_start is not None:
                    on_start()
            except Exception as err:
                error = err
        if all_reduce_sum(torch.tensor([int(error is not None)])).item():
            if error is not None:
                raise error
            raise RefusedByMainProcess(f"rank 0 refused to start the run into {out_dir}")
        yield


def _train_loop(run: _Run, on_iteration_end: Callable[[int], None] | None) -> TrainResult:
    """The iterations of a checked run, from its current one to the end."""
    config, info = run.config, run.info
    run.wrap_for_ddp()
    run.open_log()
    bar = tqdm(total=run.total, initial=run.iteration, desc=config.progress_label,
               position=config.progress_line, dynamic_ncols=True,
               disable=not (config.progress and info.is_main))
    # the logger is closed on errors too (e.g. a stop hook)
    with bar, contextlib.closing(run.logger), StopSignals(announce=info.is_main) as signals, \
            contextlib.closing(run.batches()) as batches:  # closed: its workers stop on errors
        run.clock.start()
        run.net.train()
        last: tuple[int, _Step] | None = None
        for epoch, images, targets in batches:
            try:
                step = run.train_step(epoch, images, targets)
                run.write_config()
            except FloatingPointError:
                # the losses before it, which no line reported yet, go to the log (every
                # rank stops at this iteration: the line averages over all of them)
                if last is not None and run.window.loss[1] > 0:
                    run.log_train(*last, bar)
                raise
            last = (epoch, step)
            run.window.add(step.loss, num_images(images) * info.world_size)
            if run.iteration % config.log_every == 0 or run.iteration == run.total:
                run.log_train(epoch, step, bar)
            bar.update(1)
            run.evaluate_and_save_mid_run()
            if on_iteration_end is not None:
                on_iteration_end(run.iteration)
            if run.iteration < run.total and (signum := run.stop_signal(signals)):
                run.stop(signum, saved=_every(run.iteration, config.checkpoint_every))
        # one in the last iteration stops the final validation before its first batch
        return run.finish(signals)


def _remove_stale_temp_files(out_dir: Path) -> None:
    """Remove the temporary files of this folder's checkpoints (and other files written
    atomically) that a run killed mid-write left: hidden, as large as a checkpoint, and
    otherwise never removed. Called holding the folder's lock, so no live run writes them."""
    removed = remove_stale_temp_files([out_dir / name for name in ATOMIC_FILES])
    if removed:
        print(f"removed {len(removed)} temporary file(s) of an interrupted write in "
              f"{out_dir}: {', '.join(path.name for path in removed)}")


def _config_json(config: TrainConfig, info: DistInfo, extra: dict[str, Any]) -> str:
    """What ``config.json`` holds: the config, ``extra`` and the number of processes."""
    try:
        return json.dumps({"config": config.to_dict(), "extra": extra,
                           "world_size": info.world_size}, indent=2) + "\n"
    except TypeError as err:
        raise TypeError(f"extra must hold plain values (str, numbers, lists, dicts): {err}"
                        ) from None


def _prepare_process(config: TrainConfig, info: DistInfo) -> None:
    """Set deterministic algorithms if asked, seed the RNGs."""
    if config.deterministic:
        if info.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(config.seed + info.rank)  # per-rank streams (dropout etc.)


@dataclass
class _Step:
    """What one optimisation step reports to the log."""

    loss: Tensor  # scalar
    parts: dict[str, Tensor]  # the loss's named terms
    lr: float  # the learning rate the step used
    grad_norm: float | None  # before clipping; None without grad_clip_norm


class _LogWindow:
    """Losses and images since the last train log line (saved in checkpoints, so the first
    line after a resume averages the same iterations as in an uninterrupted run)."""

    def __init__(self, seconds: float) -> None:
        self.reset(seconds)

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss.tolist(), "images": self.images, "start": self.start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss = torch.tensor(state["loss"], dtype=torch.float64)
        self.images, self.start = state["images"], state["start"]

    def reset(self, seconds: float) -> None:
        self.loss = torch.zeros(2, dtype=torch.float64)  # (sum of losses, iterations)
        self.images = 0
        self.start = seconds

    def add(self, loss: Tensor, images: int) -> None:
        self.loss += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
        self.images += images


class _Run:
    """One run's parts (model, optimizer, schedule, log) and progress (iteration, best
    value, clock); ``_train`` calls its steps top-down."""

    def __init__(self, config: TrainConfig, model: nn.Module, train_set: Dataset,
                 val_set: Dataset | None, info: DistInfo, out_dir: Path,
                 extra: dict[str, Any]) -> None:
        self.config, self.model, self.net = config, model, model
        self.train_set, self.val_set = train_set, val_set
        self.info, self.out_dir, self.extra = info, out_dir, extra
        self.optimizer = build_optimizer(model, config)
        self.per_epoch = iters_per_epoch(len(train_set), config.batch_size, info.world_size)  # type: ignore[arg-type]
        self.total = (config.iterations if config.iterations is not None
                      else config.epochs * self.per_epoch)
        self.scheduler = build_scheduler(self.optimizer, config, self.total)
        self.class_weights = (None if config.class_weights is None
                              else torch.tensor(config.class_weights, dtype=torch.float32,
                                                device=info.device))
        self.iteration = 0
        self.best: float | None = None  # best val value of PRIMARY_METRIC[task]
        self.clock = _TrainClock()
        self.window = _LogWindow(0.0)
        self.resumed = False
        # resumed from a checkpoint of this folder written by the run's final validation
        # (last.pt, or best.pt of that validation): its val line is in the log already
        self.finished_before = False
        self.last_is_final = False  # and that checkpoint is last.pt: nothing to write
        self.last_path = out_dir / "last.pt" if info.is_main else None
        self.best_path: Path | None = None
        self.metrics: dict[str, Any] = {}  # the latest validation's
        self.unwritten_config: str | None = None  # config.json's text, until written

    def write_config(self) -> None:
        """Write ``config.json`` once this call's settings ran a step (or reached the end
        without one): a resume whose settings fail at their first step (class_weights not
        one per class of the model) leaves the earlier file as it was."""
        if self.unwritten_config is not None:
            text, self.unwritten_config = self.unwritten_config, None
            write_atomically(self.out_dir / "config.json", lambda f: f.write(text.encode()))

    def resume_if_asked(self) -> None:
        """Load the checkpoint ``config.resume`` names (if any): weights, optimizer,
        schedule, this rank's RNG state and the progress."""
        path = _resume_path(self.config, self.out_dir)
        if path is None:
            return
        state = load_checkpoint(path)
        _check_resumable(state, self.config, self.info, path)
        if state["iteration"] > self.total:  # before loading: a refused resume changes nothing
            raise ValueError(f"cannot resume from {path}: it is at iteration "
                             f"{state['iteration']}, beyond this run's {self.total}; ask for "
                             "more iterations")
        configured = [dict(group) for group in self.optimizer.param_groups]
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ValueError(f"cannot resume from {path}: its weights do not fit the model "
                             f"(another architecture or class count?): {err}") from err
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:
            saved = len(state["optimizer"]["param_groups"])
            raise ValueError(
                f"cannot resume from {path}: its optimizer has {saved} parameter groups, this "
                f"run's {len(configured)} (lr_mults, offset_lr_mult or the model's trainable "
                f"parameters changed?): {err}") from err
        self.scheduler.load_state_dict(state["scheduler"])
        self._configure_loaded_optimizer(configured)
        set_rng_state(state["rng"][self.info.rank])
        self.iteration, self.best = state["iteration"], state.get("best_metric")
        self.clock = _TrainClock(state.get("train_seconds", 0.0),
                                 state.get("train_cpu_seconds"))  # None: not kept then
        self.window.reset(self.clock.seconds)
        if "log_window" in state:  # checkpoints before 2026-12-02 lack it
            self.window.load_state_dict(state["log_window"][self.info.rank])
        self.resumed = True
        here = self.out_dir.resolve()
        self.finished_before = (state.get("finished", False) and self.iteration == self.total
                                and Path(path).resolve().parent == here)
        self.last_is_final = (self.finished_before
                              and Path(path).resolve() == here / "last.pt")
        if self.info.is_main:
            print(f"continuing from {path} at iteration {self.iteration}/{self.total}")
            _note_thread_change(state, self.info)

    def adopt_best_checkpoint(self) -> None:
        """Keep ``best.pt`` only if it belongs to this run up to its current iteration: a
        new run's folder may hold another run's, and a resumed run may have validated (and
        saved a best) after the checkpoint it resumes from, in a part it now retrains. A
        stale one is deleted; after a resume the next validation then writes a new one, as
        it does when the folder has none (a resume into another folder)."""
        best = self.out_dir / "best.pt"
        stale = missing = False
        if self.info.is_main and best.exists():
            if self.resumed and checkpoint_iteration(best) <= self.iteration:
                self.best_path = best
            else:
                best.unlink()
                stale = self.resumed
        elif self.info.is_main:
            missing = self.resumed and self.config.keep_best and self.best is not None
        # every rank must agree on self.best: it decides whether all of them checkpoint
        if all_reduce_sum(torch.tensor([int(stale or missing)])).item():
            self.best = None
            if self.info.is_main and stale:
                print(f"deleted {best}: it is not this run's best up to iteration "
                      f"{self.iteration} (saved later, in the part being retrained, or "
                      "unreadable)")

    def _configure_loaded_optimizer(self, configured: list[dict[str, Any]]) -> None:
        """Learning rates (and the schedule's point), momentum and weight decay as the config
        says now: the loaded optimizer state holds the checkpoint's, which would silently
        override a changed ``lr``. Unchanged settings give the checkpoint's values exactly
        (``LambdaLR`` computes ``base_lr * factor`` the same way)."""
        factor = lr_factor(self.scheduler.last_epoch, self.config, self.total)
        groups = self.optimizer.param_groups
        for i, (group, config) in enumerate(zip(groups, configured, strict=True)):
            for key in ("momentum", "weight_decay"):
                if key in config:
                    group[key] = config[key]
            self.scheduler.base_lrs[i] = group["initial_lr"] = config["initial_lr"]
            group["lr"] = config["initial_lr"] * factor

    def wrap_for_ddp(self) -> None:
        if self.info.distributed:
            device = self.info.device
            device_ids = [device.index] if device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=device_ids)

    def open_log(self) -> None:
        self.logger = MetricsLogger(self.out_dir, enabled=self.info.is_main,
                                    tensorboard=self.config.tensorboard,
                                    resume_at=self.iteration if self.resumed else None)

    def batches(self) -> Iterator[tuple[int, Any, Any]]:
        """``(epoch, images, targets)`` on the device, from the current position to the end;
        the data order is a function of seed, epoch and position only."""
        config, info = self.config, self.info
        while self.iteration < self.total:
            epoch, start_batch = divmod(self.iteration, self.per_epoch)
            loader = train_loader(self.train_set, config.task, config.batch_size,
                                  seed=config.seed, epoch=epoch, start_batch=start_batch,
                                  world_size=info.world_size, rank=info.rank,
                                  num_workers=config.num_workers,
                                  pin_memory=info.device.type == "cuda")
            with loader_batches(loader) as epoch_batches:
                for images, targets in epoch_batches:
                    yield epoch, to_device(images, info.device), to_device(targets, info.device)
                    if self.iteration >= self.total:
                        return

    def train_step(self, epoch: int, images: Any, targets: Any) -> _Step:
        """Loss, backward, optional gradient clipping, optimizer and schedule step."""
        config = self.config
        # the base rate: the first group's may carry an lr_mults or offset multiplier
        lr = config.lr * lr_factor(self.iteration, config, self.total)
        with autocast(self.info.device, config.bf16):
            loss, parts = compute_loss(config.task, self.net, images, targets,
                                       self.class_weights)
        self.check_finite(loss, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if config.grad_clip_norm is not None:
            grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(),
                                                       config.grad_clip_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.iteration += 1
        return _Step(loss, parts, lr, grad_norm)

    def check_finite(self, loss: Tensor, epoch: int) -> None:
        """Raise ``FloatingPointError`` if the loss is not finite; under torchrun on every
        rank when any rank's is not (naming those), before the backward pass, whose gradient
        all-reduce the other ranks would wait in for ever."""
        if not self.info.distributed:
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at iteration {self.iteration + 1} (epoch {epoch}); "
                    "lower lr or set grad_clip_norm")
            return
        # every rank's loss at its rank's place: one small all-reduce gives all of them
        losses = torch.zeros(self.info.world_size, dtype=torch.float64, device=loss.device)
        losses[self.info.rank] = loss.detach()
        bad = {rank: value for rank, value in enumerate(all_reduce_sum(losses).tolist())
               if not math.isfinite(value)}
        if bad:
            where = ", ".join(f"{value} on rank {rank}" for rank, value in bad.items())
            with alike_on_every_rank():
                raise FloatingPointError(
                    f"loss is {where} (of {self.info.world_size} ranks) at iteration "
                    f"{self.iteration + 1} (epoch {epoch}); lower lr or set grad_clip_norm")

    def log_train(self, epoch: int, step: _Step, bar: tqdm) -> None:
        """One train line: the window's mean loss over all ranks, lr, throughput."""
        window = self.window
        loss_sum, count = all_reduce_sum(window.loss.clone()).tolist()
        elapsed = self.clock.seconds - window.start
        record = {"split": "train", "iter": self.iteration, "epoch": epoch,
                  "loss": loss_sum / count, "lr": step.lr,
                  "images_per_s": window.images / max(elapsed, 1e-9),
                  "train_seconds": self.clock.seconds,
                  "train_cpu_seconds": self.clock.cpu_seconds,
                  **{k: v.item() for k, v in step.parts.items()}}
        if step.grad_norm is not None:
            record["grad_norm"] = step.grad_norm
        self.logger.log(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{step.lr:.3g}",
                        img_s=f"{record['images_per_s']:.1f}")
        # A line off the log_every grid (the run's last) keeps the window: a longer run
        # resumed from this one's final checkpoint then logs what a straight run would.
        if self.iteration % self.config.log_every == 0:
            window.reset(self.clock.seconds)

    def evaluate_and_save_mid_run(self) -> None:
        """Validation and ``last.pt`` when due, off the clock; the last iteration's come in
        ``finish``."""
        if self.iteration >= self.total:
            return
        with self.clock.paused():
            if self.val_set is not None and _every(self.iteration, self.config.eval_every):
                self.metrics = self.validate()
            if _every(self.iteration, self.config.checkpoint_every):
                self.checkpoint(self.last_path)

    def stop_signal(self, signals: StopSignals) -> int | None:
        """The stop signal that reached this rank or, under torchrun, any rank (all ranks
        agree, so all stop together); None if none did."""
        signum = signals.signum  # read once: one arriving during the all-reduce waits its turn
        if not self.info.distributed:
            return signum
        hits = all_reduce_sum(torch.tensor([int(signum == s) for s in STOP_SIGNALS]))
        received = [s for s, count in zip(STOP_SIGNALS, hits.tolist(), strict=True) if count]
        return signum or (received[0] if received else None)

    def stop(self, signum: int, *, saved: bool, finished: bool = False) -> NoReturn:
        """Write ``last.pt`` unless this iteration's is ``saved`` already (``finished``: as
        the run's final checkpoint) and raise :class:`TrainingStopped`."""
        if not saved:
            with self.clock.paused():
                self.checkpoint(self.last_path, finished=finished)
        raise TrainingStopped(signum, self.iteration, self.total, self.last_path)

    def stop_check(self, signals: StopSignals) -> Callable[[], None]:
        """For ``evaluate``: raises :class:`_StopRequested` once a stop signal came."""
        def check() -> None:
            if signum := self.stop_signal(signals):
                raise _StopRequested(signum)

        return check

    def finish(self, signals: StopSignals) -> TrainResult:
        """Stop the clock, validate, write ``last.pt``. A run resumed from its own final
        checkpoint (a requeued job that had finished: its last.pt, or the best.pt its final
        validation wrote) evaluates without logging again: its final validation line is in
        the log already.

        A stop signal ends the validation at its next batch, unlogged, with ``last.pt`` of
        the last iteration: a resume validates then (a finished one's ``last.pt`` says so).
        """
        self.clock.stop()
        self.write_config()
        if self.val_set is not None:
            check = self.stop_check(signals)
            try:
                self.metrics = (self.evaluate(check) if self.finished_before
                                else self.validate(final=True, stop_check=check))
            except _StopRequested as request:
                self.stop(request.signum, saved=self.last_is_final,
                          finished=self.finished_before)
            except Exception:
                # a failing validation (a missing pycocotools, an unreadable val set) leaves
                # last.pt of the last iteration: a resume validates again instead of training
                # again. One process only: under torchrun the other ranks would wait for the
                # failed one in the checkpoint's collective.
                if not self.info.distributed and not self.last_is_final:
                    self.checkpoint(self.last_path, finished=self.finished_before)
                raise
        if not self.last_is_final:
            self.checkpoint(self.last_path, finished=True)
        return TrainResult(iteration=self.iteration, metrics=self.metrics,
                           best_metric=self.best, train_seconds=self.clock.seconds,
                           train_cpu_seconds=self.clock.cpu_seconds,
                           last_checkpoint=self.last_path, best_checkpoint=self.best_path,
                           out_dir=self.out_dir)

    def validate(self, final: bool = False,
                 stop_check: Callable[[], None] | None = None) -> dict[str, Any]:
        """Evaluate on ``val_set``, log, and keep ``best.pt`` when the primary metric improves
        (``final``: the run's final validation, whose best.pt is a finished checkpoint)."""
        config = self.config
        result = self.evaluate(stop_check)
        self.logger.log({"split": "val", "iter": self.iteration,
                         "train_seconds": self.clock.seconds,
                         "train_cpu_seconds": self.clock.cpu_seconds, **result})
        value = result.get(PRIMARY_METRIC[config.task], float("nan"))
        if math.isfinite(value) and (self.best is None or value > self.best):
            self.best = value
            if config.keep_best:
                self.best_path = self.out_dir / "best.pt" if self.info.is_main else None
                self.checkpoint(self.best_path, finished=final)
        return result

    def evaluate(self, stop_check: Callable[[], None] | None = None) -> dict[str, Any]:
        config = self.config
        return evaluate(self.net, self.val_set, config.task,  # type: ignore[arg-type]
                        batch_size=config.eval_batch_size or config.batch_size,
                        num_workers=config.num_workers, bf16=config.bf16, dist_info=self.info,
                        stop_check=stop_check)

    def checkpoint(self, path: Path | None, finished: bool = False) -> None:
        """Every rank contributes its RNG state and log window; rank 0 writes ``path``
        (``finished``: the run's final checkpoint)."""
        rng, log_window = zip(*all_gather_objects((get_rng_state(), self.window.state_dict())),
                              strict=True)
        if path is None:
            return
        save_checkpoint({
            "format": CHECKPOINT_FORMAT,
            "finished": finished,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None,  # bf16 autocast needs no loss scaling
            "iteration": self.iteration,
            "epoch": self.iteration // self.per_epoch,
            "batch_in_epoch": self.iteration % self.per_epoch,
            "rng": list(rng),
            "log_window": list(log_window),
            "world_size": self.info.world_size,
            "threads": torch.get_num_threads(),  # see _note_thread_change
            "best_metric": self.best,
            "train_seconds": self.clock.seconds,
            "train_cpu_seconds": self.clock.cpu_seconds,
            "config": self.config.to_dict(),
            "extra": self.extra,
        }, path)


def _note_thread_change(state: dict[str, Any], info: DistInfo) -> None:
    """Say so when a CPU run resumes at another torch thread count than its checkpoint was
    trained at: the CPU kernels' sums (and torch's GEMMs) split by thread count, so the run
    is then not bit-identical to an uninterrupted one (docs/OPS.md, Determinism).
    Checkpoints without the count (before 2026-12-03) say nothing."""
    trained_at, now = state.get("threads"), torch.get_num_threads()
    if info.device.type == "cpu" and trained_at is not None and trained_at != now:
        print(f"note: the run continues at {now} threads where it trained at {trained_at}, so "
              "it will not be bit-identical to an uninterrupted run")


class _StopRequested(Exception):
    """A stop signal ``signum`` came during the final validation (see ``_Run.stop_check``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _TrainClock:
    """Seconds spent training, wall-clock and CPU (this process's), paused around
    validation and checkpoints. CPU seconds None: unknown (a resume of a checkpoint that
    did not keep them)."""

    def __init__(self, seconds: float = 0.0, cpu_seconds: float | None = 0.0) -> None:
        self._total = float(seconds)
        self._cpu_total = None if cpu_seconds is None else float(cpu_seconds)
        self._since: tuple[float, float] | None = None  # (perf_counter, process_time)

    @property
    def seconds(self) -> float:
        running = 0.0 if self._since is None else time.perf_counter() - self._since[0]
        return self._total + running

    @property
    def cpu_seconds(self) -> float | None:
        if self._cpu_total is None:
            return None
        running = 0.0 if self._since is None else time.process_time() - self._since[1]
        return self._cpu_total + running

    def start(self) -> None:
        if self._since is None:
            self._since = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        self._total, self._cpu_total = self.seconds, self.cpu_seconds
        self._since = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.stop()
        try:
            yield
        finally:
            self.start()


def _every(iteration: int, period: int) -> bool:
    return period > 0 and iteration % period == 0


def _resume_path(config: TrainConfig, out_dir: Path) -> Path | None:
    if config.resume is None:
        return None
    if config.resume == "auto":
        path = out_dir / "last.pt"
        return path if path.is_file() else None
    return Path(config.resume)


def _check_resumable(state: dict, config: TrainConfig, info: DistInfo, path: Path) -> None:
    """Refuse to resume with settings that would change the data order, the RNG streams or
    the optimizer. A field missing from an older checkpoint's config had its default."""
    saved = state["config"]
    defaults = TrainConfig()
    changed = {k: (saved.get(k, getattr(defaults, k)), getattr(config, k)) for k in RESUME_FIXED
               if saved.get(k, getattr(defaults, k)) != getattr(config, k)}
    if state.get("world_size", 1) != info.world_size:
        changed["world_size"] = (state.get("world_size", 1), info.world_size)
    if changed:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in changed.items())
        raise ValueError(
            f"cannot resume from {path}: {detail}. These settings fix the data order, "
            "random streams and optimizer state; keep them, or start a new run without resume"
        )
