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

__all__ = ["analyse", "comparison_table", "verdict", "write_report"]

# The files the report writes into the demo's folder.
REPORT = "report.md"
FIGURES = {"curves": "curves.png", "scales": "scales.png", "predictions": "predictions.png"}
OFFSET_PREFIX = "offsets_"


def report_files(out: Path) -> list[Path]:
    """The files the report wrote into ``out`` that are there now (a rerun of the demo
    replaces them)."""
    from ..viz.report import figures_in

    named = [out / name for name in (REPORT, *FIGURES.values())]
    return [path for path in named if path.exists()] + figures_in(out, OFFSET_PREFIX)


REFERENCE_ORDER = ("plain, equal time", "plain")  # the deformable run is compared with
# A gap one run cannot tell from seed noise: twice the spread (std 0.009) of the
# deformable - plain gap at equal time over the default demo's 5 seeds (docs/demo_seeds.md:
# +2.7 to +5.0 points, mean +4.1).
SEED_NOISE = 0.02


def _reference(runs: Mapping[str, Any]) -> str:
    return next(name for name in REFERENCE_ORDER if name in runs)


def _curves(out: Path, names: Sequence[str]) -> tuple[dict, dict, dict, str]:
    """(training loss by iteration, validation mIoU by training time, the iterations of
    those validations, the time's axis label) of runs ``names``: by the training steps'
    CPU time, which other work on the machine barely changes (wall-clock time it sways
    by tens of percent, and unevenly between twins trained one after the other); by
    wall-clock time for runs logged before the CPU time was."""
    from ..engine import read_metrics
    from .demo import run_folder

    losses, scores, iterations, records = {}, {}, {}, {}
    for name in names:
        records[name] = read_metrics(out / run_folder(name) / "metrics.jsonl")
    cpu = all(r.get("train_cpu_seconds") is not None for rs in records.values() for r in rs
              if r["split"] == "val")
    key, label = (("train_cpu_seconds", "training CPU time (s)") if cpu
                  else ("train_seconds", "training time, wall clock (s)"))
    for name, rs in records.items():
        train = [r for r in rs if r["split"] == "train"]
        val = [r for r in rs if r["split"] == "val"]
        losses[name] = ([r["iter"] for r in train], [r["loss"] for r in train])
        scores[name] = ([r[key] for r in val], [r["miou"] for r in val])
        iterations[name] = [r["iter"] for r in val]
    return losses, scores, iterations, label


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

    losses, scores, iterations, time_label = _curves(out, list(models))
    figures = {"curves": plot_learning_curves(losses, scores, out / FIGURES["curves"],
                                              score_iterations=iterations,
                                              time_label=time_label).name,
               "scales": plot_scale_recall(by_scale, out / FIGURES["scales"]).name}
    titles = [f"val {i}: {mious['deformable'][i]:.2f} vs {mious[reference][i]:.2f}"
              for i in chosen]
    figures["predictions"] = plot_predictions(
        [val_set[i][0] for i in chosen], [masks[i] for i in chosen],
        {name: p[chosen] for name, p in predictions.items()}, classes,
        out / FIGURES["predictions"], row_titles=titles,
        class_names=list(val_set.class_names)).name  # type: ignore[attr-defined]
    offsets = offset_figures(models["deformable"], val_set, chosen[:-1] or chosen,
                             "segmentation", out, prefix=OFFSET_PREFIX)
    figures["sampling"] = [p.name for p in offsets.figures]
    dilation = dilation_over(models["deformable"], val_set, list(range(len(masks))),
                             "segmentation", batch_size=s.batch_size).rows()
    return {"reference": reference, "examples": chosen, "example_gains": [gains[i] for i in chosen],
            "image_miou": mious, "object_sizes": [edges[0], edges[-1]],
            "receptive_field": getattr(models["plain"], "receptive_field", None),
            "recall_by_scale": by_scale, "offsets": offsets.offset_rows,
            "dilation": dilation, "figures": figures}


