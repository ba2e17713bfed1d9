"""Study: deformable RoI pooling on/off in the detection head (paper Table 3).

Two detectors, each its own study: Faster R-CNN (deformable RoI pooling against RoIAlign)
and R-FCN (deformable position-sensitive RoI pooling against plain PS RoI pooling). Four
configurations each: plain, deformable conv only (the last 3 convs of res5), deformable
RoI pooling only, and both. COCO mAP and mAP@0.5 on the validation scenes, several seeds,
mean ± std. Every configuration of one seed starts from the same weights (the pretrained
backbone, the seed's heads; the deformable parts add zero-initialised offset branches).

    python experiments/roi_pooling.py --detector faster_rcnn           # full: see SIZES
    python experiments/roi_pooling.py --detector rfcn --plan            # time estimate only
    python experiments/roi_pooling.py --detector faster_rcnn --smoke    # seconds
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace

from layers import SIZES as LAYER_SIZES
from layers import SMOKE as LAYER_SMOKE
from runner import (
    DETECTORS,
    Sizes,
    Study,
    add_common_args,
    detection_specs,
    plan,
    pretrained,
    result_fields,
    run_script,
    seed_stats,
    train_data,
    train_run,
)

# name -> (deform_blocks, deformable (PS) RoI pooling)
CONFIGS = {
    "plain": ((0, 0, 0, 0), False),
    "deformable conv": ((0, 0, 0, 3), False),
    "deformable RoI pooling": ((0, 0, 0, 0), True),
    "both": ((0, 0, 0, 3), True),
}
METRICS = ("AP", "AP50")
# Table 1's detection recipe (data, model width, training); each detector's study trains
# as long as its budget allows (<= 30 min on 2 cores with --plan; R-FCN's steps cost less).
SIZES: dict[str, Sizes] = {
    "faster_rcnn": replace(LAYER_SIZES["detection"], iterations=600),
    "rfcn": replace(LAYER_SIZES["detection"], iterations=1000),
}
SMOKE: Sizes = LAYER_SMOKE["detection"]


def study_name(detector: str) -> str:
    return f"roi_pooling_{detector}"


def run_key(name: str, seed: int) -> str:
    return f"{name.replace(' ', '_')}_seed{seed}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", choices=DETECTORS, required=True)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        help="configurations to run (default all)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else SIZES[args.detector]
    if args.seeds:
        sizes = replace(sizes, seeds=tuple(args.seeds))
    classes = len(sizes.scene["classes"])
    study = Study(study_name(args.detector), args,
                  {"sizes": sizes.identity(), "detector": args.detector,
                   "configs": {k: list(v) for k, v in CONFIGS.items()}})
    configs = {}
    for name in args.configs:
        blocks, head = CONFIGS[name]
        spec, plain = detection_specs(sizes, classes, blocks, head, args.detector)
        configs[name] = (plain if name == "plain" else spec, plain)
    if args.plan:
        plan(study, "detection", {n: s for n, (s, _) in configs.items()}, sizes)
        return 0

    pretrained(sizes, study)  # before the runs, so that none of them counts it
    study.in_shards(__file__, argv)
    if study.trains_here:  # the scenes rendered before the runs: no run's CPU time counts it
        train_data(sizes, "detection")
    results = {}
    for seed in sizes.seeds:  # seed by seed: a stopped study has whole seeds to report
        for name, (spec, plain) in configs.items():
            def run(run_dir, spec=spec, plain=plain, seed=seed):
                return train_run("detection", spec, plain, sizes, seed, run_dir, study)[1]

            results[name, seed] = study.run(
                run_key(name, seed), {"config": name, "seed": seed, "model": asdict(spec)}, run,
                needs=result_fields(METRICS))
    if not study.complete:
        return study.finish_shard()
    rows = [{"config": name, "deformable_conv_layers": sum(CONFIGS[name][0]),
             "deformable_roi_pooling": CONFIGS[name][1], "seeds": list(sizes.seeds),
             **seed_stats([results[name, s] for s in sizes.seeds], METRICS)}
            for name in configs]
    study.write_summary({"task": "detection", "detector": args.detector,
                         "seeds": list(sizes.seeds), "metrics": list(METRICS), "rows": rows})
    return 0


if __name__ == "__main__":
    run_script(main)
