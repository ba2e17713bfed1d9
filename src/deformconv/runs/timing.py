"""Cost of a model on this machine: parameters, training step time, inference time, threads.

Times are wall-clock, best or median of a few repeats after a warm-up; models compared in
one call take turns, so a burst of load from elsewhere hits them alike.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..ops.arguments import count as positive_count

__all__ = ["ms_per_image", "parameter_count", "seconds_per_batch", "seconds_per_iteration",
           "set_threads", "step_seconds", "threads_set_to"]


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def set_threads(count: int) -> None:
    """Intra-op threads of torch, which the CPU kernels use too; ``count`` an int > 0."""
    torch.set_num_threads(positive_count(count, "count"))


@contextmanager
def threads_set_to(count: int) -> Iterator[None]:
    """:func:`set_threads` ``count`` inside the block, the count before it back after it."""
    before = torch.get_num_threads()
    set_threads(count)
    try:
        yield
    finally:
        set_threads(before)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: wait before reading the clock
        torch.cuda.synchronize(device)


def seconds_per_iteration(model: nn.Module, task: str, dataset: Dataset, batch_size: int,
                          device: torch.device, steps: int = 3,
                          clock: Callable[[], float] = time.perf_counter) -> float:
    """Median time of one SGD step (forward, loss, backward, update) of a copy of ``model``
    on batches of ``dataset``, after one warm-up step; drawing the batch is left out.
    ``clock=time.process_time`` counts this process's CPU seconds instead of wall-clock
    ones (with one thread: the step's own work, however busy the machine is)."""
    from ..engine import train_loader
    from ..engine.tasks import to_device

    net = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-6)
    loader = iter(train_loader(dataset, task, batch_size, seed=0, epoch=0))
    times = []
    for _ in range(steps + 1):
        images, targets = to_device(next(loader), device)
        times.append(_timed_step(task, net, optimizer, images, targets, device, clock))
    return _median_after_warm_up(times)


def step_seconds(models: dict[str, nn.Module], task: str, dataset: Dataset, batch_size: int,
                 device: torch.device, optimizer: Callable[[nn.Module], torch.optim.Optimizer],
                 steps: int = 25, clock: Callable[[], float] | None = None
                 ) -> dict[str, float]:
    """Median cost of one training step (forward, loss, backward, ``optimizer`` update) of
    a copy of each model on one batch of ``dataset``, the models taking turns, after one
    warm-up step each. By default, on a CPU the cost is the process's CPU time, which other
    processes on the machine barely change (their load makes wall-clock steps vary by tens
    of percent); on an accelerator, wall-clock time; ``clock`` sets it."""
    from ..engine import train_loader
    from ..engine.tasks import to_device

    if clock is None:
        clock = time.process_time if device.type == "cpu" else time.perf_counter
    nets = {name: copy.deepcopy(model).to(device).train() for name, model in models.items()}
    optimizers = {name: optimizer(net) for name, net in nets.items()}
    images, targets = to_device(next(iter(train_loader(dataset, task, batch_size, seed=0,
                                                       epoch=0))), device)
    times: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(steps + 1):
        for name, net in nets.items():
            times[name].append(_timed_step(task, net, optimizers[name], images, targets, device,
                                           clock))
    return {name: _median_after_warm_up(t) for name, t in times.items()}


def _median_after_warm_up(times: list[float]) -> float:
    """The median of ``times`` without the first (warm-up) one."""
    kept = sorted(times[1:])
    return kept[len(kept) // 2]


def _timed_step(task: str, net: nn.Module, optimizer: torch.optim.Optimizer, images: Any,
                targets: Any, device: torch.device, clock: Callable[[], float]) -> float:
    """Seconds of ``clock`` for one training step of ``net`` on a batch already on its
    device: forward, loss, backward, ``optimizer`` update (waiting for a GPU to finish)."""
    from ..engine import compute_loss

    start = clock()
    loss, _ = compute_loss(task, net, images, targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    _sync(device)
    return clock() - start


def seconds_per_batch(dataset: Dataset, task: str, batch_size: int, batches: int = 3
                      ) -> float:
    """Mean time to draw and collate one training batch (synthetic scenes are rendered on
    the fly, which :func:`seconds_per_iteration` leaves out)."""
    from ..engine import train_loader

    loader = iter(train_loader(dataset, task, batch_size, seed=0, epoch=0))
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return (time.perf_counter() - start) / batches


@torch.no_grad()
def ms_per_image(models: dict[str, nn.Module], batch: torch.Tensor,
                 repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` eval forward time per image of each model on ``batch``
    ``(N, 3, H, W)``, in ms. Leaves the models in eval mode."""
    for model in models.values():
        model.eval()
        model(batch)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(batch)
            _sync(batch.device)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * min(t) / batch.shape[0] for name, t in times.items()}
