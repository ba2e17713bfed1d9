"""Study: do the learned sampling locations adapt to object scale? (paper Table 2, Fig. 5)

A DeepLab with deformable res5 (the last 3 convs, as in the paper's Table 2) is trained on
the synthetic scenes; then, on every validation image, the effective dilation of each
output pixel (mean distance between adjacent sampling points of its 3x3 kernel) is
bucketed by the object under the pixel — small, medium, large (the validation objects'
areas split into three equal-count groups, as the paper splits its objects) or background
— and summarised as mean ± std per layer. The paper's claim: the effective dilation grows
with object size. Sampling-location plots (the 3 layers back-projected to the image, as in
Fig. 5) are written for the first validation images.

    python experiments/dilation.py           # full: see SIZES
    python experiments/dilation.py --plan    # time estimate only
    python experiments/dilation.py --smoke   # seconds
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from layers import SIZES as LAYER_SIZES
from layers import SMOKE as LAYER_SMOKE
from runner import (
    Sizes,
    Study,
    add_common_args,
    plan,
    pretrained,
    run_script,
    segmentation_specs,
    train_data,
    train_run,
)
from torch import nn
from torch.utils.data import Dataset

from deformconv.nn import DeformConv2d
from deformconv.runs import offset_figures, offset_inputs
from deformconv.viz import SIZE_BUCKETS, DilationStats, OffsetCapture, paint_instances

DEFORM_BLOCKS = (0, 0, 0, 3)
# The segmentation study's data, model and training (Table 1's 3-layer configuration).
SIZES: Sizes = LAYER_SIZES["segmentation"]
SMOKE: Sizes = replace(LAYER_SMOKE["segmentation"], val_size=6)
FIGURES = {"full": 4, "smoke": 1}


def area_tertiles(dataset: Dataset) -> tuple[float, float]:
    """Object areas (visible pixels, as the buckets count them) splitting the dataset's
    objects into three equal-count groups."""
    areas = []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        masks = torch.from_numpy(dataset.scene(i).masks)  # type: ignore[attr-defined]
        if len(masks) == 0:
            continue
        counts = torch.bincount(paint_instances(masks).flatten(), minlength=len(masks) + 1)
        areas += [float(a) for a in counts[1:] if a > 0]
    if len(areas) < 3:
        raise ValueError(f"need >= 3 objects to split by size, the dataset has {len(areas)}")
    low, high = torch.tensor(areas).quantile(torch.tensor([1 / 3, 2 / 3])).tolist()
    return low, high


@torch.no_grad()
def dilation_rows(model: nn.Module, dataset: Dataset, thresholds: tuple[float, float],
                  batch_size: int) -> list[dict[str, object]]:
    """:meth:`DilationStats.rows` over the whole dataset with these area thresholds (the
    loop of ``deformconv.runs.dilation_over``, which has no thresholds option)."""
    stats = DilationStats(thresholds)
    model.eval()
    indices = list(range(len(dataset)))  # type: ignore[arg-type]
    for start in range(0, len(indices), batch_size):
        inputs, _, masks, _ = offset_inputs(model, dataset, indices[start:start + batch_size],
                                     "segmentation")
        with OffsetCapture(model, max_calls=1) as capture:
            model(inputs)
        for record in capture.latest().values():
            stats.update(record, masks=masks)
    return stats.rows()


def nominal_dilation(model: nn.Module) -> dict[str, int]:
    """Each deformable layer's own dilation: its effective dilation at zero offset."""
    return {name: int(m.dilation[0]) for name, m in model.named_modules()
            if isinstance(m, DeformConv2d)}


def one_run(sizes: Sizes, seed: int, run_dir: Path, figures: int, study: Study
            ) -> dict[str, Any]:
    _, val_set, classes = train_data(sizes, "segmentation")
    spec, plain = segmentation_specs(sizes, classes, DEFORM_BLOCKS)
    model, result = train_run("segmentation", spec, plain, sizes, seed, run_dir, study)
    thresholds = area_tertiles(val_set)
    report = offset_figures(model, val_set, list(range(min(figures, len(val_set)))),
                            "segmentation", run_dir, prefix="fig5_")
    return {**result, "thresholds": list(thresholds), "nominal": nominal_dilation(model),
            "rows": dilation_rows(model, val_set, thresholds, sizes.batch_size),
            "figures": [p.relative_to(run_dir.parent).as_posix() for p in report.figures]}


def pooled(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean ± std over the pixels of several rows (each with count, mean, population std)."""
    rows = [r for r in rows if r["count"]]
    count = sum(r["count"] for r in rows)
    if not count:
        return {"count": 0, "mean": math.nan, "std": math.nan}
    mean = sum(r["count"] * r["mean"] for r in rows) / count
    square = sum(r["count"] * (r["std"] ** 2 + r["mean"] ** 2) for r in rows) / count
    return {"count": count, "mean": mean, "std": math.sqrt(max(square - mean**2, 0.0))}


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per layer and bucket: pixels of all seeds pooled, and each seed's mean."""
    table = []
    for layer, nominal in results[0]["nominal"].items():
        for bucket in SIZE_BUCKETS:
            per_seed = [r for res in results for r in res["rows"]
                        if r["layer"] == layer and r["bucket"] == bucket]
            table.append({"layer": layer, "nominal": nominal, "bucket": bucket,
                          **pooled(per_seed),
                          "seed_means": [r["mean"] if r["count"] else None for r in per_seed]})
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else SIZES
    if args.seeds:
        sizes = replace(sizes, seeds=tuple(args.seeds))
    figures = FIGURES["smoke" if args.smoke else "full"]
    study = Study("dilation", args, {"sizes": sizes.identity(), "deform_blocks": DEFORM_BLOCKS,
                                     "figures": figures})
    if args.plan:
        classes = len(sizes.scene["classes"])
        spec, _ = segmentation_specs(sizes, classes, DEFORM_BLOCKS)
        plan(study, "segmentation", {"deformable res5": spec}, sizes)
        return 0
    pretrained(sizes, study)  # before the runs, so that none of them counts it
    study.in_shards(__file__, argv)
    results = [study.run(f"seed{seed}", {"seed": seed},
                         lambda run_dir, seed=seed: one_run(sizes, seed, run_dir, figures, study),
                         needs=("metrics.miou", "thresholds", "nominal", "rows", "figures"))
               for seed in sizes.seeds]
    if not study.complete:
        return study.finish_shard()
    study.write_summary({
        "deform_blocks": list(DEFORM_BLOCKS), "seeds": list(sizes.seeds),
        "miou": [r["metrics"]["miou"] for r in results],
        "thresholds": results[0]["thresholds"], "rows": summarise(results),
        "figures": [f for r in results for f in r["figures"]],
    })
    return 0


if __name__ == "__main__":
    run_script(main)
