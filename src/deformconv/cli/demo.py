"""``deformconv demo``: a deformable network and its plain twin, trained and compared
(:mod:`deformconv.runs.demo`); this module only reads the options."""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..runs import DemoSettings, run_demo
from ..runs.demo import FREE_SETTINGS, ChangedSettingsError
from ._common import (
    CLIError,
    non_negative_int,
    parse_assignments,
    parse_literal,
    positive_float,
    positive_int,
    user_path,
)

HELP = "train a deformable network and its plain twin on synthetic scenes, compare, report"
DEFAULTS = DemoSettings()
# flag -> DemoSettings field, all optional (unset: the default, or the smoke size)
FIELDS = ("iterations", "image_size", "batch_size", "train_size", "val_size", "deform_layers",
          "lr", "seed", "device", "jobs")
# DemoSettings fields set to False by an option of their own
_SWITCHES = {"equal_time": "--no-equal-time", "channels_last": "--no-channels-last"}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    d = DEFAULTS
    parser = subparsers.add_parser(
        "demo", help=HELP, description=HELP + ". Three runs: the plain and the deformable "
        "twin for the same number of iterations, then the plain twin for the deformable "
        "one's training time. Writes report.md (table, learning curves, predictions, "
        "sampling locations, accuracy by object size), metrics.json, PNGs and each run's "
        "checkpoint (usable with eval/viz/export) to --out.",
        epilog="example: deformconv demo --seed 1 --out runs/demo-seed1")
    parser.add_argument("--out", default="runs/demo", type=user_path,
                        help="output folder (default runs/demo); one holding an earlier "
                             "demo needs --overwrite; refused while another demo runs in it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier demo in --out")
    parser.add_argument("--resume", action="store_true",
                        help="continue a demo in --out that was stopped (Ctrl-C, SIGTERM), "
                             "given the same options: finished runs are kept, the others "
                             "continue from their last.pt")
    parser.add_argument("--iterations", type=positive_int,
                        help=f"iterations of each twin (default {d.iterations})")
    parser.add_argument("--no-equal-time", action="store_true",
                        help="skip the plain run of the deformable run's duration")
    parser.add_argument("--image-size", type=positive_int,
                        help=f"image side (default {d.image_size})")
    parser.add_argument("--batch-size", type=positive_int, help=f"default {d.batch_size}")
    parser.add_argument("--train-size", type=positive_int,
                        help=f"synthetic training scenes (default {d.train_size})")
    parser.add_argument("--val-size", type=positive_int,
                        help=f"synthetic validation scenes (default {d.val_size})")
    parser.add_argument("--deform-layers", type=positive_int,
                        help=f"deformable layers at the top, at least 1 (default "
                             f"{d.deform_layers})")
    parser.add_argument("--lr", type=positive_float, help=f"peak learning rate (default {d.lr:g})")
    parser.add_argument("--seed", type=non_negative_int,
                        help=f"initialisation, data order and scenes (default {d.seed})")
    parser.add_argument("--device", help=f"{d.device} (default) | cuda | auto")
    parser.add_argument("--jobs", type=positive_int,
                        help=f"processes the twins train in, on a CPU (default {d.jobs}: side by "
                             "side, each on half of --threads; 1, or --threads 1: one after "
                             "another in one process)")
    parser.add_argument("--scene", action="append", default=[], metavar="KEY=VALUE",
                        help="synthetic scene option (repeatable), e.g. max_objects=2; see "
                             "deformconv.data.SceneConfig")
    parser.add_argument("--no-channels-last", action="store_true",
                        help="store weights and images NCHW instead of channels-last (slower "
                             "steps on a CPU for both twins)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings that run in seconds (for tests)")
    parser.set_defaults(run=run, stopped_hint=stopped_hint)
    return parser


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    given = {name: getattr(args, name) for name in FIELDS if getattr(args, name) is not None}
    if args.no_equal_time:
        given["equal_time"] = False
    if args.no_progress:
        given["progress"] = False
    if args.no_channels_last:
        given["channels_last"] = False
    settings = DemoSettings.smoke(**given) if args.smoke else DemoSettings(**given)
    settings.scene = {**settings.scene, **parse_assignments(args.scene, "--scene")}
    if settings.image_size < 16:
        raise CLIError(f"--image-size must be >= 16, got {settings.image_size}")
    strided = max(i for i, stride in enumerate(settings.strides) if stride != 1) + 1
    if settings.deform_layers > len(settings.strides) - strided:
        raise CLIError(f"--deform-layers must be at most {len(settings.strides) - strided} (the "
                       f"layers after the strided ones), got {settings.deform_layers}")
    return settings


