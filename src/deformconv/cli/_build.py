"""Datasets and models from command-line specs, and the run info that rebuilds them.

A training run stores ``{"model": ModelSpec, "data": DataSpec}`` as plain dicts in its
checkpoints (the engine's ``extra``), so ``eval``, ``viz`` and ``export`` rebuild the same
network and data from the checkpoint alone.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ._common import CLIError, non_negative_int, parse_assignments, positive_int

__all__ = [
    "DEFAULT_MODELS",
    "DataSpec",
    "ModelSpec",
    "add_data_options",
    "add_model_options",
    "build_datasets",
    "build_model",
    "data_spec_from_args",
    "model_spec_from_args",
    "specs_from_checkpoint",
]

TASKS = ("classification", "segmentation", "detection")
DEFAULT_MODELS = {"classification": "resnet50", "segmentation": "deeplab_resnet50",
                  "detection": "faster_rcnn_resnet50"}
DATA_HELP = ("synthetic (default, generated on the fly) | coco:ANN.json:IMAGE_DIR (detection) "
             "| voc:ROOT (segmentation; splits train and val)")


@dataclass
class DataSpec:
    """Where samples come from; plain values only (stored in checkpoints)."""

    source: str = "synthetic"  # "synthetic" | "coco" | "voc"
    paths: list[str] = field(default_factory=list)  # coco: [ann, images]; voc: [root]
    val_paths: list[str] = field(default_factory=list)  # coco: [ann, images] for eval
    image_size: int = 128  # synthetic side; VOC images are resized to it
    train_size: int = 2000  # synthetic training samples
    val_size: int = 200  # synthetic validation samples
    data_seed: int = 0  # synthetic scenes (validation uses data_seed + 1)
    num_classes: int | None = None  # VOC only (default 20)
    scene: dict[str, Any] = field(default_factory=dict)  # synthetic SceneConfig overrides


@dataclass
class ModelSpec:
    """Everything ``deformconv.models.create`` needs to rebuild the network."""

    name: str
    num_classes: int  # head outputs: classes, + 1 background for segmentation/detection
    deformable: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        from ..models import model_task

        return model_task(self.name)


def parse_data(text: str) -> tuple[str, list[str]]:
    """``"synthetic"`` | ``"coco:ANN:IMAGES"`` | ``"voc:ROOT"`` -> (source, paths)."""
    source, _, rest = text.partition(":")
    source = source.strip().lower()
    if source == "synthetic" and not rest:
        return "synthetic", []
    if source == "coco":
        ann, sep, images = rest.partition(":")
        if not sep or not ann or not images:
            raise CLIError(f"--data coco needs coco:ANNOTATIONS.json:IMAGE_DIR, got {text!r}")
        return "coco", [ann, images]
    if source == "voc":
        if not rest:
            raise CLIError(f"--data voc needs voc:ROOT, got {text!r}")
        return "voc", [rest]
    raise CLIError(f"--data must be {DATA_HELP}; got {text!r}")


def add_data_options(parser: argparse.ArgumentParser, *, with_train: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", help=DATA_HELP)
    if with_train:
        group.add_argument("--val-data", metavar="coco:ANN:IMAGES",
                           help="COCO validation set (default: the training set)")
    group.add_argument("--image-size", type=positive_int,
                       help="synthetic image side in pixels; VOC images are resized to it")
    if with_train:
        group.add_argument("--train-size", type=positive_int,
                           help="synthetic training samples (default 2000)")
    group.add_argument("--val-size", type=positive_int,
                       help="synthetic validation samples (default 200)")
    group.add_argument("--data-seed", type=non_negative_int,
                       help="seed of the synthetic scenes (default 0)")
    group.add_argument("--num-classes", type=positive_int,
                       help="VOC: object classes without background (default 20)")
    group.add_argument("--scene", action="append", default=[], metavar="KEY=VALUE",
                       help="synthetic scene option (repeatable), e.g. max_objects=2, "
                            "clutter=0.5, classes='[\"star\", \"cross\"]'; see "
                            "deformconv.data.SceneConfig")


def data_spec_from_args(args: argparse.Namespace, base: DataSpec | None = None) -> DataSpec:
    """A :class:`DataSpec` from ``add_data_options`` flags; unset ones keep ``base``'s."""
    spec = DataSpec(**asdict(base)) if base is not None else DataSpec()
    if getattr(args, "data", None):
        spec.source, spec.paths = parse_data(args.data)
        spec.val_paths = []
    if getattr(args, "val_data", None):
        source, paths = parse_data(args.val_data)
        if source != "coco" or spec.source != "coco":
            raise CLIError("--val-data is for COCO data only: --data coco:... "
                           "--val-data coco:ANN:IMAGES")
        spec.val_paths = paths
    for name in ("image_size", "train_size", "val_size", "data_seed", "num_classes"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(spec, name, value)
    if getattr(args, "scene", None):
        if spec.source != "synthetic":
            raise CLIError("--scene options are for synthetic data only")
        spec.scene = {**spec.scene, **parse_assignments(args.scene, "--scene")}
    return spec


def _existing(path: str, what: str, directory: bool) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CLIError(f"{what} not found: {p}")
    if directory and not p.is_dir():
        raise CLIError(f"{what} is not a folder: {p}")
    if not directory and not p.is_file():
        raise CLIError(f"{what} is not a file: {p}")
    return p


def _coco(paths: list[str]) -> Dataset:
    from ..data import CocoDetection

    ann = _existing(paths[0], "COCO annotation file", directory=False)
    images = _existing(paths[1], "COCO image folder", directory=True)
    return CocoDetection(images, ann)


def build_datasets(spec: DataSpec, task: str, *, need_train: bool = True
                   ) -> tuple[Dataset | None, Dataset, int]:
    """``(train set or None, val set, C object classes)`` for ``task``."""
    if spec.source == "synthetic":
        from ..data import synthetic_dataset

        kwargs: dict[str, Any] = {**spec.scene, "image_size": spec.image_size}
        try:
            train = (synthetic_dataset(task, spec.train_size, spec.data_seed, **kwargs)
                     if need_train else None)
            val = synthetic_dataset(task, spec.val_size, spec.data_seed + 1, **kwargs)
        except TypeError as err:  # unknown scene option
            raise CLIError(f"--scene: {err}") from None
        return train, val, val.num_classes
    if spec.source == "coco":
        if task != "detection":
            raise CLIError(f"COCO data is for detection models, the model's task is {task}")
        train = _coco(spec.paths) if need_train else None
        val = _coco(spec.val_paths) if spec.val_paths else (train or _coco(spec.paths))
        return train, val, val.num_classes  # type: ignore[attr-defined]
    if spec.source == "voc":
        from ..data import VOCSegmentation
        from ..data.transforms import Resize

        if task != "segmentation":
            raise CLIError(f"VOC data is for segmentation models, the model's task is {task}")
        root = _existing(spec.paths[0], "VOC root folder", directory=True)
        classes = spec.num_classes or 20
        resize = Resize(spec.image_size)  # one size per batch
        train = (VOCSegmentation(root, "train", resize, num_classes=classes)
                 if need_train else None)
        val = VOCSegmentation(root, "val", resize, num_classes=classes)
        return train, val, classes
    raise CLIError(f"unknown data source {spec.source!r}")


def add_model_options(parser: argparse.ArgumentParser, *, with_name: bool = True) -> None:
    group = parser.add_argument_group("model")
    if with_name:
        group.add_argument("--task", choices=TASKS,
                           help="default: the model's task, or segmentation")
        group.add_argument("--model", help="a name from deformconv.models.list_models() "
                                           "(default: deeplab_resnet50 / resnet50 / "
                                           "faster_rcnn_resnet50 by task)")
    group.add_argument("--plain", action="store_true",
                       help="build the plain twin (no deformable layers)")
    group.add_argument("--base-channels", type=positive_int,
                       help="ResNet width: stem channels (64 = the paper's; smaller trains "
                            "faster on a CPU)")
    group.add_argument("--deform-blocks", metavar="A,B,C,D",
                       help="deformable 3x3 convs in the last blocks of each ResNet stage "
                            "(default 0,0,0,3: all of res5, as in the paper)")
    group.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="extra keyword for the model's entry point (repeatable); dots "
                            "nest, e.g. backbone_kwargs.output_stride=8 or min_size=128")


