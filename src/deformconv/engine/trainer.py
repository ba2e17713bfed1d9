"""The training loop, in plain sight: data -> loss -> backward -> clip -> SGD step -> schedule.

Runs as one process or under torchrun (DistributedDataParallel, one process per device).
Checkpoints hold everything that decides the rest of the run (weights, optimizer and
scheduler state, every rank's RNG states, the iteration count; the data order is a pure
function of seed, epoch and position), so a resumed run continues bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm import tqdm

from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    cleanup_distributed,
    init_distributed,
)
from .evaluate import autocast, evaluate
from .loader import iters_per_epoch, train_loader
from .metrics_log import MetricsLogger
from .optim import build_optimizer, build_scheduler
from .seeding import get_rng_state, seed_everything, set_rng_state
from .tasks import PRIMARY_METRIC, compute_loss, num_images, to_device

__all__ = ["KILL_ENV", "TrainResult", "train"]

# Test hook: after this iteration (and its checkpoint, if one is due) the process SIGKILLs
# itself, like a preempted job: no cleanup, no final checkpoint.
KILL_ENV = "DEFORMCONV_KILL_AT_ITER"
# Fields that fix the data order, the RNG streams and the optimizer state's layout: a
# resumed run must keep them.
RESUME_FIXED = ("task", "seed", "batch_size", "optimizer")


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


def train(
    config: TrainConfig,
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None = None,
    *,
    on_iteration_end: Callable[[int], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_set`` as ``config`` says; evaluate on ``val_set`` if given.

    Writes ``<out_dir>/last.pt`` (every ``checkpoint_every`` iterations and at the end),
    ``best.pt`` (best val metric, when ``keep_best``) and ``metrics.jsonl``. With
    ``config.resume`` set, continues the run saved in that checkpoint. Under torchrun each
    process calls this with the same arguments; only rank 0 writes files.
    ``on_iteration_end(iteration)`` is called after each completed iteration (a hook for
    callers and tests; it may raise to stop the run). ``extra`` (plain values: str, numbers,
    lists, dicts) is stored in every checkpoint under ``"extra"``, e.g. how to rebuild the
    model and data, and in ``<out_dir>/config.json`` beside the config.
    """
    was_initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    info = init_distributed(config.device)
    try:
        return _train(config, model, train_set, val_set, info, on_iteration_end, extra or {})
    finally:
        if not was_initialized:
            cleanup_distributed()


