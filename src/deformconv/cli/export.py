"""``deformconv export``: a model of the factory (or a trained checkpoint) to ONNX, checked."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._paths import check_folder_possible
from ..onnx.export import MAX_OPSET, MIN_OPSET
from ._build import (
    ModelSpec,
    add_model_options,
    build_model,
    check_classes_match,
    check_model_flags_match,
    model_from_checkpoint,
    model_spec_from_args,
    resolve_model_name,
    specs_from_checkpoint,
)
from ._common import (
    CLIError,
    expected_value,
    expecting,
    non_negative_int,
    positive_int,
    user_path,
)

HELP = "export a model to ONNX and compare onnxruntime with PyTorch"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export", help=HELP, description=HELP + " (max abs difference on random images). "
        "Needs the onnx extra. Detection models give two graphs: features and RoI head.",
        epilog="example: deformconv export resnet50 --out resnet50.onnx --base-channels 16")
    parser.add_argument("model", nargs="?",
                        help="registered model name, or a checkpoint file (as eval and viz "
                             "take it; same as --checkpoint)")
    # required, but checked after parsing: a --config file's out may give it
    parser.add_argument("--out", type=user_path, help="ONNX file to write (required)")
    parser.add_argument("--checkpoint", type=user_path,
                        help="export these trained weights (from train/demo)")
    parser.add_argument("--num-classes", type=positive_int,
                        help="classes without background (default: ImageNet 1000, VOC 20, "
                             "COCO 80)")
    add_model_options(parser, with_name=False)
    parser.add_argument("--image-size", type=positive_int,
                        help="example image side (default: the checkpoint's data, else 224)")
    parser.add_argument("--batch", type=_example_batch, default=2,
                        help="example batch size, at least 2 (default 2; the exported batch "
                             "size stays dynamic)")
    parser.add_argument("--opset", type=_opset, default=MIN_OPSET,
                        help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default {MIN_OPSET})")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.set_defaults(run=run_export)
    return parser


DEFAULT_CLASSES = {"classification": 1000, "segmentation": 20, "detection": 80}


@expecting("an integer >= 2 (the exported batch size is dynamic)")
def _example_batch(text: str) -> int:
    """argparse ``type`` of --batch: torch's exporter makes a batch of 1 a fixed size."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected {expected_value(_example_batch)}, "
                                         f"got {text!r}")
    return value


@expecting(f"an integer from {MIN_OPSET} to {MAX_OPSET}")
def _opset(text: str) -> int:
    """argparse ``type`` of --opset: the opsets ``deformconv.onnx.export`` can write."""
    value = positive_int(text)
    if not MIN_OPSET <= value <= MAX_OPSET:
        raise argparse.ArgumentTypeError(
            f"expected an opset in [{MIN_OPSET}, {MAX_OPSET}] (ONNX DeformConv needs >= "
            f"{MIN_OPSET}; torch's exporter cannot convert it past {MAX_OPSET}), got {value}")
    return value


def run_export(args: argparse.Namespace) -> int:
    try:
        from ..onnx import InvalidONNXError, export_registered
        from ..onnx.export import require_onnx

        require_onnx()
    except ImportError as err:
        raise CLIError(str(err)) from None
    if args.checkpoint is None and args.model is not None:
        named = Path(args.model)
        # model names hold no dot or slash: anything else names a file (or a folder), which
        # the checkpoint reader checks
        if named.exists() or named.suffix or len(named.parts) > 1:
            args.checkpoint, args.model = args.model, None
    if args.out is None:
        raise CLIError("--out is required: the ONNX file to write (on the command line or "
                       "as out in the --config file)")
    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise CLIError(f"--out must name a .onnx file, got {out}")
    check_folder_possible(out.parent, f"--out {out}")  # before the model is built
    if args.checkpoint:
        spec, data_spec, _ = specs_from_checkpoint(args.checkpoint)
        check_model_flags_match(args, spec, model_flag="model")
        if args.num_classes is not None:
            check_classes_match(args.num_classes, spec)
        model = model_from_checkpoint(spec, args.checkpoint)
        size = args.image_size or data_spec.image_size
    else:
        if args.model is None:
            raise CLIError("give a model name (see deformconv.models.list_models()) or "
                           "--checkpoint")
        name, task = resolve_model_name(None, args.model)
        classes = args.num_classes or DEFAULT_CLASSES[task]
        size = args.image_size or 224
        spec = model_spec_from_args(args, classes, image_size=size, name=name)
        model = build_model(spec, seed=args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        results = export_registered(spec.name, out, model=model, image_size=size,
                                    batch=args.batch, opset=args.opset,
                                    verify=not args.no_check, seed=args.seed)
    except InvalidONNXError as err:
        raise CLIError(str(err)) from None
    for result in results:
        diff = ("not checked" if result.max_abs_diff is None
                else f"max abs difference onnxruntime vs PyTorch: {result.max_abs_diff:.3g}")
        print(f"{result.path}: {diff}")
    _print_spec(spec)
    return 0


def _print_spec(spec: ModelSpec) -> None:
    kind = "deformable" if spec.deformable else "plain"
    print(f"model: {spec.name} ({kind}), {spec.num_classes} outputs")
