"""What every study shares: sizes, seeded runs cached as JSON, training, mean ± std.

A study is a set of runs (train + evaluate one configuration with one seed, or measure one
model). Each run's result is written to ``<out>/<study>/<run>.json`` together with the
settings that produced it; a later call skips runs whose JSON exists with the same
settings, so a long study can be stopped and continued. A run that is interrupted while
training resumes from its last checkpoint (``<out>/<study>/<run>/last.pt``).

The models, data and training loop are the library's own (``deformconv.models``,
``deformconv.data`` through ``deformconv.runs``, ``deformconv.engine.train``), set up
as ``deformconv demo`` sets them up.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deformconv.runs import (
    DataSpec,
    DemoSettings,
    ModelSpec,
    build_datasets,
    build_model,
    from_scratch_spec,
    parameter_count,
    seconds_per_batch,
    seconds_per_iteration,
    set_threads,
    twin_model,
    write_json,
)

__all__ = [
    "DEFAULT_OUT",
    "Sizes",
    "Study",
    "add_common_args",
    "detection_specs",
    "mean_std",
    "parameter_count",
    "plan",
    "seed_stats",
    "segmentation_specs",
    "train_run",
    "twin_model",
]

DEFAULT_OUT = Path("runs/experiments")
SMOKE_OUT = Path("runs/experiments-smoke")
# The demo's scenes: five shape classes at widely varying scale (8 px to 0.7 of the image
# side), aspect ratio (up to 2.5) and rotation (any angle), on lighter clutter.
SCENE: dict[str, Any] = DemoSettings().scene
GRAD_CLIP = 5.0  # from-scratch BN nets at batch 8 spike early without it
# Offsets train at the full rate: in a few hundred SGD iterations a reduced rate (the
# paper's long schedules use one) would leave them near zero.
OFFSET_LR_MULT = 1.0


@dataclass(frozen=True)
class Sizes:
    """How big a study's runs are: data, model width, training length, seeds."""

    image_size: int
    batch_size: int
    train_size: int
    val_size: int
    base_channels: int
    iterations: int
    seeds: tuple[int, ...]
    lr: float = 0.02
    scene: dict[str, Any] = field(default_factory=lambda: dict(SCENE))

    def identity(self) -> dict[str, Any]:
        """The sizes that decide a run's result; the seed list is left out (each run
        records its own seed), so more seeds can be added to a finished study."""
        return {k: v for k, v in asdict(self).items() if k != "seeds"}

    def data(self) -> DataSpec:
        """Training scenes from seed 0, validation from seed 1, the same for every run."""
        return DataSpec(image_size=self.image_size, train_size=self.train_size,
                        val_size=self.val_size, data_seed=0, scene=dict(self.scene))


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path,
                        help=f"results folder (default {DEFAULT_OUT}, {SMOKE_OUT} with --smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes that run in seconds (for tests); results are "
                             "marked as smoke results")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the study's seeds")
    parser.add_argument("--threads", type=int, default=2,
                        help="CPU threads for torch and the Numba kernels (default 2)")
    parser.add_argument("--plan", action="store_true",
                        help="measure seconds per training iteration of each configuration, "
                             "print the estimated study time, and stop")
    parser.add_argument("--shard", type=_shard, metavar="K/N",
                        help="run only every N-th run starting at the K-th (0-based), e.g. two "
                             "processes with --shard 0/2 and --shard 1/2 --threads 1 each; a "
                             "last call without --shard writes the summary")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each finished run's last.pt (default: deleted once the "
                             "run's result JSON is written)")


