"""DataLoaders whose order is a function of (seed, epoch, rank), so runs resume mid-epoch."""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..data import readable_sample
from .seeding import SeededSamples, sample_seed, worker_init_fn
from .stop import hold_stop_signals_for_workers, leave_stop_signals_to_parent
from .tasks import collate_fn

__all__ = ["ShardSampler", "TrainSampler", "eval_loader", "iters_per_epoch", "loader_batches",
           "train_loader"]


class TrainSampler(Sampler[int]):
    """One epoch of a ``DistributedSampler`` (shuffled by ``seed + epoch``), from ``start`` on.

    Skipping the first ``start`` indices without loading them lets a resumed run pick up
    the exact sample order of the interrupted one. With one process this is a plain
    shuffle; with several, rank r takes every world_size-th index of the same permutation.
    """

    def __init__(
        self, dataset: Sized, world_size: int, rank: int, seed: int, epoch: int, start: int = 0
    ) -> None:
        self.inner = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.inner.set_epoch(epoch)
        if not 0 <= start <= len(self.inner):
            raise ValueError(f"start must be in [0, {len(self.inner)}], got {start}")
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.start, None)

    def __len__(self) -> int:
        return len(self.inner) - self.start


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` in order: every sample exactly once over ranks.

    Unlike ``DistributedSampler`` it does not pad with repeated samples, which would bias
    evaluation metrics.
    """

    def __init__(self, dataset: Sized, world_size: int = 1, rank: int = 0) -> None:
        self.indices = range(rank, len(dataset), world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _ReadableSamples(Dataset):
    """``(i, dataset[i])`` for evaluation, or None for a sample the dataset cannot read (see
    ``data.readable_sample``); the eval loader's collate leaves the None out."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        sample = readable_sample(self.dataset, index)
        return None if sample is None else (index, sample)


def _collate_readable(collate: Callable[[Sequence[Any]], Any], with_indices: bool,
                      batch: Sequence[Any]) -> Any:
    """``collate`` of the samples that are not None, after their dataset indices when
    ``with_indices``; None when none is left."""
    readable = [item for item in batch if item is not None]
    if not readable:
        return None
    collated = collate([sample for _, sample in readable])
    return ([index for index, _ in readable], collated) if with_indices else collated


def iters_per_epoch(dataset_len: int, batch_size: int, world_size: int = 1) -> int:
    """Full batches each rank gets from one epoch (the last partial batch is dropped)."""
    per_rank = -(-dataset_len // world_size)  # DistributedSampler pads to a multiple
    count = per_rank // batch_size
    if count == 0:
        raise ValueError(
            f"the training set has {dataset_len} samples, fewer than one batch of "
            f"batch_size={batch_size} per process ({world_size} process(es)); lower batch_size"
        )
    return count


def train_loader(
    dataset: Dataset,
    task: str,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    start_batch: int = 0,
    world_size: int = 1,
    rank: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Loader for one training epoch, starting after ``start_batch`` batches of that epoch.

    Samples are drawn under RNGs seeded by ``(seed, epoch, index)`` (:class:`SeededSamples`),
    and the loader's generator (which seeds the workers) by ``(seed, epoch, rank)``.
    """
    sampler = TrainSampler(
        dataset, world_size, rank, seed, epoch, start=start_batch * batch_size  # type: ignore[arg-type]
    )
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, -1 - rank))
    return _Loader(
        SeededSamples(dataset, seed, epoch),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        collate_fn=collate_fn(task),
        num_workers=num_workers,
        worker_init_fn=_init_worker,
        generator=generator,
        pin_memory=pin_memory,
    )


class _Loader(DataLoader):
    """A DataLoader whose workers, started during a run, leave stop signals to the run.

    Each iterator starts new workers (each epoch of a run, each validation) with SIGINT and
    SIGTERM held (see ``stop.hold_stop_signals_for_workers``) while a StopSignals is
    installed: torch's worker would die of a SIGTERM that came before ``worker_init_fn``
    had it ignored, and a scheduler's signal to the process group reaches the workers too.
    """

    def __iter__(self) -> Any:
        if self.num_workers == 0:
            return super().__iter__()
        with hold_stop_signals_for_workers() as held:
            # read by the iterator, which starts the workers
            self.worker_init_fn = functools.partial(_init_worker, held=held)
            return super().__iter__()


@contextlib.contextmanager
def loader_batches(loader: DataLoader) -> Iterator[Iterator[Any]]:
    """``iter(loader)``, whose worker processes are shut down however the loop ends.

    After an error the iterator stays referenced from the traceback (its own methods'
    frames) and would live until the interpreter exits, whose ``terminate()`` the workers
    of a run ignore (stop signals are the run's): the process hung in ``join`` after
    printing the error.
    """
    iterator = iter(loader)
    try:
        yield iterator
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)  # iterators with workers
        if shutdown is not None:
            shutdown()


def _init_worker(worker_id: int, held: bool = False) -> None:
    """Leave stop signals to a training parent (``held``: it started this worker with them
    blocked); seed the worker's RNGs."""
    leave_stop_signals_to_parent(held)
    worker_init_fn(worker_id)


def eval_loader(
    dataset: Dataset,
    task: str,
    batch_size: int,
    *,
    world_size: int = 1,
    rank: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    with_indices: bool = False,
) -> DataLoader:
    """Loader over this rank's shard of ``dataset`` in order, keeping the last partial batch.

    Unreadable samples are left out (see ``_ReadableSamples``); a batch of only
    unreadable samples comes out as None. ``with_indices``: each batch comes as
    ``(dataset indices of its samples, batch)``.
    """
    return _Loader(
        SeededSamples(_ReadableSamples(dataset), seed=0, epoch=0),
        batch_size=batch_size,
        sampler=ShardSampler(dataset, world_size, rank),  # type: ignore[arg-type]
        collate_fn=functools.partial(_collate_readable, collate_fn(task), with_indices),
        num_workers=num_workers,
        worker_init_fn=_init_worker,
        generator=torch.Generator().manual_seed(rank),
        pin_memory=pin_memory,
    )
