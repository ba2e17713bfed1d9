"""Command-line options for data and models, turned into run specs.

The specs and their builders are :mod:`deformconv.runs.specs`; this module parses the
``--data`` / ``--model`` style flags into them and re-exports the builders the commands use.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from ..conventions import TASKS
from ..runs.specs import (
    DataSpec,
    ModelSpec,
    build_datasets,
    build_model,
    from_scratch_spec,
    merge_kwargs,
    model_from_checkpoint,
    specs_from_checkpoint,
    with_categories,
)
from ._common import CLIError, non_negative_int, parse_assignments, positive_int

__all__ = [
    "DEFAULT_MODELS",
    "DataSpec",
    "ModelSpec",
    "add_data_options",
    "add_model_options",
    "build_datasets",
    "build_model",
    "check_classes_match",
    "check_model_flags_match",
    "data_spec_from_args",
    "model_from_checkpoint",
    "model_spec_from_args",
    "resolve_model_name",
    "specs_from_checkpoint",
    "with_categories",
]

DEFAULT_MODELS = {"classification": "resnet50", "segmentation": "deeplab_resnet50",
                  "detection": "faster_rcnn_resnet50"}
DATA_HELP = ("synthetic (default, generated on the fly) | coco:ANN.json:IMAGE_DIR (detection) "
             "| voc:ROOT (segmentation; splits train and val)")


def parse_data(text: str) -> tuple[str, list[str]]:
    """``"synthetic"`` | ``"coco:ANN:IMAGES"`` | ``"voc:ROOT"`` -> (source, absolute paths:
    checkpoints store them, and ``eval`` / ``viz`` may run from another folder)."""
    source, _, rest = text.partition(":")
    source = source.strip().lower()
    if source == "synthetic" and not rest:
        return "synthetic", []
    if source == "coco":
        ann, sep, images = _split_coco(rest)
        if not sep or not ann or not images:
            raise CLIError(f"--data coco needs coco:ANNOTATIONS.json:IMAGE_DIR, got {text!r}")
        return "coco", [_absolute(ann), _absolute(images)]
    if source == "voc":
        if not rest:
            raise CLIError(f"--data voc needs voc:ROOT, got {text!r}")
        return "voc", [_absolute(rest)]
    raise CLIError(f"--data must be {DATA_HELP}; got {text!r}")


def _split_coco(rest: str) -> tuple[str, str, str]:
    """``ANN:IMAGES`` split at the first ``:`` whose left part is an existing file (paths
    may hold colons, ``runs/ds:v1/train.json``), else at the first one: (ANN, ":", IMAGES),
    or ``(rest, "", "")`` without a colon."""
    for cut, char in enumerate(rest):
        if char == ":" and Path(rest[:cut]).expanduser().is_file():
            return rest[:cut], ":", rest[cut + 1:]
    return rest.partition(":")


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().absolute())


def add_data_options(parser: argparse.ArgumentParser, *, with_train: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", help=DATA_HELP)
    if with_train:
        group.add_argument("--val-data", metavar="coco:ANN:IMAGES",
                           help="COCO validation set (default: the training set)")
    group.add_argument("--image-size", type=positive_int,
                       help="synthetic image side in pixels; VOC images and masks (nearest) "
                            "are resized to a square of this side, and VOC mIoU is computed "
                            "at that size, not at the images' own resolution; "
                            "a new detector resizes its input (COCO images too) to fit in "
                            "it, and scales its anchors to it (a checkpoint's detector keeps "
                            "its own: with COCO data only its size is accepted)")
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
    _check_flags_apply(args, spec, base)
    if getattr(args, "num_classes", None) is not None and spec.source != "voc":
        raise CLIError(f"--num-classes is for VOC data only; {spec.source} data sets "
                       "their classes themselves (synthetic: --scene classes=[...], COCO: "
                       "its categories)")
    if getattr(args, "scene", None):
        if spec.source != "synthetic":
            raise CLIError("--scene options are for synthetic data only")
        spec.scene = {**spec.scene, **parse_assignments(args.scene, "--scene")}
    return spec


# add_data_options' flags that only synthetic data reads -> how the command line spells them
SYNTHETIC_FLAGS = {"train_size": "--train-size", "val_size": "--val-size",
                   "data_seed": "--data-seed"}


def _check_flags_apply(args: argparse.Namespace, spec: DataSpec, base: DataSpec | None) -> None:
    """Refuse data flags that ``spec``'s data would ignore (a checkpoint or eval JSON would
    record values that were not used): the synthetic sizes and seed for files, and for COCO
    with a checkpoint (``base``) an ``--image-size`` other than its model's."""
    if spec.source != "synthetic":
        given = [flag for dest, flag in SYNTHETIC_FLAGS.items()
                 if getattr(args, dest, None) is not None]
        if given:
            raise CLIError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for "
                           f"synthetic data only; {spec.source} data reads its samples from "
                           "its files: drop them")
    size = getattr(args, "image_size", None)
    if spec.source == "coco" and base is not None and size is not None \
            and size != base.image_size:
        raise CLIError(f"--image-size {size} differs from the checkpoint's {base.image_size}: "
                       "COCO images are not resized by the data but by the detector, whose "
                       "input size the checkpoint's model fixes; drop --image-size")


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
                         name: str) -> ModelSpec:
    """The model for C = ``num_classes`` object classes, trained from scratch
    (:func:`deformconv.runs.from_scratch_spec`), from ``add_model_options`` flags."""
    deform_blocks = (_deform_blocks(args.deform_blocks) if args.deform_blocks is not None
                     else None)
    return from_scratch_spec(name, num_classes, image_size=image_size,
                             deformable=not args.plain, base_channels=args.base_channels,
                             deform_blocks=deform_blocks,
                             overrides=parse_assignments(args.model_arg, "--model-arg"))


