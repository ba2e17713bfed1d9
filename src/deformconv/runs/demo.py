"""The demo run: a deformable network and its plain twin, trained and compared, on a CPU.

Task: semantic segmentation of synthetic scenes whose shapes vary in scale from 8 px to
most of the image, in aspect ratio and in rotation, on clutter. The network is a
:class:`~deformconv.models.CompactFCN`: five 3×3 conv layers, output stride 4, whose plain
receptive field (31 px) is smaller than the largest objects; in the deformable twin the
last three layers learn offsets that can stretch it. Both twins start from the same
weights (the offsets at zero) and train with AdamW and a one-cycle schedule.

Three runs are compared:

- ``plain`` and ``deformable``: the same number of iterations;
- ``plain, equal time``: the plain twin trained for as long as the deformable one took
  (more iterations, with the schedule stretched over them), since the deformable layers
  cost more per iteration: the deformable twin wins only if it is ahead of this one too.

:func:`run_demo` then evaluates them (mIoU, each image alone, each object by scale),
times inference, draws the learning curves, predictions, sampling locations and the
object recall per scale, and writes ``report.md`` (see :mod:`.demo_report`),
``metrics.json`` and the PNGs to the output folder. ``deformconv demo`` is its command line.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .results import write_json
from .specs import DataSpec, ModelSpec, build_datasets, build_model
from .timing import ms_per_image, parameter_count
from .twins import twin_models

__all__ = ["RUNS", "DemoSettings", "demo_data", "demo_specs", "run_demo", "run_folder"]

RUNS = ("plain", "deformable", "plain, equal time")
MODEL = "compact_fcn"


@dataclass
class DemoSettings:
    """Data, model and training of the demo. The defaults take about 4 minutes on 2 CPU
    cores (README: the measured numbers)."""

    iterations: int = 1500  # per twin at equal iterations
    equal_time: bool = True  # also train the plain twin for the deformable one's time
    image_size: int = 64
    batch_size: int = 16
    train_size: int = 3000  # scenes rendered once, then turned and mirrored at random
    val_size: int = 200
    widths: tuple[int, ...] = (24, 32, 48, 48, 48)
    strides: tuple[int, ...] = (2, 2, 1, 1, 1)
    deform_layers: int = 3  # the last layers, on the 16x16 maps of a 64 px image
    lr: float = 6e-3  # AdamW peak rate of the one-cycle schedule
    weight_decay: float = 1e-4
    warmup_share: float = 0.15  # of each run's iterations: one-cycle's rising part
    # Adam moves every weight by about lr per step whatever its gradient, and an offset
    # sums 9 * C_in of them: at the full rate the zero-initialised offsets would jump by
    # pixels per step; a twentieth of it lets them grow as the features form.
    offset_lr_mult: float = 0.05
    # Cross-entropy weights (1 / class frequency) ** power: background holds most pixels,
    # and unweighted training reaches the rare shapes late.
    class_balance: float = 0.5
    seed: int = 0  # model initialisation, data order and the scenes (validation: seed + 1)
    device: str = "cpu"
    figures: int = 3  # images in the prediction and sampling-location figures
    evaluations: int = 6  # validations per run, for the learning curves
    progress: bool = True  # progress bars
    scene: dict[str, Any] = field(default_factory=lambda: {
        "classes": ["triangle", "rectangle", "ellipse", "star", "cross"],
        "clutter": 0.5, "max_distractors": 4, "max_objects": 3})

    @classmethod
    def smoke(cls, **overrides: Any) -> DemoSettings:
        """Seconds, for tests: tiny images, model and data, a few iterations."""
        values = dict(iterations=4, image_size=32, batch_size=2, train_size=8, val_size=4,
                      widths=(4, 4, 4), strides=(2, 1, 1), deform_layers=2, figures=2,
                      evaluations=2)
        return cls(**{**values, **overrides})


def run_folder(name: str) -> str:
    """The subfolder of a run's checkpoints and metrics: ``plain_equal_time`` etc."""
    return name.replace(", ", "_").replace(" ", "_")


def demo_specs(s: DemoSettings, classes: int) -> tuple[ModelSpec, ModelSpec]:
    """(deformable, plain) model specs of the demo for C = ``classes`` object classes."""
    kwargs = {"widths": list(s.widths), "strides": list(s.strides),
              "deform_layers": s.deform_layers}
    return (ModelSpec(MODEL, classes + 1, True, copy.deepcopy(kwargs)),
            ModelSpec(MODEL, classes + 1, False, copy.deepcopy(kwargs)))


