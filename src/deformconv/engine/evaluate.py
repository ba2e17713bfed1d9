"""Evaluation loop: top-1, mIoU or COCO mAP of a model on a dataset (sharded over ranks)."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..data import NoReadableSamplesError
from ..nn import eval_mode
from .distributed import DistInfo, all_reduce_sum, resolve_device, unwrap_parallel
from .loader import ShardSampler, eval_loader, loader_batches
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
    stop_check: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run ``model`` in eval mode over ``dataset`` and return the task's metrics.

    classification: ``{"top1", "num_images"}``; segmentation: ``{"miou", "iou" (per class),
    "pixel_acc", "num_pixels", "num_images"}``; detection: ``{"AP", "AP50", "AP75", "APs",
    "APm", "APl", "num_images"}``; ``num_images`` counts the images scored. With several
    processes each evaluates its shard and the metric is reduced over all of them (every
    rank gets the same result). The model is moved to
    ``device`` (``"auto"``: CUDA when available; ignored when ``dist_info`` is given) and its
    train/eval mode is restored afterwards. Samples the dataset cannot read
    (``load_or_skip`` gives None) are left out and not counted; when none is readable,
    :class:`~deformconv.data.NoReadableSamplesError`; an empty dataset is refused. Detection
    images run in groups of one size, so that a detector's padding of a batch to its largest
    image does not make scores depend on the batch size. When any output holds NaN or inf (a
    diverged model), every score is NaN, with a warning: argmax and COCO's matching would
    score such outputs as plausible predictions. Metrics are of the samples as the dataset
    gives them: masks at the size its transforms leave them (``runs.build_datasets``
    resizes VOC's), COCO ground truth as :class:`~deformconv.data.CocoDetection` cleaned it
    (boxes of no area or outside the image dropped, overhanging ones clipped), so COCO AP
    can differ from ``COCOeval`` on the raw json. ``stop_check()`` is called before each
    batch, as often on every rank (a collective in it pairs up), and may raise to end the
    evaluation there (a training run's stop request).
    """
    if not len(dataset):  # type: ignore[arg-type]
        raise ValueError(f"the {task} dataset is empty (0 samples): nothing to evaluate")
    info = dist_info or DistInfo(device=resolve_device(str(device)))
    net = unwrap_parallel(model)  # no DDP hooks needed for forward-only passes
    net.to(info.device)
    loader = eval_loader(dataset, task, batch_size, world_size=info.world_size, rank=info.rank,
                         num_workers=num_workers, pin_memory=info.device.type == "cuda",
                         with_indices=True)
    evaluator = make_evaluator(task, net)
    readable = non_finite = 0
    # rank 0's shard is the largest: the others check as often after their last batch
    checks = (0 if stop_check is None
              else -(-len(ShardSampler(dataset, info.world_size)) // batch_size))  # type: ignore[arg-type]
    with eval_mode(net), loader_batches(loader) as batches:
        for batch in tqdm(batches, desc="eval", leave=False, total=len(loader),
                          disable=not (progress and info.is_main)):
            if stop_check is not None:
                stop_check()
                checks -= 1
            if batch is None:  # every sample of the batch was unreadable
                continue
            indices, (images, targets) = batch
            readable += num_images(images)
            images = to_device(images, info.device)
            with autocast(info.device, bf16):
                outputs = _detect(net, images) if task == "detection" else net(images)
            outputs = to_device(_float(outputs), torch.device("cpu"))
            if _has_non_finite(outputs):  # scored as NaN below; zeros keep compute() going
                non_finite += 1
                outputs = _apply(outputs, lambda t: t.nan_to_num(0.0, 0.0, 0.0))
            evaluator.update(images, targets, outputs, indices)
        for _ in range(checks):
            stop_check()  # type: ignore[misc]
    readable, non_finite = all_reduce_sum(torch.tensor([readable, non_finite])).tolist()
    if not readable:
        raise NoReadableSamplesError.of(dataset)
    metrics = evaluator.compute()
    metrics.setdefault("num_images", int(readable))  # segmentation counts pixels too
    return _scores_to_nan(metrics, non_finite) if non_finite else metrics


def _detect(net: nn.Module, images: list[torch.Tensor]) -> list[Any]:
    """A detector's outputs for ``images``, run in groups of one size.

    A detector pads a batch to its largest image, and the padding changes the features of
    the smaller ones: scores would depend on which images share a batch, and so on the
    batch size, the order and the number of processes.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    if len(groups) == 1:
        return net(images)
    outputs: list[Any] = [None] * len(images)
    for members in groups.values():
        for i, output in zip(members, net([images[i] for i in members]), strict=True):
            outputs[i] = output
    return outputs


def _has_non_finite(outputs: Any) -> bool:
    """Whether a floating-point tensor in ``outputs`` (nested dicts, lists) holds NaN or inf."""
    if isinstance(outputs, torch.Tensor):
        return outputs.is_floating_point() and not bool(torch.isfinite(outputs).all())
    if isinstance(outputs, dict):
        return any(_has_non_finite(v) for v in outputs.values())
    if isinstance(outputs, (list, tuple)):
        return any(_has_non_finite(v) for v in outputs)
    return False


# Counts, not scores: they stay as computed when the scores turn NaN.
_COUNTS = ("num_images", "num_pixels")


def _scores_to_nan(metrics: dict[str, Any], batches: int) -> dict[str, Any]:
    warnings.warn(f"{batches} evaluation batch(es) gave NaN or inf outputs (a diverged "
                  "model?): every score is NaN", RuntimeWarning, stacklevel=4)
    return {key: value if key in _COUNTS
            else [math.nan] * len(value) if isinstance(value, list) else math.nan
            for key, value in metrics.items()}


def _float(outputs: Any) -> Any:
    """bf16 outputs back to float32 (argmax ties, COCO box coordinates)."""
    return _apply(outputs, lambda t: t.float())


def _apply(outputs: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` on every floating-point tensor of ``outputs`` (nested dicts, lists, tuples)."""
    if isinstance(outputs, torch.Tensor):
        return fn(outputs) if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: _apply(v, fn) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_apply(v, fn) for v in outputs)
    return outputs
