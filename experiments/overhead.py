"""Study: parameters and forward time, plain vs deformable twin (paper's runtime table).

The twins run at the same input size, as in the paper's model complexity and runtime table.

Each model is built twice from one seed, as the paper's deformable network (deformable 3x3
convs in all of res5; deformable (PS)RoI pooling in the detectors) and as its plain twin,
and run on the same random image in eval mode. Time: the best of ``repeats`` forward
passes after one warm-up, per image, the two models taking turns, on this machine's CPU
(the paper's times are on a GPU). The full study measures the paper's ResNet-101
networks at the paper's width and the networks the other studies train.

    python experiments/overhead.py           # full: see MODELS
    python experiments/overhead.py --smoke   # seconds
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from runner import (
    Study,
    add_common_args,
    detection_specs,
    parameter_count,
    run_script,
    segmentation_specs,
)

from deformconv.runs import ModelSpec, build_model, ms_per_image


@dataclass(frozen=True)
class Measured:
    """One model measured at one input size."""

    label: str
    name: str  # deformconv.models name
    image_size: int
    num_classes: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, label: str, spec: ModelSpec, image_size: int) -> Measured:
        return cls(label, spec.name, image_size, spec.num_classes, dict(spec.kwargs))

    def specs(self) -> tuple[ModelSpec, ModelSpec]:
        """(deformable, plain) with the model's defaults for ``deformable``."""
        return (ModelSpec(self.name, self.num_classes, True, dict(self.kwargs)),
                ModelSpec(self.name, self.num_classes, False, dict(self.kwargs)))


def experiment_models() -> list[tuple[str, ModelSpec, int]]:
    """(label, deformable spec, image size) of the networks the other studies train, with
    the paper's deformable parts (the last 3 convs of res5; deformable (PS) RoI pooling in
    the detectors)."""
    from layers import SIZES

    seg, det = SIZES["segmentation"], SIZES["detection"]
    classes = len(seg.scene["classes"])
    return [("DeepLab ResNet-18, experiment size",
             segmentation_specs(seg, classes, (0, 0, 0, 3))[0], seg.image_size),
            *((f"{label} ResNet-18, experiment size",
               detection_specs(det, classes, (0, 0, 0, 3), True, detector)[0], det.image_size)
              for label, detector in (("Faster R-CNN", "faster_rcnn"), ("R-FCN", "rfcn")))]


def _detector(size: int, **extra: Any) -> dict[str, Any]:
    # Same input size for both twins: no resizing inside the detector.
    return {"min_size": size, "max_size": size, **extra}


SCRATCH = {"norm_layer": "batch_norm", "frozen_stages": -1}
FULL_SIZE = 320  # px, square; the paper's images are larger (VOC ~500, Cityscapes 1024x2048)
MODELS = (
    Measured("DeepLab ResNet-101", "deeplab_resnet101", FULL_SIZE, 21),
    Measured("Faster R-CNN ResNet-101", "faster_rcnn_resnet101", FULL_SIZE, 21,
             _detector(FULL_SIZE)),
    Measured("R-FCN ResNet-101", "rfcn_resnet101", FULL_SIZE, 21, _detector(FULL_SIZE)),
    *(Measured.of(label, spec, size) for label, spec, size in experiment_models()),
)
SMOKE_MODELS = (
    Measured("DeepLab ResNet-50, tiny", "deeplab_resnet50", 32, 3,
             {"backbone_kwargs": {**SCRATCH, "base_channels": 4}, "head_channels": 16}),
    Measured("Faster R-CNN ResNet-50, tiny", "faster_rcnn_resnet50", 64, 3,
             _detector(64, backbone_kwargs={**SCRATCH, "base_channels": 4},
                       head_channels=16, representation_size=32)),
)
REPEATS = {"full": 20, "smoke": 2}


def measure(m: Measured, seed: int, repeats: int) -> dict[str, Any]:
    """Parameters and ms per image of the deformable model and its plain twin."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, m.image_size, m.image_size, generator=generator)
    models = {kind: build_model(spec, seed=seed)
              for kind, spec in zip(("deformable", "plain"), m.specs(), strict=True)}
    times = ms_per_image(models, image, repeats=repeats)
    return {kind: {"params": parameter_count(model), "ms_per_image": times[kind]}
            for kind, model in models.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, training=False)
    args = parser.parse_args(argv)
    models = SMOKE_MODELS if args.smoke else MODELS
    repeats = REPEATS["smoke" if args.smoke else "full"]
    if len(args.seeds) > 1:
        parser.error(f"--seeds: overhead measures with one seed, got {args.seeds}")
    seed = args.seeds[0]
    study = Study("overhead", args, {"models": [asdict(m) for m in models],
                                     "repeats": repeats, "seed": seed,
                                     "threads": args.threads})
    if args.plan:
        print("overhead has no training; it takes about 1.5 min in full mode on 2 cores "
              "(docs/RESULTS.md: measured)")
        return 0
    results = [study.run(m.name + f"_{m.image_size}px", {"model": asdict(m)},
                         lambda _dir, m=m: measure(m, seed, repeats),
                         needs=[f"{kind}.{key}" for kind in ("deformable", "plain")
                                for key in ("params", "ms_per_image")]) for m in models]
    if not study.complete:
        return study.finish_shard()
    rows = []
    for m, result in zip(models, results, strict=True):
        d, p = result["deformable"], result["plain"]
        rows.append({"model": m.label, "image_size": m.image_size,
                     "params_plain": p["params"], "params_deformable": d["params"],
                     "params_increase": d["params"] / p["params"] - 1,
                     "ms_plain": p["ms_per_image"], "ms_deformable": d["ms_per_image"],
                     "time_increase": d["ms_per_image"] / p["ms_per_image"] - 1})
    study.write_summary({"rows": rows, "threads": torch.get_num_threads(),
                         "repeats": repeats})
    return 0


if __name__ == "__main__":
    run_script(main)
