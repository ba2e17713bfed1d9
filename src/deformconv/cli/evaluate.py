"""``deformconv eval``: metrics of a trained checkpoint on its validation data (or other data)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ._build import (
    add_data_options,
    build_datasets,
    check_classes_match,
    data_spec_from_args,
    model_from_checkpoint,
    specs_from_checkpoint,
)
from ._common import CLIError, non_negative_int, positive_int, user_path, write_json
from .train import format_metrics

HELP = "evaluate a checkpoint: top-1, mIoU or COCO mAP, printed and written as JSON"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval", help=HELP, description=HELP + ". The model and, unless --data is given, the "
        "validation data are rebuilt from the checkpoint, and --bf16, unless given, is "
        "its run's. Under torchrun the processes share the images; the first writes the "
        "result.",
        epilog="example: deformconv eval runs/train/last.pt --out runs/train/eval.json")
    parser.add_argument("checkpoint", help="last.pt / best.pt written by train or demo")
    add_data_options(parser, with_train=False)
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="images per forward pass (default 8); detection runs images "
                             "of different sizes in separate passes")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda ...")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction,
                        help="bfloat16 autocast (default: as the checkpoint's run trained and "
                             "validated)")
    parser.add_argument("--workers", type=non_negative_int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", type=user_path,
                        help="metrics JSON (default: eval_STEM.json beside the checkpoint: "
                             "eval_last.json for last.pt, eval_best.json for best.pt); an "
                             "existing file is replaced only if it is an earlier eval's "
                             "metrics JSON")
    parser.set_defaults(run=run_eval)
    return parser


def run_eval(args: argparse.Namespace) -> int:
    from ..engine import cleanup_distributed, evaluate, init_distributed
    from ..engine.checkpoint import check_writable
    from ..engine.distributed import alike_on_every_rank

    with alike_on_every_rank():  # the same arguments and files on every rank
        out = Path(args.out) if args.out else default_output(Path(args.checkpoint))
        check_output(out, Path(args.checkpoint))  # before the evaluation, not after it
        model_spec, data_spec, state = specs_from_checkpoint(args.checkpoint)
        check_writable(out, f"--out {out}")  # once the checkpoint is known to be one
        data_spec = data_spec_from_args(args, data_spec)
        task = model_spec.task
        _, val_set, classes = build_datasets(data_spec, task, need_train=False)
        check_classes_match(classes, model_spec)
        model = model_from_checkpoint(model_spec, args.checkpoint)
        # as the run validated (its config's bf16), unless asked otherwise
        bf16 = bool(state["config"].get("bf16", False)) if args.bf16 is None else args.bf16
    info = init_distributed(args.device)  # under torchrun each process scores its share
    try:
        metrics = evaluate(model, val_set, task, batch_size=args.batch_size, device=info.device,
                           num_workers=args.workers, bf16=bf16, dist_info=info,
                           progress=not args.no_progress)
    finally:
        cleanup_distributed()
    if not info.is_main:
        return 0
    print(f"{model_spec.name} on {_scored(metrics, len(val_set))}: "  # type: ignore[arg-type]
          f"{format_metrics(metrics)}")
    # what was scored, so that results of other data or settings can be told apart, and a
    # result of a last.pt that a resume has moved on since from one of the current last.pt
    write_json({"checkpoint": args.checkpoint, "iteration": state["iteration"],
                "finished": state.get("finished"), "model": model_spec.name,
                "deformable": model_spec.deformable, "task": task,
                "num_samples": len(val_set), "data": asdict(data_spec),  # type: ignore[arg-type]
                "batch_size": args.batch_size, "processes": info.world_size, "bf16": bf16,
                "metrics": metrics}, out)
    print(f"metrics: {out}")
    return 0


def default_output(checkpoint: Path) -> Path:
    """``eval_<stem>.json`` beside the checkpoint, so evaluating best.pt and last.pt keeps both."""
    return checkpoint.with_name(f"eval_{checkpoint.stem}.json")


# What every metrics JSON of this command holds: an existing --out without them is no
# earlier result of it, and is kept. Those written before 2026-12-03 lack "iteration" and
# "finished" (the checkpoint's; "finished" is null for a checkpoint without it).
EVAL_KEYS = ("checkpoint", "model", "task", "num_samples", "metrics")


def check_output(out: Path, checkpoint: Path) -> None:
    """Refuse an ``out`` that is a folder, the checkpoint itself, or any existing file that
    is not an earlier eval's metrics JSON (a run's best.pt, metrics.jsonl or config.json):
    it would be overwritten."""
    if out.is_dir():
        raise CLIError(f"--out {out} is a folder; give the metrics JSON file to write, e.g. "
                       f"{out / default_output(checkpoint).name}")
    if not out.exists():
        return
    if checkpoint.exists() and out.samefile(checkpoint):
        raise CLIError(f"--out {out} is the checkpoint being evaluated; give the metrics JSON "
                       f"file to write, e.g. {default_output(checkpoint)}")
    if not is_eval_result(out):
        raise CLIError(f"--out {out} exists and is not an earlier eval's metrics JSON, which "
                       "alone is replaced; choose another file")


def is_eval_result(path: Path) -> bool:
    """Whether ``path`` is a metrics JSON that ``deformconv eval`` wrote."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and all(key in data for key in EVAL_KEYS)


def _scored(metrics: dict[str, Any], samples: int) -> str:
    """``"N samples"``, or ``"N of M samples (K unreadable, left out)"``."""
    scored = int(metrics.get("num_images", samples))
    if scored == samples:
        return f"{samples} samples"
    return f"{scored} of {samples} samples ({samples - scored} unreadable, left out)"