def _deform_blocks(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or min(values) < 0:
        raise CLIError(f"--deform-blocks needs 4 comma-separated counts >= 0, got {text!r}")
    return values


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


SOURCE_TASKS = {"coco": "detection", "voc": "segmentation"}


def resolve_model_name(task: str | None, model: str | None, data: DataSpec | None = None
                       ) -> tuple[str, str]:
    """(model name, task) from either or both; refuses unknown names and mismatches.

    With neither, the task follows the data (COCO: detection, VOC: segmentation), and is
    segmentation for synthetic data.
    """
    from ..models import list_models, model_task

    if model is None:
        task = task or SOURCE_TASKS.get(data.source if data else "", "segmentation")
        return DEFAULT_MODELS[task], task
    if model not in list_models():
        raise CLIError(f"unknown model {model!r}; available: {', '.join(list_models())}")
    own = model_task(model)
    if task is not None and task != own:
        raise CLIError(f"model {model!r} is a {own} model, but --task is {task}")
    return model, own


def model_spec_from_args(args: argparse.Namespace, num_classes: int, *, image_size: int,
                         name: str, task: str) -> ModelSpec:
    """The model for C = ``num_classes`` object classes, trained from scratch.

    Defaults suit training from random init: batch norm that learns (not frozen), nothing
    frozen; detection images kept at their size, anchors scaled to ``image_size``.
    """
    backbone: dict[str, Any] = {"norm_layer": "batch_norm", "frozen_stages": -1}
    if args.base_channels is not None:
        backbone["base_channels"] = args.base_channels
    if args.deform_blocks is not None:
        backbone["deform_blocks"] = _deform_blocks(args.deform_blocks)
    if task == "classification":
        kwargs: dict[str, Any] = dict(backbone)
    else:
        kwargs = {"backbone_kwargs": backbone}
    if task == "segmentation":
        kwargs["head_channels"] = 4 * (args.base_channels or 64)
    if task == "detection":
        smallest = max(4, image_size // 16)
        kwargs.update(min_size=image_size, max_size=image_size,
                      anchor_sizes=[smallest * 2**i for i in range(4)])
    kwargs = _merge(kwargs, parse_assignments(args.model_arg, "--model-arg"))
    heads = num_classes if task == "classification" else num_classes + 1  # + background
    return ModelSpec(name, heads, deformable=not args.plain, kwargs=kwargs)


def build_model(spec: ModelSpec, seed: int | None = None) -> nn.Module:
    """``deformconv.models.create`` from a spec; bad keyword arguments become CLIErrors."""
    from ..models import create

    if seed is not None:
        torch.manual_seed(seed)
    try:
        return create(spec.name, spec.num_classes, deformable=spec.deformable, **spec.kwargs)
    except TypeError as err:
        raise CLIError(f"cannot build {spec.name} with {spec.kwargs}: {err}") from None


def model_from_checkpoint(spec: ModelSpec, path: str) -> nn.Module:
    """``build_model(spec)`` with the trained weights of checkpoint ``path``."""
    from ..engine import CheckpointError, load_weights

    model = build_model(spec)
    try:
        load_weights(model, path)
    except CheckpointError as err:
        raise CLIError(str(err)) from None
    return model


def specs_from_checkpoint(path: str) -> tuple[ModelSpec, DataSpec, dict[str, Any]]:
    """(model spec, data spec, the whole checkpoint) of a checkpoint written by ``train``."""
    from ..engine import CheckpointError, load_checkpoint

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"checkpoint not found: {p}")
    try:
        state = load_checkpoint(p)
    except CheckpointError as err:
        raise CLIError(str(err)) from None
    extra = state.get("extra") or {}
    if "model" not in extra or "data" not in extra:
        raise CLIError(f"checkpoint {p} was not written by 'deformconv train' or 'demo' "
                       "(no model/data info); use deformconv.engine.load_weights in Python")
    return ModelSpec(**extra["model"]), DataSpec(**extra["data"]), state