def _shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    try:
        shard = (int(k), int(n))
    except ValueError:
        shard = (-1, 0)
    if not sep or not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, got {text!r}")
    return shard


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN for none)."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def seed_stats(results: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """One configuration over its seeds: parameters, mean training seconds and, per metric,
    ``{"mean", "std", "values"}``."""
    row: dict[str, Any] = {"params": results[0]["params"],
                           "train_seconds": mean_std([r["seconds"] for r in results])[0]}
    for key in metrics:
        values = [r["metrics"][key] for r in results]
        mean, std = mean_std(values)
        row[key] = {"mean": mean, "std": std, "values": values}
    return row


def _plain_json(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj))


class StudyError(SystemExit):
    """A study cannot go on (e.g. old results made with other settings); exits with code 2."""

    def __init__(self, message: str) -> None:
        print(f"error: {message}", file=sys.stderr)
        super().__init__(2)


class Study:
    """A named set of runs under ``<out>/<name>/``, each cached as ``<run>.json``.

    ``settings`` (plain values) are stored with every result; a result made with other
    settings is refused rather than mixed in.
    """

    def __init__(self, name: str, args: argparse.Namespace, settings: dict[str, Any]) -> None:
        self.name = name
        self.mode = "smoke" if args.smoke else "full"
        out = args.out if args.out is not None else (SMOKE_OUT if args.smoke else DEFAULT_OUT)
        self.folder = Path(out) / name
        self.settings = _plain_json(settings)
        self.keep_checkpoints = args.keep_checkpoints
        self.shard: tuple[int, int] | None = getattr(args, "shard", None)
        self.done: list[str] = []
        self.skipped: list[str] = []
        self.left: list[str] = []  # runs of other shards, not done yet
        set_threads(args.threads)

    def run_dir(self, run: str) -> Path:
        return self.folder / run

    @property
    def complete(self) -> bool:
        """Whether every run asked for so far has a result (false only with ``--shard``)."""
        return not self.left

    def run(self, run: str, config: dict[str, Any], fn: Callable[[Path], dict[str, Any]]
            ) -> dict[str, Any] | None:
        """The result of run ``run``: read from its JSON, or ``fn(run_dir)`` then saved;
        None for a run left to another shard."""
        index = len(self.done) + len(self.skipped) + len(self.left)
        path = self.folder / f"{run}.json"
        identity = _plain_json({"study": self.name, "run": run, "mode": self.mode,
                                "settings": self.settings, "config": config})
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("identity") != identity:
                raise StudyError(f"{path} was made with other settings or another mode; "
                                 "use another --out or delete it")
            self.skipped.append(run)
            print(f"[{self.name}] {run}: done before, skipped")
            return saved["result"]
        if self.shard is not None and index % self.shard[1] != self.shard[0]:
            self.left.append(run)
            return None
        print(f"[{self.name}] {run}: running")
        start = time.perf_counter()
        result = fn(self.run_dir(run))
        result["seconds"] = time.perf_counter() - start
        tmp = path.with_suffix(".json.tmp")
        write_json({"identity": identity, "result": result}, tmp)
        os.replace(tmp, path)  # a result file is complete or absent
        checkpoint = self.run_dir(run) / "last.pt"
        if not self.keep_checkpoints and checkpoint.exists():
            checkpoint.unlink()
        self.done.append(run)
        return result

    def finish_shard(self) -> int:
        """Report a shard's end (the summary needs every run); the exit code, 0."""
        print(f"[{self.name}] shard {self.shard}: {len(self.done)} run(s) done, "
              f"{len(self.skipped)} skipped, {len(self.left)} left to other shards; run "
              "again without --shard once all are done to write the summary")
        return 0

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """``<out>/<name>/summary.json``: what the results generator reads."""
        path = write_json({"study": self.name, "mode": self.mode, "settings": self.settings,
                           **summary}, self.folder / "summary.json")
        print(f"[{self.name}] {len(self.done)} run(s) done, {len(self.skipped)} skipped; "
              f"summary: {path}")
        return path


