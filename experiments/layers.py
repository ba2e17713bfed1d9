"""Study: how many deformable layers (paper Table 1) — 0, 1, 2, 3, 6.

The last 1, 2, 3 or 6 3x3 convs of the network become deformable (the paper: res5c;
res5b-c; res5a-c; res5 and res4b20-22 of its ResNet-101): in our ResNet-18 the last 1, 2,
3 of res5's four, or all four and the last two of res4. 0 is the plain network.
Segmentation: DeepLab, mIoU. Detection: Faster R-CNN with a plain RoIAlign head (the
paper's Table 1 varies the backbone only), COCO mAP and mAP@0.5. Every configuration of
one seed starts from the same weights (the pretrained backbone, the seed's heads; the
deformable ones add zero-initialised offset branches) and trains on the same scenes in the
same order.

    python experiments/layers.py --task segmentation          # full: see SIZES
    python experiments/layers.py --task detection --plan      # time estimate only
    python experiments/layers.py --task segmentation --smoke  # seconds
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace

from runner import (
    PRETRAIN,
    SCENE,
    SMOKE_PRETRAIN,
    Sizes,
    Study,
    add_common_args,
    detection_specs,
    plan,
    pretrained,
    result_fields,
    run_script,
    seed_stats,
    segmentation_specs,
    train_data,
    train_run,
)

# Paper Table 1: the number of deformable layers -> deformable 3x3 convs per ResNet stage
# (the last ones of each stage; a ResNet-18 stage has four).
LAYERS = {0: (0, 0, 0, 0), 1: (0, 0, 0, 1), 2: (0, 0, 0, 2), 3: (0, 0, 0, 3), 6: (0, 0, 2, 4)}
METRICS = {"segmentation": ("miou", "pixel_acc"), "detection": ("AP", "AP50")}
# Full sizes: <= 30 min on 2 CPU cores each (estimate: experiments/README.md, --plan).
SIZES = {
    # The backbone fine-tunes at the heads' rate here (dense prediction at output stride 8
    # needs it to adapt), at a tenth of it for detection: each chosen on plain twins, one
    # seed, before any deformable run (experiments/README.md: the check runs).
    "segmentation": Sizes(image_size=64, batch_size=16, train_size=4000, val_size=200,
                          base_channels=32, iterations=760, seeds=(0, 1, 2),
                          pretrain=PRETRAIN, backbone_lr_mult=1.0),
    # The demo's scenes at twice the resolution (objects 1/8 to 0.7 of the image side, as
    # at 64 px): the smallest then spans one cell of the stride-16 maps the RPN reads.
    "detection": Sizes(image_size=128, batch_size=8, train_size=3000, val_size=150,
                       base_channels=32, iterations=500, seeds=(0, 1, 2), pretrain=PRETRAIN,
                       scene={**SCENE, "min_object_size": 16.0}),
}
# Smoke: the full recipe (rates, schedule, losses, scenes), only the sizes shrunk.
SMOKE = {task: replace(SIZES[task], image_size=size, batch_size=2, train_size=8, val_size=4,
                       base_channels=4, iterations=2, seeds=(0,), pretrain=SMOKE_PRETRAIN)
         for task, size in (("segmentation", 32), ("detection", 64))}


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
        sizes = replace(sizes, seeds=tuple(args.seeds))
    classes = len(sizes.scene["classes"])
    study = Study(f"layers_{task}", args, {"sizes": sizes.identity(), "layers": LAYERS})
    configs = {n: specs(task, sizes, classes, n) for n in args.layers}
    if args.plan:
        plan(study, task, {f"{n} layers": s for n, (s, _) in configs.items()}, sizes)
        return 0

    pretrained(sizes, study)  # before the runs, so that none of them counts it
    study.in_shards(__file__, argv)
    if study.trains_here:  # the scenes rendered before the runs: no run's CPU time counts it
        train_data(sizes, task)
    results = {}
    for seed in sizes.seeds:  # seed by seed: a stopped study has whole seeds to report
        for layers, (spec, plain) in configs.items():
            def run(run_dir, spec=spec, plain=plain, seed=seed):
                return train_run(task, spec, plain, sizes, seed, run_dir, study)[1]

            results[layers, seed] = study.run(
                f"layers{layers}_seed{seed}",
                {"layers": layers, "seed": seed, "model": asdict(spec)}, run,
                needs=result_fields(METRICS[task]))
    if not study.complete:
        return study.finish_shard()
    rows = [{"layers": n, "deform_blocks": list(LAYERS[n]), "seeds": list(sizes.seeds),
             **seed_stats([results[n, s] for s in sizes.seeds], METRICS[task])}
            for n in configs]
    study.write_summary({"task": task, "seeds": list(sizes.seeds),
                         "metrics": list(METRICS[task]), "rows": rows})
    return 0


if __name__ == "__main__":
    run_script(main)
