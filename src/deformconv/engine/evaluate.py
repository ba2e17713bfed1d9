"""Evaluation loop: top-1, mIoU or COCO mAP of a model on a dataset (sharded over ranks)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..data import NoReadableSamplesError
from .distributed import DistInfo, all_reduce_sum, resolve_device
from .loader import eval_loader
from .tasks import make_evaluator, num_images, to_device

__all__ = ["evaluate"]


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` (CPU or CUDA) when ``enabled``."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    task: str,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    bf16: bool = False,
    dist_info: DistInfo | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``model`` in eval mode over ``dataset`` and return the task's metrics.

    classification: ``{"top1", "num_images"}``; segmentation: ``{"miou", "iou" (per class),
    "pixel_acc", "num_pixels"}``; detection: ``{"AP", "AP50", "AP75", "APs", "APm", "APl",
    "num_images"}``. With several processes each evaluates its shard and the metric is
    reduced over all of them (every rank gets the same result). The model is moved to
    ``device`` (``"auto"``: CUDA when available; ignored when ``dist_info`` is given) and its
    train/eval mode is restored afterwards. Samples the dataset cannot read
    (``load_or_skip`` gives None) are left out and not counted; when none is readable,
    :class:`~deformconv.data.NoReadableSamplesError`.
    """
    info = dist_info or DistInfo(device=resolve_device(str(device)))
    net = getattr(model, "module", model)  # no DDP hooks needed for forward-only passes
    net.to(info.device)
    was_training = net.training
    net.eval()
    loader = eval_loader(dataset, task, batch_size, world_size=info.world_size, rank=info.rank,
                         num_workers=num_workers, pin_memory=info.device.type == "cuda")
    evaluator = make_evaluator(task)
    readable = 0
    try:
        for batch in tqdm(loader, desc="eval", leave=False,
                          disable=not (progress and info.is_main)):
            if batch is None:  # every sample of the batch was unreadable
                continue
            images, targets = batch
            readable += num_images(images)
            images = to_device(images, info.device)
            with autocast(info.device, bf16):
                outputs = net(images)
            outputs = to_device(_float(outputs), torch.device("cpu"))
            evaluator.update(images, targets, outputs)
        if len(dataset) and not all_reduce_sum(torch.tensor([readable])).item():  # type: ignore[arg-type]
            raise NoReadableSamplesError.of(dataset)
        return evaluator.compute()
    finally:
        net.train(was_training)


def _float(outputs: Any) -> Any:
    """bf16 outputs back to float32 (argmax ties, COCO box coordinates)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: _float(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_float(v) for v in outputs)
    return outputs
