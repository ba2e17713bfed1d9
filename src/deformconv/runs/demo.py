"""The demo run: a deformable network and its plain twin, trained and compared, on a CPU.

Task: semantic segmentation of synthetic scenes whose shapes vary in scale from 8 px to
nearly the whole image, in aspect ratio and in rotation, on clutter. The network is a
:class:`~deformconv.models.CompactFCN`: five 3×3 conv layers, two of them strided, to
output stride 4; in the deformable twin the top layer, on the 16×16 map, learns offsets
that can stretch its sampling grid to the object at hand, at a moderate extra cost per
step. Both twins start from the same weights (the offsets at zero) and train with
AdamW and a warmup-stable-decay schedule.

Three runs are compared:

- ``plain`` and ``deformable``: the same number of iterations;
- ``plain, equal time``: the plain twin trained for as long as the deformable one takes
  (more iterations, by the ratio of the twins' step times measured before training), since
  the deformable layer costs more per iteration: it continues the plain run from the start
  of that run's decay (``branch.pt``; until there both share rate, batches and weights),
  holds the rate longer and decays over its own last fifth.

:func:`run_demo` then evaluates them (mIoU, each image alone, each object by scale),
times inference, draws the learning curves, predictions, sampling locations and the
object recall per scale, and writes ``report.md`` (see :mod:`.demo_report`),
``metrics.json`` and the PNGs to the output folder. ``deformconv demo`` is its command line.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .results import write_json
from .specs import DataSpec, ModelSpec, build_datasets, build_model
from .timing import ms_per_image, parameter_count, step_seconds
from .twins import twin_models

__all__ = ["RUNS", "DemoSettings", "demo_data", "demo_specs", "run_demo", "run_folder"]

RUNS = ("plain", "deformable", "plain, equal time")
BRANCH = "branch.pt"  # the plain run's checkpoint the equal-time run continues from
MODEL = "compact_fcn"


@dataclass
class DemoSettings:
    """Data, model and training of the demo (the README's demo section and
    ``docs/demo_seeds.md`` give the defaults' results and times over 5 seeds)."""

    iterations: int = 3000  # per twin at equal iterations
    equal_time: bool = True  # also train the plain twin for the deformable one's time
    image_size: int = 64
    batch_size: int = 16
    train_size: int = 3000  # scenes rendered once, then turned and mirrored at random
    val_size: int = 200
    widths: tuple[int, ...] = (24, 32, 48, 48, 48)
    strides: tuple[int, ...] = (2, 2, 1, 1, 1)
    deform_layers: int = 1  # the last layers, on the 16x16 maps of a 64 px image
    modulated: bool = False  # DCN v2 modulation in the deformable layers
    skip_layer: int | None = None  # the layer a decoder fuses (None: no decoder)
    decoder_width: int = 32
    lr: float = 6e-3  # AdamW peak rate
    weight_decay: float = 1e-4
    warmup_share: float = 0.05  # of the iterations: the rate's linear rise
    decay_share: float = 0.2  # of each run's iterations: the rate's linear decay to 0
    # Adam moves every weight by about lr per step whatever its gradient, and an offset
    # sums 9 * C_in of them: at the full rate the zero-initialised offsets would jump by
    # pixels per step; a twentieth of it lets them grow as the features form.
    offset_lr_mult: float = 0.05
    # Cross-entropy weights (1 / class frequency) ** power: background holds most pixels,
    # and unweighted training reaches the rare shapes late.
    class_balance: float = 0.5
    # Max global L2 norm of the gradients. Without it, 2 of 5 seeds of the deformable twin
    # spiked at the peak rate and never recovered the lost ground (docs/demo_seeds.md).
    grad_clip_norm: float | None = 1.0
    seed: int = 0  # model initialisation, data order and the scenes (validation: seed + 1)
    device: str = "cpu"
    figures: int = 3  # images in the prediction and sampling-location figures
    evaluations: int = 6  # validations per run, for the learning curves
    progress: bool = True  # progress bars
    scene: dict[str, Any] = field(default_factory=lambda: {
        "classes": ["triangle", "rectangle", "ellipse", "star", "cross"],
        "clutter": 0.5, "max_distractors": 4, "max_objects": 3, "max_object_size": 0.9})

    @classmethod
    def smoke(cls, **overrides: Any) -> DemoSettings:
        """Seconds, for tests: tiny images, model and data, a few iterations."""
        values = dict(iterations=4, image_size=32, batch_size=2, train_size=8, val_size=4,
                      widths=(4, 4, 4), strides=(2, 1, 1), deform_layers=2, skip_layer=0, figures=2,
                      evaluations=2)
        return cls(**{**values, **overrides})


def run_folder(name: str) -> str:
    """The subfolder of a run's checkpoints and metrics: ``plain_equal_time`` etc."""
    return name.replace(", ", "_").replace(" ", "_")


def demo_specs(s: DemoSettings, classes: int) -> tuple[ModelSpec, ModelSpec]:
    """(deformable, plain) model specs of the demo for C = ``classes`` object classes."""
    kwargs = {"widths": list(s.widths), "strides": list(s.strides),
              "deform_layers": s.deform_layers, "skip_layer": s.skip_layer,
              "decoder_width": s.decoder_width, "modulated": s.modulated}
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


def _config(s: DemoSettings, iterations: int, out: Path, class_weights: list[float],
            **changes: Any) -> Any:
    """The training config of one run: AdamW, warmup-stable-decay over ``iterations``
    (warm-up and evaluation period from ``s.iterations``, so every run shares them)."""
    from ..engine import TrainConfig

    return TrainConfig(
        task="segmentation", iterations=iterations, batch_size=s.batch_size,
        optimizer="adamw", lr=s.lr, weight_decay=s.weight_decay, schedule="wsd",
        warmup_iters=round(s.warmup_share * s.iterations), decay_share=s.decay_share,
        offset_lr_mult=s.offset_lr_mult, grad_clip_norm=s.grad_clip_norm,
        class_weights=class_weights, seed=s.seed,
        eval_every=max(1, s.iterations // s.evaluations), keep_best=False, log_every=10,
        out_dir=str(out), device=s.device, progress=s.progress, **changes)


def _train(name: str, config: Any, model: nn.Module, train_set: Dataset, val_set: Dataset,
           extra: dict[str, Any], on_iteration_end: Any = None) -> dict[str, Any]:
    from ..engine import train

    print(f"training {name}: {config.iterations} iterations")
    cpu_started = time.process_time()
    result = train(config, model, train_set, val_set, extra=extra,
                   on_iteration_end=on_iteration_end)
    # CPU time of this process in the call: with the validations; a continued run's
    # excludes what it continues from
    return {"metrics": result.metrics, "train_seconds": result.train_seconds,
            "cpu_seconds": time.process_time() - cpu_started,
            "iterations": result.iteration, "checkpoint": result.last_checkpoint}


def _train_plain(s: DemoSettings, model: nn.Module, train_set: Dataset, val_set: Dataset,
                 weights: list[float], out: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """The plain run of ``s.iterations``; keeps ``branch.pt``, its state where the schedule
    starts decaying, for the equal-time run to continue from."""
    branch_at = _branch_at(s)
    folder = out / run_folder("plain")

    def keep_branch(iteration: int) -> None:
        if iteration == branch_at:
            shutil.copyfile(folder / "last.pt", folder / BRANCH)

    config = _config(s, s.iterations, folder, weights, checkpoint_every=branch_at)
    result = _train("plain", config, model, train_set, val_set, extra, keep_branch)
    result["branch"] = str(folder / BRANCH)
    return result


def _train_equal_time(s: DemoSettings, ratio: float, plain: dict[str, Any],
                      model: nn.Module, train_set: Dataset, val_set: Dataset,
                      weights: list[float], out: Path, extra: dict[str, Any]
                      ) -> dict[str, Any]:
    """The plain twin for the deformable run's time: ``ratio`` (deformable / plain step
    time) times the plain run's iterations. When that is at least the plain run's
    iterations, the run continues the plain run from its branch point (until there the
    schedule, batches and weights are the same), holds the rate until its own decay and
    decays; otherwise it starts afresh."""
    iterations = max(1, round(s.iterations * ratio))
    folder = out / run_folder(RUNS[2])
    folder.mkdir(parents=True, exist_ok=True)
    resume = None
    if iterations >= s.iterations:
        resume = plain["branch"]
        # the shared part of the learning curve; the trainer drops what follows the branch
        shutil.copyfile(out / run_folder("plain") / "metrics.jsonl", folder / "metrics.jsonl")
    config = _config(s, iterations, folder, weights, resume=resume)
    result = _train(RUNS[2], config, model, train_set, val_set, extra)
    result["branched_at"] = None if resume is None else _branch_at(s)
    return result


def _branch_at(s: DemoSettings) -> int:
    """Where the equal-time run leaves the plain run: the start of the plain run's decay."""
    from ..engine import decay_start

    return decay_start(s.iterations, s.decay_share)


def _load() -> float:
    """The 1-minute load average (NaN where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


def run_demo(s: DemoSettings, out: Path) -> dict[str, Any]:
    """Run the demo, writing to folder ``out``; returns what ``metrics.json`` holds."""
    from ..engine import balanced_class_weights, build_optimizer, label_counts, resolve_device
    from .demo_report import analyse, comparison_table, write_report

    started, cpu_started, load_start = time.perf_counter(), time.process_time(), _load()
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
    # Also the warm-up: kernel compilation and first calls are not counted as training.
    print("timing the twins' training steps")
    config = _config(s, s.iterations, out, weights)
    steps = step_seconds(models, "segmentation", train_set, s.batch_size, device,
                         lambda net: build_optimizer(net, config))
    ratio = steps["deformable"] / steps["plain"]

    extra = {"data": asdict(data)}
    results: dict[str, dict[str, Any]] = {
        "plain": _train_plain(s, models["plain"], train_set, val_set, weights, out,
                              {**extra, "model": asdict(plain_spec)}),
        "deformable": _train("deformable", _config(s, s.iterations, out / "deformable", weights),
                             models["deformable"], train_set, val_set,
                             {**extra, "model": asdict(deform_spec)}),
    }
    if s.equal_time:
        models[RUNS[2]] = build_model(plain_spec, seed=s.seed)
        results[RUNS[2]] = _train_equal_time(
            s, ratio, results["plain"], models[RUNS[2]], train_set, val_set, weights, out,
            {**extra, "model": asdict(plain_spec)})

    batch = torch.stack([val_set[i][0] for i in range(min(8, len(val_set)))]).to(device)  # type: ignore[arg-type]
    speed = ms_per_image({k: models[k] for k in RUNS[:2]}, batch)
    for name, result in results.items():
        result.update(name=specs[name].name, deformable=specs[name].deformable,
                      params=parameter_count(models[name]),
                      ms_per_image=speed["deformable" if specs[name].deformable else "plain"])
    summary: dict[str, Any] = {
        "settings": asdict(s), "classes": list(val_set.class_names),  # type: ignore[attr-defined]
        "class_weights": weights, "runs": results,
        "step_seconds": steps, "step_ratio": ratio,
    }
    summary.update(analyse(s, models, val_set, classes, out))
    summary["total_seconds"] = time.perf_counter() - started
    summary["machine"] = {"cpu_seconds": time.process_time() - cpu_started,
                          "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                          "load_start": load_start, "load_end": _load()}
    write_json(summary, out / "metrics.json")
    write_report(summary, out)
    print()
    print(comparison_table(summary))
    print(f"\nreport: {out / 'report.md'} ({summary['total_seconds']:.0f} s in all)")
    return summary