def run(args: argparse.Namespace) -> int:
    if args.resume and args.overwrite:
        raise CLIError("--resume continues the demo in --out and --overwrite replaces it: "
                       "give one of them")
    settings = settings_from_args(args)
    try:
        run_demo(settings, Path(args.out), overwrite=args.overwrite, resume=args.resume)
    except ChangedSettingsError as err:
        raise CLIError(_changed_settings(err, settings)) from None
    return 0


def demo_options(settings: dict[str, Any]) -> list[str] | None:
    """The options that give ``settings`` (a demo's, as its marker holds them; the options
    of settings free to change on a resume left out); None where neither preset (default
    or ``--smoke``) gives the settings that no option sets (a demo started from Python)."""
    optional = {*FIELDS, *_SWITCHES, "scene", *FREE_SETTINGS}
    for smoke in (False, True):
        preset = _plain(DemoSettings.smoke() if smoke else DemoSettings())
        if any(settings.get(key) != value for key, value in preset.items()
               if key not in optional):
            continue
        options = ["--smoke"] if smoke else []
        options += [f"--{key.replace('_', '-')} {shlex.quote(str(settings.get(key)))}"
                    for key in FIELDS
                    if key not in FREE_SETTINGS and settings.get(key) != preset[key]]
        options += [flag for key, flag in _SWITCHES.items() if settings.get(key) is False]
        options += [f"--scene {shlex.quote(f'{key}={_literal(value)}')}"
                    for key, value in settings["scene"].items()
                    if preset["scene"].get(key) != value]
        return options
    return None


def _literal(value: Any) -> str:
    """``value`` written as ``--scene KEY=VALUE`` reads it back (``parse_literal``): JSON,
    or a text that reads as itself."""
    if isinstance(value, str) and parse_literal(value) == value:
        return value
    return json.dumps(value)


def _plain(settings: DemoSettings) -> dict[str, Any]:
    """``settings`` as a dict of JSON values, as a demo's marker holds them."""
    return json.loads(json.dumps(asdict(settings)))


def _changed_settings(err: ChangedSettingsError, settings: DemoSettings) -> str:
    """The refusal of a resume with other settings, in options: those the demo was started
    with and those given now."""
    started, given = demo_options(err.saved), demo_options(_plain(settings))
    if started is None or given is None:  # settings no options give: by their names
        return str(err)
    preset = ""
    if ("--smoke" in started) != ("--smoke" in given):
        preset = (" (--smoke sets the small images, model, data, evaluations and figures of "
                  "the smoke test)")
    return (f"--resume continues the demo in {err.out} with the settings it was started "
            f"with: give its options, {' '.join(started) or 'none (the defaults)'}, instead "
            f"of {' '.join(given) or 'none (the defaults)'}{preset}; or start a new demo "
            "(--overwrite or another --out)")


def stopped_hint(args: argparse.Namespace) -> str | None:
    """How to continue a demo that was stopped, for the stop message; None before the demo
    claimed its folder (nothing to continue)."""
    from ..runs.demo import MARKER, SUMMARY

    out = Path(args.out)
    if (out / MARKER).is_file() and not (out / SUMMARY).exists():
        return "the same options and --resume"
    return None
