"""torch.distributed set-up for torchrun (env:// rendezvous) and the few collectives we use.

Launch data-parallel training with e.g. ``torchrun --standalone --nproc_per_node 2 ...``:
torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Without them
everything runs as a single process and the helpers below are no-ops.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "alike_on_every_rank",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "cleanup_distributed",
    "init_distributed",
    "launched_rank",
    "reported_by_rank_0",
    "resolve_device",
    "unwrap_parallel",
]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; another
    device is refused (``ValueError``) unless this machine and torch build have it."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device(
            "cpu"
        )
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be 'auto' or a torch device string, got {device!r}") from err
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        visible = torch.cuda.device_count()
        if dev.index >= visible:
            raise ValueError(
                f"device {dev} (LOCAL_RANK={local_rank}) does not exist: {visible} CUDA "
                "device(s) visible; start at most that many processes per node, or use cpu"
            )
    elif dev.type != "cpu":
        accelerator = (torch.accelerator.current_accelerator()
                       if torch.accelerator.is_available() else None)
        if accelerator is None or accelerator.type != dev.type:
            here = ["cpu"] + ([accelerator.type] if accelerator is not None else [])
            raise ValueError(f"device {device!r} is not available here: this machine and "
                             f"torch build offer {' and '.join(here)}")
    return dev


@contextlib.contextmanager
def alike_on_every_rank() -> Iterator[None]:
    """Marks an exception raised inside as one that every process of a torchrun job raises
    alike (a check of the same arguments, files and agreed values), so that one process
    reports it (:func:`reported_by_rank_0`), not each."""
    try:
        yield
    except Exception as err:
        err.alike_on_every_rank = True  # type: ignore[attr-defined]
        raise


def reported_by_rank_0(err: BaseException) -> bool:
    """Whether rank 0 reports ``err`` for this process: it was raised inside
    :func:`alike_on_every_rank`, this process is not rank 0 of a torchrun job, and every rank
    runs on this node (``LOCAL_WORLD_SIZE == WORLD_SIZE``), reading the same files. On
    several nodes each rank reports its own: one node's files may differ."""
    world = os.environ.get("WORLD_SIZE", "1")
    return (getattr(err, "alike_on_every_rank", False) and launched_rank() != 0
            and world != "1" and os.environ.get("LOCAL_WORLD_SIZE") == world)


def launched_rank() -> int:
    """This process's rank as torchrun's environment gives it (0 without torchrun), before
    the process group is joined."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment, if there is one.

    Backend: NCCL when this process trains on CUDA, gloo otherwise. Idempotent: an
    already-initialised group is reused.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = launched_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    """Leave the process group (if any)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (in place, and returned); identity in a single process."""
    if not _active():
        return tensor
    if dist.get_backend() == "nccl" and not tensor.is_cuda:  # NCCL reduces CUDA tensors only
        on_gpu = tensor.cuda()
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        return tensor.copy_(on_gpu)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def unwrap_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel or DataParallel; any other module as it is,
    even one that keeps its network as ``.module``."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model