# add_model_options' flags that shape a model -> how the command line spells them
MODEL_FLAGS = {"plain": "--plain", "base_channels": "--base-channels",
               "deform_blocks": "--deform-blocks", "model_arg": "--model-arg"}


def check_model_flags_match(args: argparse.Namespace, spec: ModelSpec,
                            model_flag: str = "--model") -> None:
    """Refuse a model name (``model_flag``), task or model flags that describe another model
    than a checkpoint's ``spec`` (they would be ignored); flags that agree with it pass, as
    when a job reruns its command line with ``--resume auto``."""
    for flag, given_value, fixed in ((model_flag, getattr(args, "model", None), spec.name),
                                     ("--task", getattr(args, "task", None), spec.task)):
        if given_value is not None and given_value != fixed:
            raise CLIError(f"{flag} {given_value} differs from the checkpoint's {fixed} "
                           f"model; drop {flag}")
    given = [flag for dest, flag in MODEL_FLAGS.items() if getattr(args, dest, None)]
    if not given:
        return
    backbone: dict = {}
    if args.base_channels is not None:
        backbone["base_channels"] = args.base_channels
    if args.deform_blocks is not None:
        backbone["deform_blocks"] = _deform_blocks(args.deform_blocks)
    if backbone and spec.task != "classification":  # a backbone of a larger model
        backbone = {"backbone_kwargs": backbone}
    overrides = merge_kwargs(backbone, parse_assignments(args.model_arg, "--model-arg"))
    if (args.plain and spec.deformable) or merge_kwargs(spec.kwargs, overrides) != spec.kwargs:
        kind = "deformable" if spec.deformable else "plain"
        raise CLIError(f"{', '.join(given)} describe another model than the checkpoint's "
                       f"({kind} {spec.name}, {spec.kwargs}); the checkpoint fixes the "
                       "model: drop them")


def check_classes_match(classes: int, spec: ModelSpec) -> None:
    """Refuse data whose ``classes`` (without background) differ from what the checkpoint's
    model ``spec`` was trained for."""
    background = 0 if spec.task == "classification" else 1
    if classes + background != spec.num_classes:
        trained = spec.num_classes - background
        raise CLIError(f"the data has {classes} classes, but the checkpoint's model was "
                       f"trained for {trained}" + (" (+ background)" if background else ""))
