"""The demo's analysis and ``report.md``: what the trained runs do differently, and where.

:func:`analyse` evaluates the runs of :func:`deformconv.runs.run_demo` image by image and
object by object and draws the figures; :func:`write_report` writes the markdown that
shows them; :func:`comparison_table` is its main table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

__all__ = ["analyse", "comparison_table", "write_report"]

REFERENCE_ORDER = ("plain, equal time", "plain")  # the deformable run is compared with


def _reference(runs: Mapping[str, Any]) -> str:
    return next(name for name in REFERENCE_ORDER if name in runs)


def _curves(out: Path, names: Sequence[str]) -> tuple[dict, dict]:
    """(training loss by iteration, validation mIoU by training seconds) of runs ``names``."""
    from ..engine import read_metrics
    from .demo import run_folder

    losses, scores = {}, {}
    for name in names:
        records = read_metrics(out / run_folder(name) / "metrics.jsonl")
        train = [r for r in records if r["split"] == "train"]
        val = [r for r in records if r["split"] == "val"]
        losses[name] = ([r["iter"] for r in train], [r["loss"] for r in train])
        scores[name] = ([r["train_seconds"] for r in val], [r["miou"] for r in val])
    return losses, scores


def _examples(gains: list[float], count: int) -> list[int]:
    """The ``count`` images with the largest gain, then the one with the smallest."""
    order = sorted(range(len(gains)), key=lambda i: gains[i], reverse=True)
    chosen = order[:count]
    if order[-1] not in chosen:
        chosen.append(order[-1])
    return chosen


def analyse(s: Any, models: Mapping[str, nn.Module], val_set: Dataset, classes: int,
            out: Path) -> dict[str, Any]:
    """Per-image mIoU, object recall per scale, example choice and every figure; the part
    of ``metrics.json`` that describes them."""
    from .breakdown import image_mious, object_recalls, predict_masks, recall_by_scale
    from .breakdown import scale_edges as make_edges
    from .offsets import dilation_over, offset_figures
    from .plots import plot_learning_curves, plot_predictions, plot_scale_recall

    masks = val_set.targets  # type: ignore[attr-defined]
    predictions = {name: predict_masks(model, val_set) for name, model in models.items()}
    mious = {name: image_mious(p, masks, classes + 1) for name, p in predictions.items()}
    reference = _reference(models)
    gains = [d - r if not (math.isnan(d) or math.isnan(r)) else 0.0
             for d, r in zip(mious["deformable"], mious[reference], strict=True)]
    chosen = _examples(gains, min(s.figures, len(gains)))

    config = val_set.config  # type: ignore[attr-defined]
    edges = make_edges(config.min_object_size, config.max_object_size * min(config.image_size))
    by_scale = {name: recall_by_scale(object_recalls(p, val_set), edges)
                for name, p in predictions.items()}

    losses, scores = _curves(out, list(models))
    figures = {"curves": plot_learning_curves(losses, scores, out / "curves.png").name,
               "scales": plot_scale_recall(by_scale, out / "scales.png").name}
    titles = [f"val {i}: {mious['deformable'][i]:.2f} vs {mious[reference][i]:.2f}"
              for i in chosen]
    figures["predictions"] = plot_predictions(
        [val_set[i][0] for i in chosen], [masks[i] for i in chosen],
        {name: p[chosen] for name, p in predictions.items()}, classes,
        out / "predictions.png", row_titles=titles).name
    offsets = offset_figures(models["deformable"], val_set, chosen[:-1] or chosen,
                             "segmentation", out, prefix="offsets_")
    figures["sampling"] = [p.name for p in offsets.figures]
    dilation = dilation_over(models["deformable"], val_set, list(range(len(masks))),
                             "segmentation", batch_size=s.batch_size).rows()
    return {"reference": reference, "examples": chosen, "example_gains": [gains[i] for i in chosen],
            "image_miou": mious, "recall_by_scale": by_scale, "offsets": offsets.offset_rows,
            "dilation": dilation, "figures": figures}


def comparison_table(summary: Mapping[str, Any]) -> str:
    """Markdown: per run, iterations, training time, mIoU, pixel accuracy, cost."""
    from ..viz import markdown_table

    rows = []
    for name, r in summary["runs"].items():
        rows.append({"run": name, "iterations": r["iterations"],
                     "train s": r["train_seconds"], "mIoU": r["metrics"]["miou"],
                     "pixel acc": r["metrics"]["pixel_acc"], "params": f"{r['params']:,}",
                     "ms / image": r["ms_per_image"]})
    return markdown_table(rows, digits=3)


def _verdict(summary: Mapping[str, Any]) -> list[str]:
    runs = summary["runs"]
    deformable = runs["deformable"]["metrics"]["miou"]
    lines = []
    for name, label in (("plain", "at equal iterations"), ("plain, equal time",
                                                           "at equal training time")):
        if name in runs:
            gap = deformable - runs[name]["metrics"]["miou"]
            lines.append(f"- deformable − {name}: **{gap * 100:+.1f}** mIoU points {label}")
    ratio = runs["deformable"]["train_seconds"] / runs["plain"]["train_seconds"]
    lines.append(f"- training time, deformable / plain at equal iterations: **{ratio:.2f}×**")
    return lines


def _scale_table(by_scale: Mapping[str, list[dict[str, Any]]]) -> str:
    from ..viz import markdown_table

    first = next(iter(by_scale.values()))
    rows = [{"object size (px)": f"{b['low']:.0f}–{b['high']:.0f}", "objects": b["objects"],
             **{name: buckets[i]["recall"] for name, buckets in by_scale.items()}}
            for i, b in enumerate(first)]
    return markdown_table(rows, digits=3)


def write_report(summary: Mapping[str, Any], out: Path) -> Path:
    """``out/report.md`` from the summary ``run_demo`` builds."""
    from ..viz import format_dilation_table, markdown_table

    s, figures, reference = summary["settings"], summary["figures"], summary["reference"]
    runs = summary["runs"]
    lines = [
        "# Deformable vs plain convolution: demo report", "",
        f"Semantic segmentation of synthetic scenes: {s['image_size']} px images with "
        f"{len(summary['classes'])} shape classes ({', '.join(summary['classes'])}) at widely "
        "varying scale, aspect ratio and rotation, on clutter; "
        f"{s['train_size']} training scenes (turned and mirrored at random) and "
        f"{s['val_size']} validation scenes, seed {s['seed']}. The model is `compact_fcn`: "
        f"3×3 conv layers of widths {tuple(s['widths'])} and strides {tuple(s['strides'])}, "
        f"{_deformable_phrase(s['deform_layers'])} in the deformable twin. Both twins start "
        "from the same weights (offsets at zero) and train with AdamW and a one-cycle "
        f"schedule (peak lr {s['lr']:g}, offsets at {s['offset_lr_mult']:g}× of it, "
        f"class-balanced cross-entropy).", "",
        "## Results", "", comparison_table(summary), "", *_verdict(summary), "",
        "*plain, equal time*: the plain twin trained for the deformable twin's training "
        "time (more iterations, its one-cycle schedule stretched over them). train s: "
        "wall-clock time of the training steps, without the validations; ms / image: "
        "inference on a batch of 8, on this machine. mIoU over the validation set, "
        "background included.", "",
        f"![learning curves]({figures['curves']})", "",
        "Left: training loss (class-weighted); right: validation mIoU against training "
        "time.", "",
        "## Object size", "",
        "Share of each validation object's pixels labelled with its class, averaged per "
        "size bucket (the longer side of the unrotated shape).", "",
        f"![recall by object size]({figures['scales']})", "", _scale_table(
            summary["recall_by_scale"]), "",
        "## Predictions", "",
        f"Chosen by rule, not by hand: the {len(summary['examples']) - 1} validation images "
        f"where the deformable twin's mIoU exceeds *{reference}*'s the most, and (last row) "
        "the one where it falls shortest. Row labels: image index, mIoU deformable vs "
        f"{reference}.", "",
        f"![predictions]({figures['predictions']})", "",
        "## What the offsets learned", "",
        f"Sampling locations of the deformable {_plural(s['deform_layers'], 'layer')}, "
        "back-projected "
        "to the image from a pixel of each of the two largest objects (paper Fig. 5), on the "
        "images above with the largest gains: each layer's points in its own colour, the "
        "activation unit as a green star.", "",
    ]
    lines += [f"![{Path(name).stem}]({name})" for name in figures["sampling"]]
    if summary["offsets"]:
        lines += ["", "Mean / max |offset| and mean displacement of a sampling point, in "
                  "feature-map pixels, on those images:", "",
                  markdown_table(summary["offsets"]), ""]
    if summary["dilation"]:
        lines += ["### Effective dilation by object size (all validation images)", "",
                  "Mean distance between adjacent sampling points (paper Table 2); a plain 3x3 "
                  "conv keeps dilation 1 everywhere.", "",
                  format_dilation_table(summary["dilation"]), ""]
    folders = ", ".join(f"`{name}/`" for name in _folders(runs))
    lines += [f"Files: `metrics.json` (all numbers), {folders} "
              "(checkpoints and metrics.jsonl; try `deformconv eval deformable/last.pt`). "
              f"Total time {summary['total_seconds']:.0f} s.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else f"{count} {noun}s"


def _deformable_phrase(count: int) -> str:
    """"the last layer deformable", "the last 2 layers deformable"."""
    return f"the last {_plural(count, 'layer')} deformable"


def _folders(runs: Mapping[str, Any]) -> list[str]:
    from .demo import run_folder

    return [run_folder(name) for name in runs]
