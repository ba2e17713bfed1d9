"""PNG figures of sampling locations (paper Fig. 5/6) and RoI bin offsets (Fig. 7).

Drawn with matplotlib's object API on an Agg canvas: no pyplot, no display, no global
backend change. Coordinates are image pixel indices (pixel i centred at i), as in
:mod:`deformconv.viz.coords`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .._extras import require
from .._paths import check_folder_possible
from .capture import OffsetRecord, layer_label
from .roi import RoIBins
from .sampling import BackProjection, back_project

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_roi_offsets", "plot_sampling_locations", "plot_stacked_sampling",
           "to_display_image"]

UNIT_COLOR = "#00e000"  # the activation unit, green as in the paper
REGULAR_COLOR = "#d0d0d0"  # where the same stack would sample with zero offsets
UNIT_MARKERS = ("o", "s", "^", "D", "v", "P")  # one per activation unit in a figure


def to_display_image(image: Tensor | np.ndarray) -> np.ndarray:
    """``(C, H, W)`` / ``(H, W)`` tensor or ``(H, W, C)`` / ``(H, W)`` array -> float
    ``(H, W, 3)`` in [0, 1]. uint8 is divided by 255; other values outside [0, 1]
    (normalised network inputs) are min-max stretched."""
    if isinstance(image, Tensor):
        array = image.detach().cpu().numpy()
        if array.ndim == 3:
            array = np.moveaxis(array, 0, -1)
    else:
        array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image must be (C, H, W) or (H, W) with C in (1, 3), got shape "
                         f"{tuple(image.shape)}")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    array = array.astype(np.float64)
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        array = (array - low) / max(high - low, 1e-12)
    return array


def _figure(image: np.ndarray, title: str | None) -> tuple[Figure, Axes]:
    Figure = require("matplotlib.figure", __name__).Figure

    height, width = image.shape[:2]
    scale = 6.0 / max(height, width)  # 6 inches on the long side, whatever the image size
    fig = Figure(figsize=(max(width * scale, 2.0), max(height * scale, 2.0)))
    ax = fig.add_subplot()
    ax.imshow(image, interpolation="nearest")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return fig, ax


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    check_folder_possible(path.parent, f"cannot write {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _legend_below(ax: Axes, **options: object) -> None:
    """The legend below the image, where it hides nothing drawn on it; ``options`` go to
    ``ax.legend``."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), fontsize=6, ncol=2,
              **{"frameon": False, **options})


def plot_sampling_locations(
    image: Tensor | np.ndarray,
    projections: BackProjection | Sequence[BackProjection],
    path: str | Path,
    *,
    title: str | None = None,
    dpi: int = 100,
    regular: Sequence[BackProjection] = (),
) -> Path:
    """Draw the sampling points of one or more activation units over ``image``; save a PNG.

    Each level of a :class:`~deformconv.viz.sampling.BackProjection` has its own colour
    (the bottom level red, as in the paper's Fig. 5), points shrinking with depth; the
    activation unit is a green star, drawn over the points. Several units' points have
    their own marker shapes, and their stars are numbered as in the legend. ``regular``:
    the same units' projections with zero offsets, whose image points are drawn as hollow
    grey circles (where plain convs would sample). The legend, below the image, counts each
    level's points and, when some fall outside the image (the axes show only the image),
    those inside it. Returns the path written.
    """
    if isinstance(projections, BackProjection):
        projections = [projections]
    fig = _sampling_figure(to_display_image(image), projections, title, regular)
    return _save(fig, path, dpi)


def _inside(points: Tensor, height: int, width: int) -> int:
    """How many (y, x) ``points`` lie on the image (pixel i covers [i - 0.5, i + 0.5])."""
    y, x = points[:, 0], points[:, 1]
    return int(((y >= -0.5) & (y <= height - 0.5) & (x >= -0.5) & (x <= width - 0.5)).sum())


