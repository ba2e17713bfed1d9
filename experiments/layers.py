"""Study: how many deformable layers (paper Table 1) — 0, 1, 2, 3, 6.

The last 1, 2 or 3 3x3 convs of res5, or those plus the last 3 of res4 (6), become
deformable; 0 is the plain network. Segmentation: DeepLab, mIoU. Detection: Faster R-CNN
with a plain RoIAlign head (the paper's Table 1 varies the backbone only), COCO mAP and
mAP@0.5. Every configuration of one seed starts from the same weights (the deformable ones
add zero-initialised offset branches) and trains on the same scenes in the same order.

    python experiments/layers.py --task segmentation          # full: see SIZES
    python experiments/layers.py --task detection --plan      # time estimate only
    python experiments/layers.py --task segmentation --smoke  # seconds
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from runner import (
    Sizes,
    Study,
    add_common_args,
    detection_specs,
    plan,
    seed_stats,
    segmentation_specs,
    train_run,
)

# Paper Table 1: the number of deformable layers -> deform_blocks per ResNet stage.
LAYERS = {0: (0, 0, 0, 0), 1: (0, 0, 0, 1), 2: (0, 0, 0, 2), 3: (0, 0, 0, 3), 6: (0, 0, 3, 3)}
METRICS = {"segmentation": ("miou", "pixel_acc"), "detection": ("AP", "AP50")}
# Full sizes: <= 30 min on 2 CPU cores each (estimate: experiments/README.md, --plan).
SIZES = {
    "segmentation": Sizes(image_size=96, batch_size=8, train_size=4000, val_size=96,
                          base_channels=16, iterations=1400, seeds=(0, 1, 2)),
    "detection": Sizes(image_size=96, batch_size=8, train_size=4000, val_size=64,
                       base_channels=16, iterations=800, seeds=(0, 1, 2)),
}
SMOKE = {
    "segmentation": Sizes(image_size=32, batch_size=2, train_size=8, val_size=4,
                          base_channels=4, iterations=2, seeds=(0,)),
    "detection": Sizes(image_size=64, batch_size=2, train_size=8, val_size=4,
                       base_channels=4, iterations=2, seeds=(0,)),
}


def specs(task: str, sizes: Sizes, classes: int, layers: int):
    blocks = LAYERS[layers]
    if task == "segmentation":
        spec, plain = segmentation_specs(sizes, classes, blocks)
    else:
        spec, plain = detection_specs(sizes, classes, blocks, deformable_head=False)
    return (plain if layers == 0 else spec), plain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(METRICS), required=True)
    parser.add_argument("--layers", type=int, nargs="+", choices=sorted(LAYERS),
                        default=sorted(LAYERS), help="configurations to run (default all)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    task = args.task
    sizes = (SMOKE if args.smoke else SIZES)[task]
    if args.seeds:
        sizes = Sizes(**{**asdict(sizes), "seeds": tuple(args.seeds)})
    classes = len(sizes.scene["classes"])
    study = Study(f"layers_{task}", args, {"sizes": sizes.identity(), "layers": LAYERS})
    configs = {n: specs(task, sizes, classes, n) for n in args.layers}
    if args.plan:
        plan(study, task, {f"{n} layers": s for n, (s, _) in configs.items()}, sizes)
        return 0

    results = {}
    for layers, (spec, plain) in configs.items():
        for seed in sizes.seeds:
            def run(run_dir, spec=spec, plain=plain, seed=seed):
                return train_run(task, spec, plain, sizes, seed, run_dir)[1]

            results[layers, seed] = study.run(
                f"layers{layers}_seed{seed}",
                {"layers": layers, "seed": seed, "model": asdict(spec)}, run)
    if not study.complete:
        return study.finish_shard()
    rows = [{"layers": n, "deform_blocks": list(LAYERS[n]), "seeds": list(sizes.seeds),
             **seed_stats([results[n, s] for s in sizes.seeds], METRICS[task])}
            for n in configs]
    study.write_summary({"task": task, "seeds": list(sizes.seeds),
                         "metrics": list(METRICS[task]), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
