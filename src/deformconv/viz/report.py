"""One call from a model and a batch to offset figures and tables, for the CLI's reports."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..conventions import IGNORE_INDEX
from .capture import OffsetCapture, layer_label
from .dilation import effective_dilation_table, format_dilation_table
from .plot import plot_roi_offsets, plot_stacked_sampling
from .roi import roi_bins
from .sampling import unit_at
from .stats import offset_statistics
from .table import markdown_table

__all__ = ["OffsetReport", "figures_in", "offset_report"]


def figures_in(folder: Path, prefix: str = "") -> list[Path]:
    """The files in ``folder`` named as :func:`offset_report` names its figures with
    ``prefix`` (``sampling_3.png``, ``roi_offsets1_3.png``; not ``sampling_notes.png``)."""
    name = re.compile(rf"{re.escape(prefix)}(sampling|roi_offsets\d*)_\d+\.png")
    return sorted(path for path in folder.glob(f"{prefix}*.png") if name.fullmatch(path.name))


@dataclass
class OffsetReport:
    """Figures written and tables computed by :func:`offset_report`.

    ``offset_rows``: :func:`~deformconv.viz.offset_statistics`; ``dilation_rows``:
    :func:`~deformconv.viz.effective_dilation_table` (empty without boxes or masks).
    """

    out_dir: Path
    figures: list[Path] = field(default_factory=list)
    offset_rows: list[dict[str, object]] = field(default_factory=list)
    dilation_rows: list[dict[str, object]] = field(default_factory=list)

    def markdown(self, heading_level: int = 2) -> str:
        """The tables and the figures (linked relative to ``out_dir``) as markdown."""
        hashes = "#" * heading_level
        parts = []
        if self.offset_rows:
            parts += [f"{hashes} Learned offsets", "",
                      "Mean / max |offset| and mean displacement of a sampling point, in "
                      "input-feature pixels per layer.", "",
                      markdown_table(self.offset_rows), ""]
        if self.dilation_rows:
            parts += [f"{hashes} Effective dilation by object size", "",
                      "Mean distance between adjacent sampling points of each kernel "
                      "(mean ± std over output pixels; the layer's dilation at zero offset).",
                      "", format_dilation_table(self.dilation_rows), ""]
        if self.figures:
            parts += [f"{hashes} Figures", ""]
            parts += [f"![{path.stem}]({path.relative_to(self.out_dir).as_posix()})"
                      for path in self.figures]
            parts.append("")
        return "\n".join(parts)


def _units(boxes: Tensor | None, masks: Tensor | None, image_size: tuple[int, int],
           per_image: int) -> list[tuple[float, float]]:
    """Image points (y, x) to back-project from: centres of the largest boxes; or, given
    instance masks ``(K, H, W)`` or ``(H, W)`` ids (instances or classes; 0 and 255 are
    none), the pixel of each of the largest objects nearest to its centroid (on the object
    even for an outline); else the image centre."""
    if boxes is not None and len(boxes):
        boxes = boxes.detach().cpu().double()
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        chosen = boxes[area.argsort(descending=True)[:per_image]]
        # box edges -> pixel-index coordinates of the centre
        return [(float((b[1] + b[3]) / 2 - 0.5), float((b[0] + b[2]) / 2 - 0.5))
                for b in chosen]
    if masks is not None and masks.dim() == 2:
        ids = masks.detach().cpu().long()
        objects = [i for i in ids.unique().tolist() if i not in (0, IGNORE_INDEX)]
        masks = torch.stack([ids == i for i in objects]) if objects else None
    if masks is not None and masks.dim() == 3 and bool(masks.any()):
        masks = masks.detach().cpu().bool()
        points = []
        for k in masks.flatten(1).sum(1).argsort(descending=True)[:per_image].tolist():
            pixels = masks[k].nonzero().double()  # (P, 2) y, x
            if len(pixels):
                nearest = (pixels - pixels.mean(0)).square().sum(1).argmin()
                points.append((float(pixels[nearest, 0]), float(pixels[nearest, 1])))
        return points
    return [((image_size[0] - 1) / 2, (image_size[1] - 1) / 2)]


def _offset_class(offset: Tensor) -> int:
    """The offset set to draw for RoIs with ``offset`` (K, 2*classes, p, p): the only one,
    or with class-specific offsets (R-FCN's score maps) the object class (not the
    background's, 0) whose bins move most on average."""
    classes = offset.shape[1] // 2
    if classes == 1:
        return 0
    moved = offset.abs().reshape(offset.shape[0], classes, -1).mean((0, 2))
    return 1 + int(moved[1:].argmax())


def offset_report(
    model: nn.Module,
    inputs: object,
    out_dir: str | Path,
    *,
    boxes: Sequence[Tensor] | None = None,
    masks: Sequence[Tensor] | None = None,
    layers: Sequence[str] | None = None,
    input_module: str | None = None,
    stack_depth: int = 3,
    max_figures: int = 4,
    units_per_image: int = 2,
    max_rois: int = 4,
    thresholds: tuple[float, float] | None = None,
    prefix: str = "",
    image_ids: Sequence[int] | None = None,
    on_write: Callable[[Path], object] | None = None,
) -> OffsetReport:
    """Run ``model(inputs)`` once (no gradients, mode unchanged) and write offset figures.

    Writes ``{prefix}sampling_{id}.png`` (the top ``stack_depth`` deformable convs
    back-projected from the centres of the ``units_per_image`` largest boxes or instance
    masks, or the image centre; paper Fig. 5) and ``{prefix}roi_offsets_{id}.png`` (first
    ``max_rois`` RoIs of each deformable RoI pooling; Fig. 7) for the first ``max_figures``
    images, and computes offset statistics and, given ``boxes`` or ``masks``, the effective
    dilation table.

    Args:
        model: any model with deformable layers; called as ``model(inputs)``.
        inputs: its input, e.g. an ``(N, C, H, W)`` batch.
        out_dir: folder for the PNGs (created).
        boxes: per image ``(M, 4)`` x1, y1, x2, y2, in the coordinates of the tensor
            ``input_module`` receives: where the sampling figures look, and the objects of
            the dilation table.
        masks: instead of ``boxes``, per image ``(H, W)`` instance ids (0 = none), in the
            same coordinates.
        layers, input_module: as :class:`~deformconv.viz.OffsetCapture`; ``input_module``
            must receive an ``(N, C, H, W)`` tensor (e.g. ``"backbone"`` for detectors).
        stack_depth: how many of the top deformable convs the sampling figures back-project
            through (>= 1).
        max_figures: figures of each kind are drawn for the first this many images.
        units_per_image: output units drawn per image, at the centres of the largest boxes
            or masks.
        max_rois: RoIs drawn per image and deformable RoI pooling.
        thresholds: object-area limits for the size buckets (default: COCO's, scaled to
            the image size, :func:`~deformconv.viz.scale_thresholds`).
        prefix: put before every file name, to keep several reports in one folder.
        image_ids: the number of each image in the titles (``"image {id}"``) and file
            names (default its place in the batch: 0, 1, ...), e.g. its data set index.
        on_write: called with each figure's path before the figure is written, e.g. to
            note it as this report's before a crash could leave it half done.

    Returns:
        An :class:`OffsetReport`: the PNGs written, the offset statistics and the
        effective dilation table.
    """
    if stack_depth < 1:
        raise ValueError(f"stack_depth must be >= 1, got {stack_depth}")
    out_dir = Path(out_dir)
    capture = OffsetCapture(model, layers, max_calls=1, input_module=input_module,
                            keep_inputs=True)
    with torch.no_grad(), capture:
        model(inputs)
    if not capture.inputs:
        raise ValueError("the images were not seen: the model (or input_module) must take an "
                         "(N, C, H, W) tensor as its first argument; set input_module")
    images = capture.inputs[0]
    ids = list(image_ids) if image_ids is not None else list(range(len(images)))
    if len(ids) != len(images):
        raise ValueError(f"image_ids must number each of the {len(images)} images, got "
                         f"{len(ids)} ids")
    report = OffsetReport(out_dir)
    before_write = on_write or (lambda path: None)
    convs = capture.latest()
    if convs:
        report.offset_rows = offset_statistics(convs)
        stack = list(convs.values())[-stack_depth:]
        top = stack[-1]
        for i in range(min(max_figures, len(images))):
            points = _units(None if boxes is None else boxes[i],
                            None if masks is None else masks[i], top.image_size,
                            units_per_image)
            units = list(dict.fromkeys(unit_at(top, point) for point in points))
            names = ", ".join(layer_label(rec.name) for rec in stack)
            path = out_dir / f"{prefix}sampling_{ids[i]}.png"
            before_write(path)
            report.figures.append(plot_stacked_sampling(
                images[i], stack, units, path, image_index=i,
                title=f"image {ids[i]}: sampling points of {names}"))
        if boxes is not None or masks is not None:
            report.dilation_rows = effective_dilation_table(convs, boxes=boxes, masks=masks,
                                                            thresholds=thresholds)
    for n, (name, rec) in enumerate(capture.latest_rois().items()):
        for i in range(min(max_figures, len(images))):
            chosen = (rec.rois[:, 0] == i).nonzero().flatten()[:max_rois].tolist()
            if chosen:
                path = out_dir / f"{prefix}roi_offsets{n or ''}_{ids[i]}.png"
                drawn = _offset_class(rec.offset[chosen])
                title = f"image {ids[i]}: {name or type(model).__name__}"
                if drawn:
                    title += f", class {drawn}'s offsets"
                before_write(path)
                report.figures.append(plot_roi_offsets(
                    images[i], [roi_bins(rec, k, drawn) for k in chosen], path, title=title))
    return report
