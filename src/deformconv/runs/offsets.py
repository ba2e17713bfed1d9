"""Offsets of a model on some samples of a dataset: figures, statistics, effective dilation.

The dataset-aware layer over :mod:`deformconv.viz`: picks the samples, finds each one's
object extents (instance masks of synthetic scenes, boxes, semantic masks) and feeds them,
batched, to :func:`~deformconv.viz.offset_report` or :class:`~deformconv.viz.DilationStats`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..nn import eval_mode

__all__ = ["DilationSummary", "dilation_over", "offset_figures", "offset_inputs", "sample_targets"]


def _detector_scale(model: nn.Module, height: int, width: int) -> float:
    """How torchvision's GeneralizedRCNNTransform resizes an (height, width) image in eval."""
    transform = model.transform  # type: ignore[attr-defined]
    min_size, max_size = float(transform.min_size[-1]), float(transform.max_size)
    return min(min_size / min(height, width), max_size / max(height, width))


def sample_targets(dataset: Dataset, index: int, task: str, target: Any) -> dict[str, Tensor]:
    """Object extents of one sample for the size buckets: ``{"masks": (K, H, W) bool}`` from
    a synthetic scene, ``{"boxes": (K, 4)}`` for detection, ``{"masks": (H, W)}`` (a
    semantic mask: each class one object) for other segmentation data; {} if none."""
    if task != "detection" and hasattr(dataset, "scene"):
        return {"masks": torch.from_numpy(dataset.scene(index).masks)}  # type: ignore[attr-defined]
    if task == "detection":
        return {"boxes": target["boxes"]}
    if task == "segmentation":
        return {"masks": target}
    return {}


def offset_inputs(model: nn.Module, dataset: Dataset, indices: Sequence[int], task: str
                  ) -> tuple[Any, list[Tensor] | None, list[Tensor] | None, str | None]:
    """``(model input, boxes, masks, input_module)`` of samples ``indices`` for
    :func:`~deformconv.viz.offset_report` and :class:`~deformconv.viz.OffsetCapture`: a
    ``(N, 3, H, W)`` batch (a list of images for detection, whose backbone input is
    captured), boxes scaled as the detector resizes, or per-image masks (None if absent)."""
    images, boxes, masks = [], [], []
    for i in indices:
        image, target = dataset[i]
        images.append(image)
        extent = sample_targets(dataset, i, task, target)
        if "boxes" in extent:
            scale = _detector_scale(model, *image.shape[-2:])
            boxes.append(extent["boxes"] * scale)
        elif "masks" in extent:
            masks.append(extent["masks"])
    device = next(model.parameters()).device
    if task == "detection":
        return [im.to(device) for im in images], boxes, None, "backbone"
    if len({tuple(im.shape) for im in images}) > 1:
        raise ValueError("the chosen images differ in size; pick images of one size")
    batch = torch.stack(images).to(device)
    return batch, None, masks if len(masks) == len(images) else None, None


def offset_figures(model: nn.Module, dataset: Dataset, indices: Sequence[int], task: str,
                   out_dir: Path, *, prefix: str = "", stack_depth: int = 3,
                   on_write: Callable[[Path], object] | None = None) -> Any:
    """Run :func:`deformconv.viz.offset_report` on samples ``indices`` (``on_write`` is
    called with each figure's path before it is written); returns the report."""
    from ..viz import offset_report

    for i in indices:
        if not 0 <= i < len(dataset):  # type: ignore[arg-type]
            raise ValueError(f"image index {i} is out of range: the dataset has "
                           f"{len(dataset)} samples")  # type: ignore[arg-type]
    with eval_mode(model):
        inputs, boxes, masks, input_module = offset_inputs(model, dataset, indices, task)
        report = offset_report(model, inputs, out_dir, boxes=boxes, masks=masks,
                               input_module=input_module, stack_depth=stack_depth,
                               max_figures=len(indices), prefix=prefix,
                               image_ids=indices, on_write=on_write)
    if not report.figures:
        raise ValueError(f"{type(model).__name__} has no deformable layers to plot "
                       "(a plain twin?)")
    return report


class DilationSummary:
    """Effective dilation per layer and object size, accumulated over many images."""

    def __init__(self) -> None:
        from ..viz import DilationStats

        self.stats = DilationStats()

    def rows(self) -> list[dict[str, object]]:
        return self.stats.rows()

    def markdown(self) -> str:
        from ..viz import format_dilation_table

        return format_dilation_table(self.rows())


@torch.no_grad()
def dilation_over(model: nn.Module, dataset: Dataset, indices: Sequence[int], task: str,
                  batch_size: int = 8) -> DilationSummary:
    """Effective dilation (paper Table 2 analog) over ``indices``, in batches."""
    from ..viz import OffsetCapture

    summary = DilationSummary()
    with eval_mode(model):
        for start in range(0, len(indices), batch_size):
            chunk = list(indices[start:start + batch_size])
            inputs, boxes, masks, input_module = offset_inputs(model, dataset, chunk, task)
            if boxes is None and masks is None:
                continue
            with OffsetCapture(model, max_calls=1, input_module=input_module) as capture:
                model(inputs)
            for record in capture.latest().values():
                summary.stats.update(record, boxes=boxes, masks=masks)
    return summary
