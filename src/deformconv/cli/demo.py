"""``deformconv demo``: a deformable network and its plain twin, trained and compared
(:mod:`deformconv.runs.demo`); this module only reads the options."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runs import DemoSettings, run_demo
from ..runs.demo import MODELS
from ._common import CLIError, non_negative_int, parse_assignments, positive_float, positive_int

HELP = "train a deformable model and its plain twin on synthetic data, compare, report"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help=HELP, description=HELP + ". Writes report.md (comparison table, "
        "sampling-location plots, effective dilation by object size), metrics.json, PNGs and "
        "both runs' checkpoints (usable with eval/viz/export) to --out.",
        epilog="example: deformconv demo --minutes 3 --out runs/demo")
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--task", choices=sorted(MODELS), help="default segmentation")
    parser.add_argument("--minutes", type=positive_float,
                        help="wall-clock budget of the whole demo (default 4)")
    parser.add_argument("--iterations", type=positive_int,
                        help="train each model this many iterations instead of timing it")
    parser.add_argument("--image-size", type=positive_int, help="image side (default 96)")
    parser.add_argument("--batch-size", type=positive_int, help="default 8")
    parser.add_argument("--train-size", type=positive_int,
                        help="synthetic training images (default 4000)")
    parser.add_argument("--val-size", type=positive_int,
                        help="synthetic validation images (default 96)")
    parser.add_argument("--base-channels", type=positive_int,
                        help="ResNet-50 width (default 16; the paper's is 64)")
    parser.add_argument("--output-stride", type=int, choices=(8, 16),
                        help="segmentation backbone output stride (default 16)")
    parser.add_argument("--lr", type=positive_float, help="default 0.02")
    parser.add_argument("--seed", type=non_negative_int, help="default 0")
    parser.add_argument("--device", help="cpu (default) | cuda | auto")
    parser.add_argument("--scene", action="append", default=[], metavar="KEY=VALUE",
                        help="synthetic scene option (repeatable), e.g. max_objects=2; see "
                             "deformconv.data.SceneConfig")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings that run in seconds (for tests)")
    parser.set_defaults(run=run)
    return parser


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    names = ("task", "minutes", "iterations", "image_size", "batch_size", "train_size",
             "val_size", "base_channels", "output_stride", "lr", "seed", "device")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    settings = DemoSettings.smoke(**given) if args.smoke else DemoSettings(**given)
    settings.scene = {**settings.scene, **parse_assignments(args.scene, "--scene")}
    if settings.image_size < 32:
        raise CLIError(f"--image-size must be >= 32 (the network downsamples 16x), "
                       f"got {settings.image_size}")
    return settings


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    run_demo(settings, Path(args.out))
    return 0