def train_run(task: str, spec: ModelSpec, plain: ModelSpec, sizes: Sizes, seed: int,
              run_dir: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``spec`` (initialised from its plain twin) with ``seed``; evaluate on the
    validation scenes. Resumes from ``run_dir/last.pt`` if a previous call was stopped.
    Returns the trained model and ``{"metrics", "params", "iterations"}``."""
    from deformconv.engine import TrainConfig, train

    train_set, val_set, _ = build_datasets(sizes.data(), task)
    assert train_set is not None
    model = twin_model(spec, plain, seed)
    config = TrainConfig(
        task=task, iterations=sizes.iterations, batch_size=sizes.batch_size, lr=sizes.lr,
        warmup_iters=min(50, sizes.iterations // 10), schedule="cosine",
        grad_clip_norm=GRAD_CLIP, offset_lr_mult=OFFSET_LR_MULT, seed=seed,
        checkpoint_every=max(1, sizes.iterations // 4), keep_best=False, resume="auto",
        out_dir=str(run_dir), progress=False, log_every=10, device="cpu")
    result = train(config, model, train_set, val_set,
                   extra={"model": asdict(spec), "data": asdict(sizes.data())})
    return model, {"metrics": result.metrics, "params": parameter_count(model),
                   "iterations": result.iteration}


def plan(study: Study, task: str, specs: dict[str, ModelSpec], sizes: Sizes,
         eval_share: float = 0.1) -> dict[str, Any]:
    """Measured seconds per training iteration of each configuration (one SGD step,
    ``deformconv.runs.seconds_per_iteration``, plus drawing a batch) and the estimated study time:
    sum over configurations of s/iter x iterations x seeds, plus ``eval_share`` for
    evaluation, checkpoints and model building; also written to ``<study>/plan.json``."""
    train_set, _, _ = build_datasets(sizes.data(), task)
    assert train_set is not None
    data_s = seconds_per_batch(train_set, task, sizes.batch_size)
    print(f"  drawing a batch: {data_s:.3f} s")
    per_iter = {}
    for name, spec in specs.items():
        model = build_model(spec, seed=0)
        per_iter[name] = data_s + seconds_per_iteration(model, task, train_set,
                                                        sizes.batch_size, torch.device("cpu"))
        print(f"  {name}: {per_iter[name]:.3f} s / iteration")
    train_s = sum(per_iter.values()) * sizes.iterations * len(sizes.seeds)
    total = train_s * (1 + eval_share)
    print(f"estimate: {len(specs)} configurations x {len(sizes.seeds)} seeds x "
          f"{sizes.iterations} iterations = {total / 60:.1f} min "
          f"({train_s / 60:.1f} min training + {eval_share:.0%} for the rest)")
    estimate = {"seconds_per_iteration": per_iter, "iterations": sizes.iterations,
                "seeds": len(sizes.seeds), "estimated_minutes": total / 60,
                "threads": torch.get_num_threads()}
    write_json(estimate, study.folder / "plan.json")
    return estimate


def segmentation_specs(sizes: Sizes, classes: int, deform_blocks: Sequence[int]
                       ) -> tuple[ModelSpec, ModelSpec]:
    """(DeepLab with ``deform_blocks``, its plain twin): ResNet-50 of width
    ``base_channels`` at output stride 16 (res5 dilated by 2, as in the paper) with a small
    atrous rate for small maps."""
    overrides = {"backbone_kwargs": {"output_stride": 16}, "atrous_rate": 2}

    def spec(deformable: bool) -> ModelSpec:
        return from_scratch_spec("deeplab_resnet50", classes, image_size=sizes.image_size,
                                 deformable=deformable, base_channels=sizes.base_channels,
                                 deform_blocks=list(deform_blocks), overrides=overrides)

    return spec(True), spec(False)


# Detection on a CPU: the torchvision defaults sized down (fewer RoIs, narrower head), and
# a low score threshold so that mAP sees the whole precision-recall curve.
DETECTION_OPTIONS: dict[str, Any] = {
    "representation_size": 256, "rpn_post_nms_top_n_train": 64,
    "rpn_post_nms_top_n_test": 64, "box_batch_size_per_image": 32,
    "box_score_thresh": 0.001, "box_detections_per_img": 20,
}


def detection_specs(sizes: Sizes, classes: int, deform_blocks: Sequence[int],
                    deformable_head: bool) -> tuple[ModelSpec, ModelSpec]:
    """(Faster R-CNN ResNet-50 with ``deform_blocks`` and deformable RoI pooling or not, its
    plain twin), with the ``deformconv train`` defaults for training from scratch at
    ``image_size`` (anchors scaled to it) and :data:`DETECTION_OPTIONS`."""
    options = {**DETECTION_OPTIONS, "deformable_head": deformable_head,
               "head_channels": 4 * sizes.base_channels}

    def spec(deformable: bool) -> ModelSpec:
        return from_scratch_spec("faster_rcnn_resnet50", classes, image_size=sizes.image_size,
                                 deformable=deformable, base_channels=sizes.base_channels,
                                 deform_blocks=list(deform_blocks), overrides=options)

    return spec(True), spec(False)
