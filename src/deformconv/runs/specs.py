"""Run specs: plain-value descriptions of a run's data and model, and the builders for them.

A training run stores ``{"model": ModelSpec, "data": DataSpec}`` as plain dicts in its
checkpoints (the engine's ``extra``), so evaluation, visualisation and export rebuild the
same network and data from the checkpoint alone (:func:`specs_from_checkpoint`).

Bad values raise ``ValueError`` (missing files ``FileNotFoundError``) naming what was given
and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from ..data import CocoDetection

__all__ = [
    "VOC_CLASSES",
    "DataSpec",
    "ModelSpec",
    "build_datasets",
    "build_model",
    "from_scratch_spec",
    "merge_kwargs",
    "model_from_checkpoint",
    "specs_from_checkpoint",
    "with_categories",
]

VOC_CLASSES = 20  # a VOC-style folder's object classes unless DataSpec.num_classes says


@dataclass
class DataSpec:
    """Where samples come from; plain values only (stored in checkpoints)."""

    source: str = "synthetic"  # "synthetic" | "coco" | "voc"
    paths: list[str] = field(default_factory=list)  # coco: [ann, images]; voc: [root]
    val_paths: list[str] = field(default_factory=list)  # coco: [ann, images] for eval
    image_size: int = 128  # synthetic side; VOC images and masks (so its mIoU) resized to it
    train_size: int = 2000  # synthetic training samples
    val_size: int = 200  # synthetic validation samples
    data_seed: int = 0  # synthetic scenes (validation uses data_seed + 1)
    num_classes: int | None = None  # VOC only (default VOC_CLASSES)
    scene: dict[str, Any] = field(default_factory=dict)  # synthetic SceneConfig overrides
    # coco: the training file's category table ([{"id", "name"}] in label order), recorded
    # when training starts; it labels every COCO set built from this spec (see with_categories)
    categories: list[dict[str, Any]] = field(default_factory=list)


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


def _existing(path: str, what: str, directory: bool) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p}")
    if directory and not p.is_dir():
        raise NotADirectoryError(f"{what} is not a folder: {p}")
    if not directory and not p.is_file():
        raise IsADirectoryError(f"{what} is not a file: {p}")
    return p


def _coco(paths: list[str], *, training: bool,
          categories: CocoDetection | Path | list[dict[str, Any]] | None = None
          ) -> CocoDetection:
    """The ``[ann, images]`` COCO set, for training or for COCO evaluation.

    Training drops crowd regions and images without objects, as torchvision's detection
    references do. Evaluation keeps both, as COCOeval scores them: detections on a crowd
    region are ignored, false positives on an empty image count. ``categories``: see
    ``CocoDetection``.
    """
    from ..data import CocoDetection

    ann = _existing(paths[0], "COCO annotation file", directory=False)
    images = _existing(paths[1], "COCO image folder", directory=True)
    return CocoDetection(images, ann, drop_empty=training, skip_crowd=training,
                         categories=categories)


def build_datasets(spec: DataSpec, task: str, *, need_train: bool = True
                   ) -> tuple[Dataset | None, Dataset, int]:
    """``(train set or None, val set, C object classes)`` for ``task``.

    VOC: both splits are resized to ``image_size`` square, masks by nearest neighbour, so
    the validation mIoU is that of the resized masks, not at the images' own resolution.
    COCO: the training annotation file's categories label both sets and give C, also when
    only the validation set is built: the table ``spec.categories`` recorded (then neither the
    training file nor its changes since matter: a category id the table lacks is an error),
    else the training file's.
    """
    if spec.source == "synthetic":
        from ..data import synthetic_dataset

        kwargs: dict[str, Any] = {**spec.scene, "image_size": spec.image_size}
        try:
            train = (synthetic_dataset(task, spec.train_size, spec.data_seed, **kwargs)
                     if need_train else None)
            val = synthetic_dataset(task, spec.val_size, spec.data_seed + 1, **kwargs)
        except TypeError as err:  # unknown scene option
            raise ValueError(f"scene: {err}") from None
        return train, val, val.num_classes
    if spec.source == "coco":
        if task != "detection":
            raise ValueError(f"COCO data is for detection models, the model's task is {task}")
        recorded = spec.categories or None
        train = _coco(spec.paths, training=True, categories=recorded) if need_train else None
        # the training file's categories number the labels (and count the classes) of both
        table: CocoDetection | Path | list[dict[str, Any]] | None = train or recorded
        if table is None and spec.val_paths:
            table = _existing(spec.paths[0], "COCO training annotation file", directory=False)
        val = _coco(spec.val_paths or spec.paths, training=False, categories=table)
        return train, val, val.num_classes
    if spec.source == "voc":
        from ..data import VOCSegmentation
        from ..data.transforms import Resize

        if task != "segmentation":
            raise ValueError(f"VOC data is for segmentation models, the model's task is {task}")
        root = _existing(spec.paths[0], "VOC root folder", directory=True)
        classes = spec.num_classes or VOC_CLASSES
        resize = Resize(spec.image_size)  # one size per batch
        train = (VOCSegmentation(root, "train", resize, num_classes=classes)
                 if need_train else None)
        val = VOCSegmentation(root, "val", resize, num_classes=classes)
        return train, val, classes
    raise ValueError(f"unknown data source {spec.source!r}; expected synthetic, coco or voc")


def with_categories(spec: DataSpec, train_set: Dataset | None) -> DataSpec:
    """``spec`` with a COCO training set's category table recorded (other specs as they are),
    so that a checkpoint labels evaluation data as its training did without the training
    file (``eval --data`` on another file included)."""
    table = getattr(train_set, "category_table", None)
    if spec.source != "coco" or table is None:
        return spec
    return replace(spec, categories=table)


def merge_kwargs(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, nested dicts merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_kwargs(out[key], value)
        else:
            out[key] = value
    return out


# Models without a ResNet backbone: the ResNet defaults and options do not apply to them.
RESNET_FREE_MODELS = frozenset({"compact_fcn"})


def from_scratch_spec(name: str, num_classes: int, *, image_size: int,
                      deformable: bool = True, base_channels: int | None = None,
                      deform_blocks: list[int] | None = None,
                      overrides: dict[str, Any] | None = None) -> ModelSpec:
    """A model for C = ``num_classes`` object classes, trained from scratch.

    Defaults suit training a ResNet-based model from random init: batch norm that learns
    (not frozen), nothing frozen; a detector resizes its input images to fit in
    ``image_size`` × ``image_size`` (torchvision's ``min_size = max_size``) and scales its
    anchors to it. ``overrides`` (nested dicts merge) have the last word. A model without a
    ResNet backbone (``compact_fcn``) gets its own defaults and ``overrides`` only.
    """
    from ..models import model_task

    task = model_task(name)
    if name in RESNET_FREE_MODELS:
        if base_channels is not None or deform_blocks is not None:
            raise ValueError(f"{name} has no ResNet backbone: base channels and deformable "
                             "blocks do not apply; give its own options (widths, "
                             "deform_layers, ...) as overrides (--model-arg KEY=VALUE)")
        return ModelSpec(name, num_classes + 1, deformable=deformable,
                         kwargs=dict(overrides or {}))
    backbone: dict[str, Any] = {"norm_layer": "batch_norm", "frozen_stages": -1}
    if base_channels is not None:
        backbone["base_channels"] = base_channels
    if deform_blocks is not None:
        backbone["deform_blocks"] = list(deform_blocks)
    if task == "classification":
        kwargs: dict[str, Any] = dict(backbone)
    else:
        kwargs = {"backbone_kwargs": backbone}
    if task == "segmentation":
        kwargs["head_channels"] = 4 * (base_channels or 64)
    if task == "detection":
        smallest = max(4, image_size // 16)
        kwargs.update(min_size=image_size, max_size=image_size,
                      anchor_sizes=[smallest * 2**i for i in range(4)])
    kwargs = merge_kwargs(kwargs, overrides or {})
    heads = num_classes if task == "classification" else num_classes + 1  # + background
    return ModelSpec(name, heads, deformable=deformable, kwargs=kwargs)


def build_model(spec: ModelSpec, seed: int | None = None) -> nn.Module:
    """``deformconv.models.create`` from a spec (seeding torch first when ``seed`` is given);
    bad keyword arguments become ``ValueError``."""
    from ..models import create

    if seed is not None:
        torch.manual_seed(seed)
    try:
        return create(spec.name, spec.num_classes, deformable=spec.deformable, **spec.kwargs)
    except TypeError as err:
        raise ValueError(f"cannot build {spec.name} with {spec.kwargs}: {err}") from None


def model_from_checkpoint(spec: ModelSpec, path: str | Path) -> nn.Module:
    """``build_model(spec)`` with the trained weights of checkpoint ``path``."""
    from ..engine import load_weights

    model = build_model(spec)
    load_weights(model, path)
    return model


def specs_from_checkpoint(path: str | Path) -> tuple[ModelSpec, DataSpec, dict[str, Any]]:
    """(model spec, data spec, the whole checkpoint) of a checkpoint written by ``train``
    (or by anything that stored both specs in the engine's ``extra``)."""
    from ..engine import load_checkpoint

    p = Path(path)
    state = load_checkpoint(p)  # a missing file, or a folder, named as such
    extra = state.get("extra") or {}
    if "model" not in extra or "data" not in extra:
        raise ValueError(f"checkpoint {p} was not written by 'deformconv train' or 'demo' "
                         "(no model/data info); use deformconv.engine.load_weights in Python")
    return ModelSpec(**extra["model"]), DataSpec(**extra["data"]), state