def comparison_table(summary: Mapping[str, Any]) -> str:
    """Markdown: per run, iterations, training time, mIoU, pixel accuracy, cost."""
    from ..viz import markdown_table

    rows = []
    for name, r in summary["runs"].items():
        rows.append({"run": name, "iterations": r["iterations"],
                     "train s": r["train_seconds"],
                     # None ("–" in the table): a demo, or a checkpoint it resumed, of
                     # before 2026-12-03
                     "train CPU s": r.get("train_cpu_seconds"),
                     "mIoU": r["metrics"]["miou"],
                     "pixel acc": r["metrics"]["pixel_acc"], "params": f"{r['params']:,}",
                     "ms / image": r["ms_per_image"]})
    return markdown_table(rows, digits=3)


def _points(value: float) -> str:
    """A gap in mIoU points, signed: ``+2.5``; ``+0.0`` for any gap that rounds to zero
    (not ``-0.0``)."""
    return f"{round(value * 100, 1) + 0.0:+.1f}"


def verdict(summary: Mapping[str, Any]) -> list[str]:
    """Markdown bullets: the deformable twin's lead at equal iterations and at equal
    training time, the cost ratio, and in words whether the plain twin caught up."""
    runs = summary["runs"]
    deformable = runs["deformable"]["metrics"]["miou"]
    gaps = {name: deformable - runs[name]["metrics"]["miou"]
            for name in ("plain", "plain, equal time") if name in runs}
    cpu = runs["deformable"]["cpu_seconds"] / runs["plain"]["cpu_seconds"]
    wall = runs["deformable"]["train_seconds"] / runs["plain"]["train_seconds"]
    lines = [f"- deformable − plain at equal iterations: **{_points(gaps['plain'])}** mIoU "
             "points"]
    if "plain, equal time" in gaps:
        lines.append(f"- deformable − plain at equal training time: "
                     f"**{_points(gaps['plain, equal time'])}** mIoU points")
    lines.append(f"- training cost, deformable / plain at equal iterations: **{cpu:.2f}×** "
                 f"the CPU time of the training processes, validations included ({wall:.2f}× "
                 f"the wall-clock time, which other work on the "
                 f"machine sways; training-step cost measured in turns before training: "
                 f"{summary['step_ratio']:.2f}×)")
    if "plain, equal time" not in gaps:
        lines.append("- (no equal-time run: the comparison at equal training time is "
                     "missing)")
    else:
        lines.append(f"- {_equal_time_verdict(gaps['plain, equal time'])}")
    return lines


def _equal_time_verdict(gap: float) -> str:
    """In words, what the deformable − plain gap ``gap`` at equal training time says: a
    gap within :data:`SEED_NOISE` either way is one run's noise, whatever its sign."""
    plain = "The plain twin, given the deformable twin's training time,"
    noise = f"{SEED_NOISE * 100:.0f} points"
    if gap >= SEED_NOISE:
        return (f"{plain} stays behind: the deformable layers are worth more than the "
                "iterations their cost would buy.")
    if gap <= -SEED_NOISE:
        return (f"**{plain} passes it** by {noise} or more: on this run the deformable "
                "layers are not worth their cost.")
    if _points(gap) == "+0.0":
        where = "ends level with it"
    else:
        where = f"{'stays behind' if gap > 0 else 'passes it'} by less than {noise}"
    return (f"{plain} {where}: within what one run cannot tell from seed noise, either way "
            "(see the README's 5-seed table).")


def _scale_table(by_scale: Mapping[str, list[dict[str, Any]]]) -> str:
    from ..viz import markdown_table

    first = next(iter(by_scale.values()))
    rows = [{"object size (px)": f"{b['low']:.0f}–{b['high']:.0f}", "objects": b["objects"],
             **{name: buckets[i]["recall"] for name, buckets in by_scale.items()}}
            for i, b in enumerate(first)]
    return markdown_table(rows, digits=3)