def demo_data(s: DemoSettings) -> tuple[DataSpec, Dataset, Dataset, int]:
    """(spec, training set, validation set, C classes): the scenes rendered once and kept
    in memory; training samples turned by quarter turns and mirrored at random (the
    scenes' statistics do not change under either)."""
    from ..data import InMemory
    from ..data.transforms import Compose, RandomHorizontalFlip, RandomRot90

    data = DataSpec(image_size=s.image_size, train_size=s.train_size, val_size=s.val_size,
                    data_seed=s.seed, scene=dict(s.scene))
    train_set, val_set, classes = build_datasets(data, "segmentation")
    assert train_set is not None
    augment = Compose([RandomRot90(), RandomHorizontalFlip()])
    return data, InMemory(train_set, augment), InMemory(val_set), classes


def _warm_up(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device
             ) -> None:
    """One forward and backward pass of a copy of ``model``, so that kernel compilation
    (Numba's, on a cold cache) is not counted as training time."""
    net = copy.deepcopy(model).to(device).train()
    images = torch.stack([dataset[i][0] for i in range(min(batch_size, len(dataset)))])  # type: ignore[arg-type]
    net(images.to(device)).sum().backward()


def _train(s: DemoSettings, name: str, model: nn.Module, iterations: int, train_set: Dataset,
           val_set: Dataset, class_weights: list[float], out: Path, extra: dict[str, Any]
           ) -> dict[str, Any]:
    from ..engine import TrainConfig, train

    print(f"training {name}: {iterations} iterations")
    config = TrainConfig(
        task="segmentation", iterations=iterations, batch_size=s.batch_size,
        optimizer="adamw", lr=s.lr, weight_decay=s.weight_decay, schedule="onecycle",
        warmup_iters=round(s.warmup_share * iterations), offset_lr_mult=s.offset_lr_mult,
        class_weights=class_weights, seed=s.seed,
        eval_every=max(1, iterations // s.evaluations), keep_best=False, log_every=10,
        out_dir=str(out), device=s.device, progress=s.progress)
    result = train(config, model, train_set, val_set, extra=extra)
    return {"metrics": result.metrics, "train_seconds": result.train_seconds,
            "iterations": result.iteration, "checkpoint": result.last_checkpoint}


def run_demo(s: DemoSettings, out: Path) -> dict[str, Any]:
    """Run the demo, writing to folder ``out``; returns what ``metrics.json`` holds."""
    from ..engine import balanced_class_weights, label_counts, resolve_device
    from .demo_report import analyse, comparison_table, write_report

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(s.device)
    print(f"rendering {s.train_size} training and {s.val_size} validation scenes")
    data, train_set, val_set, classes = demo_data(s)
    deform_spec, plain_spec = demo_specs(s, classes)
    specs = {"plain": plain_spec, "deformable": deform_spec, "plain, equal time": plain_spec}
    twins = twin_models(deform_spec, plain_spec, s.seed)
    models = {"plain": twins["plain"], "deformable": twins["deformable"]}
    counts = label_counts(train_set.targets, classes + 1)  # type: ignore[attr-defined]
    weights = balanced_class_weights(counts, s.class_balance)
    _warm_up(models["deformable"], train_set, s.batch_size, device)

    results: dict[str, dict[str, Any]] = {}
    for name in RUNS[:2]:
        results[name] = _train(s, name, models[name], s.iterations, train_set, val_set,
                               weights, out / run_folder(name),
                               {"model": asdict(specs[name]), "data": asdict(data)})
    if s.equal_time:
        name = RUNS[2]
        ratio = results["deformable"]["train_seconds"] / results["plain"]["train_seconds"]
        models[name] = build_model(plain_spec, seed=s.seed)  # the plain twin's initial weights
        results[name] = _train(s, name, models[name], max(1, round(s.iterations * ratio)),
                               train_set, val_set, weights, out / run_folder(name),
                               {"model": asdict(plain_spec), "data": asdict(data)})

    batch = torch.stack([val_set[i][0] for i in range(min(8, len(val_set)))]).to(device)  # type: ignore[arg-type]
    speed = ms_per_image({k: models[k] for k in RUNS[:2]}, batch)
    for name, result in results.items():
        result.update(name=specs[name].name, deformable=specs[name].deformable,
                      params=parameter_count(models[name]),
                      ms_per_image=speed["deformable" if specs[name].deformable else "plain"])
    summary: dict[str, Any] = {
        "settings": asdict(s), "classes": list(val_set.class_names),  # type: ignore[attr-defined]
        "class_weights": weights, "runs": results,
    }
    summary.update(analyse(s, models, val_set, classes, out))
    summary["total_seconds"] = time.perf_counter() - started
    write_json(summary, out / "metrics.json")
    write_report(summary, out)
    print()
    print(comparison_table(summary))
    print(f"\nreport: {out / 'report.md'} ({summary['total_seconds']:.0f} s in all)")
    return summary