def _train(
    config: TrainConfig,
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    info: DistInfo,
    on_iteration_end: Callable[[int], None] | None,
    extra: dict[str, Any],
) -> TrainResult:
    out_dir = Path(config.out_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(
            json.dumps({"config": config.to_dict(), "extra": extra,
                        "world_size": info.world_size}, indent=2) + "\n")
    if config.deterministic:
        if info.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(config.seed + info.rank)  # per-rank streams (dropout etc.)

    model.to(info.device)
    optimizer = build_optimizer(model, config)
    per_epoch = iters_per_epoch(len(train_set), config.batch_size, info.world_size)  # type: ignore[arg-type]
    total = config.iterations if config.iterations is not None else config.epochs * per_epoch
    scheduler = build_scheduler(optimizer, config, total)

    iteration, best = 0, None
    clock = _TrainClock()
    class_weights = (None if config.class_weights is None
                     else torch.tensor(config.class_weights, device=info.device))
    resume_path = _resume_path(config, out_dir)
    if resume_path is not None:
        state = load_checkpoint(resume_path)
        _check_resumable(state, config, info, resume_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"][info.rank])
        iteration, best = state["iteration"], state.get("best_metric")
        clock = _TrainClock(state.get("train_seconds", 0.0))
        if info.is_main:
            print(f"resumed from {resume_path} at iteration {iteration}/{total}")

    net: nn.Module = model
    if info.distributed:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)

    logger = MetricsLogger(out_dir, enabled=info.is_main, tensorboard=config.tensorboard,
                           resume_at=iteration if resume_path is not None else None)
    last_path = out_dir / "last.pt" if info.is_main else None
    best_path: Path | None = None
    kill_at = int(os.environ.get(KILL_ENV, "-1"))
    metrics: dict[str, Any] = {}

    def checkpoint(path: Path | None) -> None:
        # Every rank contributes its RNG state; rank 0 writes.
        rng = all_gather_objects(get_rng_state())
        if path is not None:
            save_checkpoint({
                "format": CHECKPOINT_FORMAT,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": None,  # bf16 autocast needs no loss scaling
                "iteration": iteration,
                "epoch": iteration // per_epoch,
                "batch_in_epoch": iteration % per_epoch,
                "rng": rng,
                "world_size": info.world_size,
                "best_metric": best,
                "train_seconds": clock.seconds,
                "config": config.to_dict(),
                "extra": extra,
            }, path)

    def validate() -> dict[str, Any]:
        nonlocal best, best_path
        result = evaluate(net, val_set, config.task,  # type: ignore[arg-type]
                          batch_size=config.eval_batch_size or config.batch_size,
                          num_workers=config.num_workers, bf16=config.bf16, dist_info=info)
        logger.log({"split": "val", "iter": iteration, "train_seconds": clock.seconds,
                    **result})
        value = result.get(PRIMARY_METRIC[config.task], float("nan"))
        if math.isfinite(value) and (best is None or value > best):
            best = value
            if config.keep_best:
                best_path = out_dir / "best.pt" if info.is_main else None
                checkpoint(best_path)
        return result

    bar = tqdm(total=total, initial=iteration, desc="train", dynamic_ncols=True,
               disable=not (config.progress and info.is_main))
    with bar, contextlib.closing(logger):  # closed on errors too (e.g. a stop hook)
        window_loss = torch.zeros(2, dtype=torch.float64)  # (sum of losses, iterations) since log
        window_images, window_start = 0, clock.seconds
        clock.start()
        net.train()
        while iteration < total:
            epoch, start_batch = divmod(iteration, per_epoch)
            loader = train_loader(train_set, config.task, config.batch_size, seed=config.seed,
                                  epoch=epoch, start_batch=start_batch,
                                  world_size=info.world_size, rank=info.rank,
                                  num_workers=config.num_workers,
                                  pin_memory=info.device.type == "cuda")
            for images, targets in loader:
                images, targets = to_device(images, info.device), to_device(targets, info.device)
                lr = scheduler.get_last_lr()[0]
                with autocast(info.device, config.bf16):
                    loss, parts = compute_loss(config.task, net, images, targets, class_weights)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss is {loss.item()} at iteration {iteration} (epoch {epoch}); "
                        "lower lr or set grad_clip_norm"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = None
                if config.grad_clip_norm is not None:
                    grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(),
                                                               config.grad_clip_norm))
                optimizer.step()
                scheduler.step()
                iteration += 1

                window_loss += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
                window_images += num_images(images) * info.world_size
                if iteration % config.log_every == 0 or iteration == total:
                    loss_sum, count = all_reduce_sum(window_loss.clone()).tolist()
                    elapsed = clock.seconds - window_start
                    record = {"split": "train", "iter": iteration, "epoch": epoch,
                              "loss": loss_sum / count, "lr": lr,
                              "images_per_s": window_images / max(elapsed, 1e-9),
                              "train_seconds": clock.seconds,
                              **{k: v.item() for k, v in parts.items()}}
                    if grad_norm is not None:
                        record["grad_norm"] = grad_norm
                    logger.log(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.3g}",
                                    img_s=f"{record['images_per_s']:.1f}")
                    window_loss.zero_()
                    window_images, window_start = 0, clock.seconds
                bar.update(1)

                # (the last iteration's evaluation and checkpoint come after the loop)
                mid_run = iteration < total
                with clock.paused():
                    if val_set is not None and mid_run and _every(iteration, config.eval_every):
                        metrics = validate()
                    if mid_run and _every(iteration, config.checkpoint_every):
                        checkpoint(last_path)
                if on_iteration_end is not None:
                    on_iteration_end(iteration)
                if iteration == kill_at:
                    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
                if iteration >= total:
                    break

        clock.stop()
        if val_set is not None:
            metrics = validate()
        checkpoint(last_path)
    return TrainResult(iteration=iteration, metrics=metrics, best_metric=best,
                       train_seconds=clock.seconds,
                       last_checkpoint=last_path, best_checkpoint=best_path, out_dir=out_dir)


class _TrainClock:
    """Seconds spent training, paused around validation and checkpoints."""

    def __init__(self, seconds: float = 0.0) -> None:
        self._total = float(seconds)
        self._since: float | None = None

    @property
    def seconds(self) -> float:
        running = 0.0 if self._since is None else time.perf_counter() - self._since
        return self._total + running

    def start(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def stop(self) -> None:
        self._total = self.seconds
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