def _setup(summary: Mapping[str, Any]) -> list[str]:
    """The report's first paragraphs: task, model, training, what equal time means."""
    s, runs = summary["settings"], summary["runs"]
    stride = math.prod(s["strides"])
    low, high = summary["object_sizes"]
    field = summary.get("receptive_field")
    reach = ""
    if field:
        reach = (f" The plain twin's receptive field is {field} px against objects up to "
                 f"{high:.0f} px (theoretical; the effective field, where most of its weight "
                 "lies, is much smaller).")
    decoder = ""
    if s.get("skip_layer") is not None:
        skip = s["skip_layer"]
        decoder = (f" A decoder upsamples the top layer's output to layer {skip + 1}'s map "
                   f"(1/{math.prod(s['strides'][:skip + 1])} of the image) and fuses the "
                   "two with a 3×3 conv, for fine outlines.")
    lines = [
        f"Semantic segmentation of synthetic scenes: {s['image_size']} px images with "
        f"{len(summary['classes'])} shape classes ({', '.join(summary['classes'])}) at widely "
        f"varying scale ({low:.0f}–{high:.0f} px), aspect ratio and rotation, on clutter; "
        f"{s['train_size']} training scenes (turned and mirrored at random) and "
        f"{s['val_size']} validation scenes, seed {s['seed']}.", "",
        f"The model is `compact_fcn`: 3×3 conv layers of widths {tuple(s['widths'])} and "
        f"strides {tuple(s['strides'])}; in the deformable twin "
        f"{_deformable_phrase(s['deform_layers'])}, on the "
        f"{s['image_size'] // stride}×{s['image_size'] // stride} map at 1/{stride} of the "
        f"image, where it is cheap and its offsets can reach across objects.{reach}"
        f"{decoder} Both twins start from the same weights (offsets at zero) and train "
        f"with AdamW (peak lr {s['lr']:g}, offsets at {s['offset_lr_mult']:g}× of it) on a "
        "class-balanced cross-entropy, with a warmup-stable-decay schedule: a linear "
        f"warm-up over {s['warmup_share']:.0%} of {s['iterations']} iterations, the peak "
        f"rate, then a linear decay to zero over the last {s['decay_share']:.0%} of the run.",
    ]
    if "plain, equal time" in runs:
        equal = runs["plain, equal time"]
        shared = (f"It is the plain run continued: the two share the first "
                  f"{equal['branched_at']} iterations (same schedule, batches and weights "
                  "up to there, before the plain run's decay), then it keeps the peak rate "
                  "and decays over the last "
                  f"{s['decay_share']:.0%} of its own {equal['iterations']} iterations."
                  if equal.get("branched_at") is not None else
                  "It trains from the start (the deformable twin was not slower).")
        ratio = summary["step_ratio"]
        lines += ["", "*plain, equal time* is the plain twin trained for the deformable "
                  f"twin's training time: {s['iterations']} iterations × {ratio:.2f}, the "
                  "ratio of the twins' training-step costs, measured before training with "
                  "the two taking turns on one batch (median of 25 steps each, in CPU time "
                  "on a CPU: other work on the machine barely changes it, while it makes "
                  f"wall-clock times vary by tens of percent). {shared}"]
    return lines


