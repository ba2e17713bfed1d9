"""A backbone pretrained once on synthetic classification, cached: the studies' ImageNet.

The DCN paper fine-tunes ImageNet-pretrained ResNets (plain ones: the offsets of the
deformable layers start at zero when fine-tuning begins). :func:`pretrained_backbone`
mirrors that at CPU scale: a plain ResNet classifier trained on single-object synthetic
scenes (a wider label set than the downstream tasks', large objects, as in ImageNet
photos), with AdamW and a one-cycle schedule. The weights are written under
``cache_dir/pretrain-<key>/`` where ``key`` hashes every setting, so each setting trains
once and later calls (other studies, other processes) read it back. Segmentation and
detection models load it with ``model.load_backbone_state_dict(state)``.

Usage (the first call trains for minutes on a CPU; later ones read the cache)::

    from deformconv.runs import PretrainSettings, load_pretrained, pretrained_backbone
    info = pretrained_backbone(PretrainSettings(), "runs/cache")
    model.load_backbone_state_dict(load_pretrained(info["checkpoint"]))
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .results import write_json
from .specs import DataSpec, ModelSpec, build_datasets, build_model
from .timing import seconds_per_iteration

__all__ = ["PretrainSettings", "load_pretrained", "pretrained_backbone", "pretraining_seconds"]


@dataclass(frozen=True)
class PretrainSettings:
    """What the pretraining run is; every field goes into the cache key."""

    model: str = "resnet18"  # a classification entry point of deformconv.models
    base_channels: int = 32
    image_size: int = 64
    train_size: int = 10000  # scenes rendered once, then turned and mirrored at random
    val_size: int = 500
    iterations: int = 3000
    batch_size: int = 32
    lr: float = 2e-3  # AdamW peak rate of the one-cycle schedule
    weight_decay: float = 0.05
    warmup_share: float = 0.1
    seed: int = 0  # weights and data order
    data_seed: int = 100  # scenes (validation: data_seed + 1), apart from the studies' seeds
    # SceneConfig overrides: the ten rotation-distinct default classes, one object filling
    # 16 px to 90 % of the image, on the downstream scenes' clutter.
    scene: dict[str, Any] = field(default_factory=lambda: {
        "min_object_size": 16.0, "max_object_size": 0.9, "clutter": 0.5,
        "max_distractors": 4})

    def key(self) -> str:
        """12 hex digits identifying these settings."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def spec(self, classes: int) -> ModelSpec:
        """The plain classifier for C = ``classes`` classes, batch norm learning."""
        return ModelSpec(self.model, classes, deformable=False,
                         kwargs={"base_channels": self.base_channels,
                                 "norm_layer": "batch_norm", "frozen_stages": -1})

    def data(self) -> DataSpec:
        return DataSpec(image_size=self.image_size, train_size=self.train_size,
                        val_size=self.val_size, data_seed=self.data_seed,
                        scene=dict(self.scene))


def pretrained_backbone(settings: PretrainSettings, cache_dir: str | Path, *,
                        device: str = "cpu", progress: bool = False,
                        poll_seconds: float = 5.0) -> dict[str, Any]:
    """The pretrained classifier of ``settings``, trained first unless cached.

    Returns ``{"checkpoint": path of the weights, "metrics": validation top-1 ...,
    "train_seconds" (the training steps' wall time, summed over resumes), "seconds" and
    "cpu_seconds" (wall and process CPU time of the pretraining process: rendering,
    training, evaluation; a resumed run counts its last part only), "threads" (torch's
    thread count it trained at; a resumed run's last part's: absent in records written
    before it was kept), "cached": whether it was read back}``. The weights depend on
    the thread count (sums split over threads round differently: up to 7e-5 after 3000
    steps), which the cache key leaves out: a cached backbone serves any thread count.

    One process trains while others that ask for the same settings (e.g. the shards of a
    study) wait for its result: the trainer holds ``pretrain-<key>.lock`` (its process id;
    a lock whose process has died, on this machine, is taken over), and the folder appears
    whole, renamed into place.
    """
    folder = Path(cache_dir) / f"pretrain-{settings.key()}"
    info_path = folder / "pretrain.json"
    lock = folder.with_name(f"{folder.name}.lock")
    while not info_path.is_file():
        if _take_lock(lock):
            try:
                if not info_path.is_file():
                    _train_into(settings, folder, device, progress)
                    return _info(info_path, cached=False)
            finally:
                lock.unlink(missing_ok=True)
        else:
            time.sleep(poll_seconds)
    return _info(info_path, cached=True)