def _sampling_figure(shown: np.ndarray, projections: Sequence[BackProjection],
                     title: str | None, regular: Sequence[BackProjection]) -> Figure:
    """The figure :func:`plot_sampling_locations` saves."""
    colormaps = require("matplotlib", __name__).colormaps

    fig, ax = _figure(shown, title)
    height, width = shown.shape[:2]
    for n, projection in enumerate(regular):
        points = projection.points
        ax.scatter(points[:, 1].numpy(), points[:, 0].numpy(), s=30, facecolors="none",
                   edgecolors=REGULAR_COLOR, linewidths=0.9,
                   label="regular grid (zero offsets)" if n == 0 else None)
    depth = max((len(p.levels) for p in projections), default=0)
    # levels run top to bottom: the bottom one red (1.0), a single level too
    colors = colormaps["autumn_r"](np.linspace(0.15, 1.0, depth) if depth > 1
                                   else np.ones(depth))
    several = len(projections) > 1
    for n, projection in enumerate(projections):
        marker = UNIT_MARKERS[n % len(UNIT_MARKERS)]
        for level, points in enumerate(projection.levels):
            size = max(40.0 / 3**level, 2.0)
            inside = _inside(points, height, width)
            count = (f"{len(points)} pts" if inside == len(points) else
                     f"{len(points)} pts, {inside} in the image")
            label = f"{layer_label(projection.layers[level])} ({count})"
            ax.scatter(points[:, 1].numpy(), points[:, 0].numpy(), s=size, c=[colors[level]],
                       marker=marker, linewidths=0, alpha=0.85,
                       label=f"unit {n + 1}: {label}" if several else label)
    for n, projection in enumerate(projections):  # last, so that no point hides a unit
        y, x = float(projection.unit[0]), float(projection.unit[1])
        ax.scatter([x], [y], s=120, c=UNIT_COLOR, marker="*", edgecolors="black",
                   linewidths=0.5, label="activation unit" if n == 0 else None, zorder=3)
        if several:
            ax.annotate(str(n + 1), (x, y), xytext=(4, 4), textcoords="offset points",
                        fontsize=7, color=UNIT_COLOR, fontweight="bold", zorder=3)
    if projections:
        _legend_below(ax)
    return fig


def plot_stacked_sampling(
    image: Tensor | np.ndarray,
    records: Sequence[OffsetRecord],
    units: Sequence[tuple[int, int]],
    path: str | Path,
    *,
    image_index: int = 0,
    group: int | None = None,
    lookup: str = "bilinear",
    title: str | None = None,
    regular: bool = True,
) -> Path:
    """:func:`~deformconv.viz.sampling.back_project` each unit (top-layer output (y, x))
    through ``records`` (bottom layer first) and draw them with
    :func:`plot_sampling_locations`. ``image`` is the record's kept image ``image_index``.
    ``regular``: also draw where the stack samples with zero offsets."""
    projections = [back_project(records, unit, image_index, group=group, lookup=lookup)
                   for unit in units]
    grids = []
    if regular:
        still = [dataclasses.replace(rec, offset=torch.zeros_like(rec.offset))
                 for rec in records]
        grids = [back_project(still, unit, image_index, group=group, lookup=lookup)
                 for unit in units]
    return plot_sampling_locations(image, projections, path, title=title, regular=grids)


def plot_roi_offsets(
    image: Tensor | np.ndarray,
    bins: RoIBins | Sequence[RoIBins],
    path: str | Path,
    *,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Draw RoIs (red outline), their regular bin grid (dashed white) and the bins moved by
    the learned offsets (yellow; cyan arrows from the regular bin centres) over ``image``;
    save a PNG. The legend, below the image, names each. Returns the path written."""
    if isinstance(bins, RoIBins):
        bins = [bins]
    return _save(_roi_figure(to_display_image(image), bins, title), path, dpi)


def _roi_figure(shown: np.ndarray, bins: Sequence[RoIBins], title: str | None) -> Figure:
    """The figure :func:`plot_roi_offsets` saves."""
    Rectangle = require("matplotlib.patches", __name__).Rectangle
    Line2D = require("matplotlib.lines", __name__).Line2D

    fig, ax = _figure(shown, title)
    for n, roi in enumerate(bins):
        x1, y1, x2, y2 = roi.roi.tolist()
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red",
                               linewidth=2.0, label="RoI" if n == 0 else None))
        for box, label, style in (
                (roi.bins, "regular bins (zero offsets)",
                 dict(edgecolor="white", linestyle="--", linewidth=0.6)),
                (roi.shifted, "bins shifted by the offsets",
                 dict(edgecolor="yellow", linewidth=1.2))):
            for m, (bx1, by1, bx2, by2) in enumerate(box.reshape(-1, 4).tolist()):
                ax.add_patch(Rectangle((bx1, by1), bx2 - bx1, by2 - by1, fill=False,
                                       label=label if n == 0 and m == 0 else None, **style))
        centres = torch.stack([(roi.bins[..., 0] + roi.bins[..., 2]) / 2,
                               (roi.bins[..., 1] + roi.bins[..., 3]) / 2], dim=-1).reshape(-1, 2)
        shifts = roi.shifts.reshape(-1, 2)
        ax.quiver(centres[:, 0].numpy(), centres[:, 1].numpy(), shifts[:, 0].numpy(),
                  shifts[:, 1].numpy(), angles="xy", scale_units="xy", scale=1.0,
                  color="cyan", width=0.002, alpha=0.8)
    if bins:
        # a quiver's own legend entry is a filled box; a grey frame shows the white grid
        arrow = Line2D([], [], color="cyan", marker=r"$\rightarrow$", linestyle="None",
                       markersize=10, label="bin shifts (from the regular bin centres)")
        _legend_below(ax, handles=[*ax.get_legend_handles_labels()[0], arrow],
                      frameon=True, facecolor="0.45", edgecolor="none")
    return fig