def write_report(summary: Mapping[str, Any], out: Path) -> Path:
    """``out/report.md`` from the summary ``run_demo`` builds."""
    from ..viz import format_dilation_table, markdown_table

    s, figures, reference = summary["settings"], summary["figures"], summary["reference"]
    runs = summary["runs"]
    machine = summary.get("machine", {})
    lines = [
        "# Deformable vs plain convolution: demo report", "", *_setup(summary), "",
        "## Results", "", comparison_table(summary), "", *verdict(summary), "",
        "train s / train CPU s: wall-clock / CPU time of the training steps, without the "
        "validations (of *plain, equal time* with the part it shares with *plain*); "
        "ms / image: inference on a batch of 8. mIoU over the validation set, background "
        "included.", "",
        f"![learning curves]({figures['curves']})", "",
        "Training loss by iteration; validation mIoU by iteration and by the training "
        "steps' CPU time (runs of equal cost end near the same x). The rate holds at its "
        "peak until the decay, so the validation scores jump in the last fifth of each "
        "run.", "",
        "## Object size", "",
        "Share of each validation object's pixels labelled with its class, averaged per "
        "size bucket (the longer side of the unrotated shape; object counts in brackets).",
        "", f"![recall by object size]({figures['scales']})", "",
        _scale_table(summary["recall_by_scale"]), "",
        "## Predictions", "",
        f"Chosen by rule, not by hand: {_examples_phrase(len(summary['examples']), reference)}"
        f" Row labels: image index, mIoU deformable vs {reference}.", "",
        f"![predictions]({figures['predictions']})", "",
        "## What the offsets learned", "",
        f"Sampling locations of the {_plural(s['deform_layers'], 'deformable layer')} "
        "back-projected to the image (paper Fig. 5), from a pixel of each of the two "
        "largest objects, on the images above with the largest gains: each layer's points "
        "in its own colour, the activation unit as a green star, and as hollow grey "
        "circles where the same layers sample with zero offsets (a plain 3×3 conv).", "",
    ]
    lines += [f"![{Path(name).stem}]({name})" for name in figures["sampling"]]
    if summary["offsets"]:
        lines += ["", "Mean / max |offset| and mean displacement of a sampling point, in "
                  "feature-map pixels, on those images:", "",
                  markdown_table(summary["offsets"]), ""]
    if summary["dilation"]:
        lines += ["### Effective dilation by object size (all validation images)", "",
                  "Mean distance between adjacent sampling points, in feature-map pixels "
                  "(paper Table 2); a plain 3×3 conv keeps dilation 1 everywhere. A "
                  f"feature cell counts for the object under its centre: "
                  f"{_size_limits(s['image_size'])} (COCO's 32² and 96², scaled "
                  "to the image's area); in brackets the number of cells.", "",
                  format_dilation_table(summary["dilation"]), ""]
    folders = ", ".join(f"`{name}/`" for name in _folders(runs))
    lines += [f"Files: `metrics.json` (all numbers), {folders} "
              "(checkpoints and metrics.jsonl; try `deformconv eval deformable/last.pt`).", ""]
    if machine:
        jobs = machine.get("jobs", 1)
        side_by_side = (f", the twins trained side by side in {jobs} processes of "
                        f"{machine['train_threads']} thread(s)" if jobs > 1 else "")
        lines += [f"Whole demo: {summary['total_seconds']:.0f} s wall-clock, "
                  f"{machine['cpu_seconds']:.0f} s of CPU time (user + system, all "
                  f"processes), {machine['threads']} torch thread(s) on {machine['cpus']} "
                  f"CPU(s){side_by_side}; "
                  f"load average {machine['load_start']:.1f} at the start, "
                  f"{machine['load_end']:.1f} at the end ({_load_effect(jobs)})."
                  + (" The demo was killed outright (SIGKILL, a power cut) and resumed: "
                     "these two times leave out the time before the kill; the runs' own CPU "
                     "times count all of their training."
                     if machine.get("unrecorded_stop") else ""), ""]
    path = out / REPORT
    path.write_text("\n".join(lines))
    return path


def _load_effect(jobs: int) -> str:
    """What other processes on the machine do to the demo's times."""
    if jobs > 1:
        return ("other processes slow the twins, trained side by side, alike, but make "
                "wall-clock times longer")
    return ("other processes make wall-clock times longer, each run's by the load while it "
            "trained, so the twins' train s may not compare; CPU times barely change")


def _examples_phrase(count: int, reference: str) -> str:
    """Which validation images the predictions figure shows, ``count`` of them
    (:func:`_examples`: the largest gains, the smallest last)."""
    if count == 1:
        return "the only validation image."
    return (f"the {_plural(count - 1, 'validation image')} where the deformable twin's mIoU "
            f"exceeds *{reference}*'s the most, and (last row) the one where it falls "
            "shortest.")


def _size_limits(image_size: int) -> str:
    """The size buckets' limits in whole pixels, as the dilation table applies them to a
    cell's object area (small: area < t_small, large: area >= t_large): ``"small below 34
    visible pixels, large from 300"`` for 100 px images (33.3 and 300)."""
    from ..viz import scale_thresholds

    small, large = scale_thresholds((image_size, image_size))
    # an integer area is below t exactly when it is below ceil(t), and at least t when at
    # least ceil(t)
    return (f"small below {math.ceil(small)} visible pixels, large from "
            f"{math.ceil(large)}")


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else f"{count} {noun}s"


def _deformable_phrase(count: int) -> str:
    """"the last layer is deformable", "the last 2 layers are deformable"."""
    return f"the last {_plural(count, 'layer')} {'is' if count == 1 else 'are'} deformable"


def _folders(runs: Mapping[str, Any]) -> list[str]:
    from .demo import run_folder

    return [run_folder(name) for name in runs]
