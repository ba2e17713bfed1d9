"""Study beyond the paper: does deformable convolution generalise across object scale?

The scaled-digits protocol (train on a narrow range of object sizes, test across a wide
one) on the synthetic shapes: the demo's compact FCN (five 3x3 layers, output stride 4,
the last three plain, deformable DCN v1, or modulated DCN v2) is trained from random init
on scenes whose objects are all between ``TRAIN_SCALE`` px long, then evaluated on test
scenes whose objects all have one size, from well below to well above that range. mIoU per
test size, mean ± std over seeds, and a plot. The claim tested: deformable layers, whose
sampling grid can shrink and stretch, lose less accuracy away from the training scale.

    python experiments/scale.py           # full: see SIZES
    python experiments/scale.py --plan    # time estimate only
    python experiments/scale.py --smoke   # seconds
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from runner import (
    SCENE,
    Sizes,
    Study,
    add_common_args,
    mean_std,
    plan,
    result_fields,
    run_script,
    seed_stats,
    train_data,
    train_run,
)
from torch.utils.data import Dataset

from deformconv.data import InMemory
from deformconv.engine import evaluate
from deformconv.runs import ModelSpec, build_datasets

# name -> CompactFCN options
MODELS: dict[str, dict[str, Any]] = {
    "plain": {"deform_layers": 0},
    "deformable (v1)": {"deform_layers": 3},
    "modulated (v2)": {"deform_layers": 3, "modulated": True},
}
TRAIN_SCALE = (12.0, 20.0)  # longer side of the training objects, px
TEST_SCALES = (6, 8, 11, 16, 23, 32, 45)  # px: geometric steps of about sqrt(2)
# The demo's network and recipe as the study was run (written out: the demo's defaults may
# change): widths 24-48, output stride 4, AdamW 6e-3 one-cycle with 15 % warm-up, offsets
# at a twentieth of the rate. One object size per test scene set; apart from that the
# scenes are the studies' (the demo's).
WIDTHS = {"widths": [24, 32, 48, 48, 48], "strides": [2, 2, 1, 1, 1]}
SIZES = Sizes(image_size=64, batch_size=16, train_size=3000, val_size=100, base_channels=0,
              iterations=1500, seeds=(0, 1, 2), lr=6e-3, weight_decay=1e-4,
              warmup_share=0.15, offset_lr_mult=0.05, class_balance=0.5, pretrain=None,
              scene={**SCENE, "min_object_size": TRAIN_SCALE[0],
                     "max_object_size": TRAIN_SCALE[1] / 64})
SMOKE = replace(SIZES, image_size=32, batch_size=2, train_size=8, val_size=4, iterations=2,
                seeds=(0,), scene={**SIZES.scene, "max_object_size": TRAIN_SCALE[1] / 32})
SMOKE_TEST_SCALES = (8, 16)
SMOKE_WIDTHS = {"widths": [4, 4, 4, 4], "strides": [2, 1, 1, 1]}


def spec(name: str, classes: int, smoke: bool) -> ModelSpec:
    """The compact FCN ``name`` (:data:`WIDTHS`) for C = ``classes``."""
    kwargs = copy.deepcopy(SMOKE_WIDTHS if smoke else WIDTHS)
    return ModelSpec("compact_fcn", classes + 1, name != "plain",
                     {**kwargs, **MODELS[name]})


def test_sets(sizes: Sizes, scales: tuple[int, ...]) -> dict[int, Dataset]:
    """Per test size s (px): validation scenes (seed 1) whose objects are all s long."""
    sets = {}
    for scale in scales:
        scene = {**sizes.scene, "min_object_size": float(scale),
                 "max_object_size": scale / sizes.image_size}
        data = replace(sizes, scene=scene).data()
        _, val_set, _ = build_datasets(data, "segmentation", need_train=False)
        sets[scale] = InMemory(val_set)
    return sets


def one_run(name: str, sizes: Sizes, seed: int, run_dir: Path, study: Study,
            tests: dict[int, Dataset], smoke: bool) -> dict[str, Any]:
    classes = len(sizes.scene["classes"])
    model_spec = spec(name, classes, smoke)
    plain = spec("plain", classes, smoke)
    model, result = train_run("segmentation", model_spec, plain, sizes, seed, run_dir, study)
    per_scale = {str(scale): evaluate(model, data, "segmentation",
                                      batch_size=sizes.batch_size)["miou"]
                 for scale, data in tests.items()}
    return {**result, "miou_by_scale": per_scale}


def plot(rows: list[dict[str, Any]], scales: tuple[int, ...], path: Path) -> Path:
    """mIoU against test object size, one line (mean, ± std band) per model; the training
    range shaded."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    ax.axvspan(*TRAIN_SCALE, color="0.85", label="training sizes")
    for row in rows:
        mean = [row["by_scale"][str(s)]["mean"] for s in scales]
        std = [row["by_scale"][str(s)]["std"] for s in scales]
        ax.plot(scales, mean, marker="o", label=row["model"])
        ax.fill_between(scales, [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xticks(scales)
    ax.set_xticklabels([str(s) for s in scales])
    ax.minorticks_off()
    ax.set_xlabel("object size in the test scenes: longer side, px (64 px images)")
    ax.set_ylabel("mIoU on the test scenes of one object size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else SIZES
    scales = SMOKE_TEST_SCALES if args.smoke else TEST_SCALES
    if args.seeds:
        sizes = replace(sizes, seeds=tuple(args.seeds))
    study = Study("scale", args, {"sizes": sizes.identity(), "models": MODELS,
                                  "train_scale": TRAIN_SCALE, "test_scales": scales})
    classes = len(sizes.scene["classes"])
    if args.plan:
        plan(study, "segmentation", {n: spec(n, classes, args.smoke) for n in MODELS}, sizes)
        return 0
    study.in_shards(__file__, argv)
    train_data(sizes, "segmentation")  # rendered once for every run
    tests = test_sets(sizes, scales)
    results = {}
    # seed by seed, so a study stopped part way can be summarised for the seeds it finished
    for seed in sizes.seeds:
        for name in MODELS:
            def run(run_dir, name=name, seed=seed):
                return one_run(name, sizes, seed, run_dir, study, tests, args.smoke)

            key = f"{name.split(' ')[0]}_seed{seed}"
            results[name, seed] = study.run(
                key, {"model": name, "seed": seed,
                      "spec": asdict(spec(name, classes, args.smoke))}, run,
                needs=(*result_fields(("miou",)), *(f"miou_by_scale.{s}" for s in scales)))
    if not study.complete:
        return study.finish_shard()
    rows = []
    for name in MODELS:
        runs = [results[name, s] for s in sizes.seeds]
        by_scale = {}
        for scale in scales:
            values = [r["miou_by_scale"][str(scale)] for r in runs]
            mean, std = mean_std(values)
            by_scale[str(scale)] = {"mean": mean, "std": std, "values": values}
        rows.append({"model": name, "seeds": list(sizes.seeds), "by_scale": by_scale,
                     **seed_stats(runs, ("miou",))})
    figure = plot(rows, scales, study.folder / "scale_miou.png")
    study.write_summary({"task": "segmentation", "seeds": list(sizes.seeds),
                         "train_scale": list(TRAIN_SCALE), "test_scales": list(scales),
                         "rows": rows, "figure": figure.name})
    return 0


if __name__ == "__main__":
    run_script(main)