def _info(info_path: Path, cached: bool) -> dict[str, Any]:
    return {**json.loads(info_path.read_text()), "checkpoint": str(info_path.parent / "last.pt"),
            "cached": cached}


def _take_lock(lock: Path) -> bool:
    """Create ``lock`` holding this process's id; False while a live process holds it
    (a lock left by a dead process is removed, and the next call may take it)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            holder = int(lock.read_text() or "0")
        except (OSError, ValueError):
            return False  # being written or removed just now: ask again later
        if holder and not _alive(holder):
            lock.unlink(missing_ok=True)
        return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _train_into(settings: PretrainSettings, folder: Path, device: str, progress: bool) -> None:
    """Train in ``<folder>.partial`` (continuing a run that was stopped there), then
    rename it into place."""
    scratch = folder.with_name(f"{folder.name}.partial")
    info = _pretrain(settings, scratch, device, progress)
    write_json({**info, "settings": asdict(settings)}, scratch / "pretrain.json")
    try:
        scratch.rename(folder)
    except OSError:  # a rare race let another process train too, and it finished first
        shutil.rmtree(scratch, ignore_errors=True)


def _pretrain(s: PretrainSettings, out: Path, device: str, progress: bool) -> dict[str, Any]:
    from ..data import InMemory
    from ..data.transforms import Compose, RandomHorizontalFlip, RandomRot90
    from ..engine import TrainConfig, train

    start, cpu_start = time.perf_counter(), time.process_time()
    train_set, val_set, classes = build_datasets(s.data(), "classification")
    assert train_set is not None
    augment = Compose([RandomRot90(), RandomHorizontalFlip()])
    train_set, val_set = InMemory(train_set, augment), InMemory(val_set)
    model = build_model(s.spec(classes), seed=s.seed)
    config = TrainConfig(
        task="classification", iterations=s.iterations, batch_size=s.batch_size,
        optimizer="adamw", lr=s.lr, weight_decay=s.weight_decay, schedule="onecycle",
        warmup_iters=round(s.warmup_share * s.iterations), seed=s.seed, keep_best=False,
        checkpoint_every=max(1, s.iterations // 4), resume="auto", log_every=50,
        out_dir=str(out), device=device, progress=progress)
    result = train(config, model, train_set, val_set,
                   extra={"model": asdict(s.spec(classes)), "data": asdict(s.data())})
    return {"metrics": result.metrics, "train_seconds": result.train_seconds,
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu_start, "iterations": result.iteration,
            "threads": torch.get_num_threads()}


def pretraining_seconds(settings: PretrainSettings,
                        clock: Callable[[], float] = time.perf_counter) -> float:
    """Estimated time of the pretraining's training steps, without running it: one step of
    its classifier on its scenes (``seconds_per_iteration`` with ``clock``) times its
    iterations."""
    sample = replace(settings.data(), train_size=5 * settings.batch_size, val_size=1)
    train_set, _, classes = build_datasets(sample, "classification")
    assert train_set is not None
    model = build_model(settings.spec(classes), seed=settings.seed)
    step = seconds_per_iteration(model, "classification", train_set, settings.batch_size,
                                 torch.device("cpu"), clock=clock)
    return step * settings.iterations


def load_pretrained(checkpoint: str | Path) -> dict[str, Tensor]:
    """The classifier's weights (a torchvision-style ResNet state_dict) from a checkpoint
    written by :func:`pretrained_backbone`."""
    from ..engine import load_checkpoint

    return load_checkpoint(Path(checkpoint))["model"]
