"""Figures of training runs as PNG (matplotlib): learning curves, segmentation predictions,
a metric per object scale."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from .._extras import require
from ..conventions import IGNORE_INDEX

__all__ = ["plot_learning_curves", "plot_predictions", "plot_scale_recall"]


def _save(fig, path: Path) -> Path:
    from ..viz.plot import _save as save_png

    return save_png(fig, path, dpi=100)


Curve = tuple[Sequence[float], Sequence[float]]  # (x values, y values)


def plot_learning_curves(losses: Mapping[str, Curve], scores: Mapping[str, Curve],
                         path: Path, *, score_label: str = "validation mIoU",
                         score_iterations: Mapping[str, Sequence[float]] | None = None,
                         time_label: str = "training time (s)") -> Path:
    """One line per run: training loss against iteration (``losses``), the validation
    score against training time in seconds (``scores``: runs of equal duration end at
    the same x; ``time_label`` says which time) and, given ``score_iterations`` (the
    iterations of each run's scores), the score against iteration in a middle panel.

    Each loss is a running mean over the iterations since the one logged before it: a last
    window shorter than the one before it (a run's length not a multiple of the log
    period) is left out rather than drawn as a full one; a series of few points is drawn
    with markers (a one-point line would not show)."""
    return _save(_learning_curves_figure(losses, scores, score_label, score_iterations,
                                         time_label), path)


SHORT_SERIES = 10  # points: fewer are drawn with markers


def _full_windows(x: Sequence[float], y: Sequence[float]) -> tuple[list[float], list[float]]:
    """Running-mean losses ``y`` logged at iterations ``x`` without a partial last window:
    one shorter than the window before it (logged at a run's end between two log
    periods, it plunged or jumped the curve's end)."""
    x, y = list(x), list(y)
    if len(x) >= 2:
        before = x[-2] - (x[-3] if len(x) >= 3 else 0)
        if x[-1] - x[-2] < before:
            return x[:-1], y[:-1]
    return x, y


def _learning_curves_figure(losses: Mapping[str, Curve], scores: Mapping[str, Curve],
                            score_label: str,
                            score_iterations: Mapping[str, Sequence[float]] | None,
                            time_label: str = "training time (s)"):
    """The figure :func:`plot_learning_curves` saves."""
    Figure = require("matplotlib.figure", __name__).Figure

    panels = 3 if score_iterations is not None else 2
    fig = Figure(figsize=(5 * panels, 3.4))
    axes = fig.subplots(1, panels)
    for name, (x, y) in losses.items():
        x, y = _full_windows(x, y)
        marker = "o" if len(x) < SHORT_SERIES else None
        axes[0].plot(x, y, label=name, linewidth=1.1, marker=marker, markersize=3)
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("training loss (running mean)")
    axes[0].set_yscale("log")
    if score_iterations is not None:
        for name, (_, y) in scores.items():
            axes[1].plot(list(score_iterations[name]), list(y), marker="o", markersize=3,
                         label=name, linewidth=1.2)
        axes[1].set_xlabel("iteration")
        axes[1].set_ylabel(score_label)
    for name, (x, y) in scores.items():
        axes[-1].plot(list(x), list(y), marker="o", markersize=3, label=name, linewidth=1.2)
    axes[-1].set_xlabel(time_label)
    axes[-1].set_ylabel(score_label)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_scale_recall(rows: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> Path:
    """One line per run: mean object recall per scale bucket (rows of
    :func:`deformconv.runs.recall_by_scale`), the buckets' object counts on the x axis."""
    Figure = require("matplotlib.figure", __name__).Figure

    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    first = next(iter(rows.values()))
    centres = [(r["low"] * r["high"]) ** 0.5 for r in first]
    for name, buckets in rows.items():
        ax.plot(centres, [r["recall"] for r in buckets], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xticks(centres)
    ax.set_xticklabels([f"{r['low']:.0f}-{r['high']:.0f}\n({r['objects']})" for r in first],
                       fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("object size: longer side in px (objects)")
    ax.set_ylabel("object pixels labelled correctly")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) RGB of labels 1..num_classes (tab20)."""
    colormaps = require("matplotlib", __name__).colormaps

    palette = colormaps["tab20"](np.linspace(0, 1, max(num_classes, 2)))[:, :3]
    return palette[np.arange(num_classes) % len(palette)]


def _colour_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) labels -> (H, W, 3): background black, 255 (ignore) white, classes tab20."""
    palette = _palette(num_classes)
    out = np.zeros((*mask.shape, 3))
    for label in range(1, num_classes + 1):
        out[mask == label] = palette[label - 1]
    out[mask == IGNORE_INDEX] = 1.0
    return out


def plot_predictions(images: Sequence[Tensor], truths: Sequence[Tensor],
                     predictions: Mapping[str, Sequence[Tensor]], num_classes: int,
                     path: Path, *, row_titles: Sequence[str] | None = None,
                     class_names: Sequence[str] | None = None) -> Path:
    """A grid, one row per image: the image, its ground-truth mask, each model's prediction;
    ``row_titles`` label the rows (on the image panel); ``class_names`` (one per object
    class) give a colour legend below the grid."""
    Figure = require("matplotlib.figure", __name__).Figure
    Patch = require("matplotlib.patches", __name__).Patch

    from ..viz import to_display_image

    columns = 2 + len(predictions)
    fig = Figure(figsize=(2.2 * columns, 2.2 * len(images)))
    axes = fig.subplots(len(images), columns, squeeze=False)
    titles = ["image", "ground truth", *predictions]
    for row, (image, truth) in enumerate(zip(images, truths, strict=True)):
        panels = [to_display_image(image), _colour_mask(truth.numpy(), num_classes)]
        panels += [_colour_mask(pred[row].numpy(), num_classes) for pred in predictions.values()]
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=9)
        if row_titles is not None:
            axes[row, 0].set_ylabel(row_titles[row], fontsize=8)
    if class_names is not None:
        colours = [(0.0, 0.0, 0.0), *_palette(num_classes)]
        handles = [Patch(facecolor=c, edgecolor="grey", label=name)
                   for c, name in zip(colours, ["background", *class_names], strict=True)]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
                   frameon=False, bbox_to_anchor=(0.5, 0.0))
        fig.subplots_adjust(bottom=0.3 / len(images) + 0.02)
    return _save(fig, path)
