"""Figures of training runs as PNG: learning curves and segmentation predictions (matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

__all__ = ["plot_losses", "plot_predictions"]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    return path


def plot_losses(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], path: Path
                ) -> Path:
    """One line per run: training loss against iteration."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot()
    for name, (iters, losses) in curves.items():
        ax.plot(list(iters), list(losses), label=name, linewidth=1.2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _colour_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) labels -> (H, W, 3): background black, 255 (ignore) white, classes tab20."""
    from matplotlib import colormaps

    palette = colormaps["tab20"](np.linspace(0, 1, max(num_classes, 2)))[:, :3]
    out = np.zeros((*mask.shape, 3))
    for label in range(1, num_classes + 1):
        out[mask == label] = palette[(label - 1) % len(palette)]
    out[mask == 255] = 1.0
    return out


def plot_predictions(images: Sequence[Tensor], truths: Sequence[Tensor],
                     predictions: Mapping[str, Sequence[Tensor]], num_classes: int,
                     path: Path) -> Path:
    """A grid, one row per image: the image, its ground-truth mask, each model's prediction."""
    from matplotlib.figure import Figure

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
    return _save(fig, path)
