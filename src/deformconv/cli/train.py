"""``deformconv train``: train a (deformable or plain) model; checkpoints, resume, metrics."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ..engine.checkpoint import checkpoint_iteration
from ..engine.config import OPTIMIZERS, SCHEDULES, TrainConfig
from ..runs.specs import VOC_CLASSES, DataSpec
from ._build import (
    add_data_options,
    add_model_options,
    build_datasets,
    build_model,
    check_classes_match,
    check_model_flags_match,
    data_spec_from_args,
    model_spec_from_args,
    resolve_model_name,
    specs_from_checkpoint,
    with_categories,
)
from ._common import (
    CLIError,
    expected_value,
    expecting,
    non_negative_int,
    parse_assignments,
    positive_float,
    positive_int,
    user_path,
    write_json,
)

if TYPE_CHECKING:
    from ..engine import TrainResult

HELP = "train a deformable (or --plain) model; writes checkpoints and metrics"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help=HELP, description=HELP + ". Checkpoints (last.pt, best.pt), "
        "metrics.jsonl and config.json go to --out; --resume continues a run exactly.",
        epilog="example: deformconv train --model deeplab_resnet50 --base-channels 16 "
               "--image-size 64 --iterations 500 --out runs/seg")
    add_model_options(parser)
    add_data_options(parser)
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--iterations", type=positive_int,
                     help="optimizer steps (default: --epochs passes over the data)")
    opt.add_argument("--epochs", type=positive_int, default=1)
    opt.add_argument("--batch-size", type=positive_int, default=8)
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                     help="sgd (momentum; the paper's) or adamw (with --schedule onecycle it "
                          "trains small nets from scratch in far fewer steps)")
    opt.add_argument("--lr", type=positive_float, default=0.02)
    opt.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    opt.add_argument("--weight-decay", type=float, default=1e-4)
    opt.add_argument("--offset-lr-mult", type=_offset_multiplier, default=0.1,
                     metavar="FACTOR|model",
                     help="learning-rate factor of every offset branch (default 0.1); 'model': "
                          "each layer's own offset_lr_mult, the paper's β (1 for deformable "
                          "convs, 0.01 for deformable RoI pooling's fc)")
    opt.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                     help="cosine: over the whole run; onecycle: after the warm-up; wsd: "
                          "warm-up, hold, then linear decay over the last fifth; step: lr "
                          "times --gamma at each of --milestones (none: a constant lr)")
    opt.add_argument("--milestones", type=_milestones, default=[], metavar="I1,I2,...",
                     help="--schedule step: the iterations where lr is multiplied by --gamma "
                          "(strictly increasing)")
    opt.add_argument("--gamma", type=float, default=0.1,
                     help="--schedule step: lr factor at each milestone (default 0.1)")
    opt.add_argument("--warmup-iters", type=non_negative_int, default=0)
    opt.add_argument("--class-weights", type=_weights, metavar="W0,W1,...",
                     help="cross-entropy weight per class, background first for segmentation "
                          "(see deformconv.engine.balanced_class_weights)")
    opt.add_argument("--grad-clip", type=positive_float, help="max gradient L2 norm")
    opt.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False,
                     help="bfloat16 autocast, in training and validation (a resume keeps the "
                          "checkpoint's unless given)")
    run = parser.add_argument_group("run")
    run.add_argument("--out", default="runs/train", type=user_path,
                     help="output folder (default runs/train)")
    run.add_argument("--resume", metavar="CKPT", type=user_path,
                     help="continue from a checkpoint, writing beside it unless --out is "
                          "given ('auto': OUT/last.pt when present)")
    run.add_argument("--overwrite", action="store_true",
                     help="start afresh in an --out folder that holds a run (its files and "
                          "the eval_*.json that deformconv eval wrote are removed); without "
                          "it such a folder is refused. "
                          "With a --resume of an earlier checkpoint of --out's own run "
                          "(best.pt behind last.pt): continue from it there, replacing the "
                          "run's later part. Not with a --resume of the run's latest state")
    run.add_argument("--checkpoint-every", type=non_negative_int, default=0,
                     help="iterations between checkpoints (0: only at the end)")
    run.add_argument("--eval-every", type=non_negative_int, default=0,
                     help="iterations between validations (0: only at the end)")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    run.add_argument("--seed", type=non_negative_int, default=0)
    run.add_argument("--workers", type=non_negative_int, default=0,
                     help="data-loading processes")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_train)
    return parser


@expecting("comma-separated numbers")
def _weights(text: str) -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected_value(_weights)}, got {text!r}") \
            from None


@expecting("comma-separated iterations >= 1")
def _milestones(text: str) -> list[int]:
    try:
        values = [int(m) for m in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected {expected_value(_milestones)}, got "
                                         f"{text!r}")
    return values


# train's flags -> TrainConfig fields
CONFIG_FIELDS = {
    "epochs": "epochs", "iterations": "iterations", "batch_size": "batch_size",
    "optimizer": "optimizer", "lr": "lr",
    "momentum": "momentum", "weight_decay": "weight_decay", "offset_lr_mult": "offset_lr_mult",
    "warmup_iters": "warmup_iters", "schedule": "schedule", "milestones": "milestones",
    "gamma": "gamma", "class_weights": "class_weights",
    "grad_clip": "grad_clip_norm",
    "bf16": "bf16", "seed": "seed", "checkpoint_every": "checkpoint_every",
    "eval_every": "eval_every", "out": "out_dir", "workers": "num_workers",
    "device": "device",
}


def _config_values(args: argparse.Namespace, dests: set[str] | None = None) -> dict:
    """TrainConfig fields from the flags (only those in ``dests`` when given)."""
    values = {field: getattr(args, dest) for dest, field in CONFIG_FIELDS.items()
              if dests is None or dest in dests}
    if dests is None or "no_progress" in dests:
        values["progress"] = not args.no_progress
    return values


@expecting("a number >= 0 or 'model'")
def _offset_multiplier(text: str) -> float | None:
    """argparse ``type`` of --offset-lr-mult: a factor >= 0, or "model" (None)."""
    if text.strip().lower() == "model":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected {expected_value(_offset_multiplier)}, "
                                         f"got {text!r}")
    return value


def _check_offset_multipliers(config: TrainConfig, args: argparse.Namespace) -> None:
    """Refuse a new run's --model-arg offset_lr_mult that --offset-lr-mult's factor would
    replace."""
    model_args = parse_assignments(args.model_arg, "--model-arg") if args.model_arg else {}
    if config.offset_lr_mult is not None and _has_key(model_args, "offset_lr_mult"):
        raise CLIError(f"--model-arg offset_lr_mult has no effect while --offset-lr-mult "
                       f"{config.offset_lr_mult:g} sets every offset branch's factor; add "
                       "--offset-lr-mult model to use the model's own")


def _has_key(options: dict, key: str) -> bool:
    """Whether ``key`` is in ``options`` or in a dict nested in it."""
    return key in options or any(isinstance(v, dict) and _has_key(v, key)
                                 for v in options.values())


def run_train(args: argparse.Namespace) -> int:
    from ..engine import train
    from ..engine.distributed import alike_on_every_rank

    with alike_on_every_rank():  # the same arguments and files on every rank
        given = getattr(args, "given", set())
        _check_resume_or_overwrite(args, given)
        resume = _resume_checkpoint(args.resume, Path(args.out))
        if resume:
            # The checkpoint decides model, data and settings; flags given now override the
            # settings (those that fix the data order must match, the engine checks).
            model_spec, data_spec, state = specs_from_checkpoint(resume)
            check_model_flags_match(args, model_spec)
            data_spec = _resumed_data_spec(args, data_spec)
            task = model_spec.task
            values = {**state["config"], **_config_values(args, given), "resume": resume}
            if args.resume == "auto":  # OUT/last.pt: keep writing to OUT
                values["out_dir"] = args.out
            elif "out" not in given:  # --resume CKPT alone: its own folder, wherever we are
                values["out_dir"] = str(Path(resume).resolve().parent)
        else:
            data_spec = data_spec_from_args(args)
            name, task = resolve_model_name(args.task, args.model, data_spec)
            values = {**_config_values(args), "task": task, "resume": None}
        if _length_in_epochs(args):
            values["iterations"] = None  # --epochs asked for, over a file's or checkpoint's length
        config = TrainConfig.from_dict(values)
        if "momentum" in given and config.optimizer != "sgd":
            raise CLIError(f"--momentum is for --optimizer sgd; {config.optimizer} takes none "
                           "(AdamW's betas are 0.9, 0.999)")
        for option in ("milestones", "gamma"):
            if option in given and config.schedule != "step":
                raise CLIError(f"--{option} is for --schedule step; {config.schedule} has no "
                               "milestones")
        if not resume:
            _check_offset_multipliers(config, args)
        out = Path(config.out_dir)
        _check_out_folder(out, resume, args.overwrite)  # early: before the data is built
        train_set, val_set, classes = build_datasets(data_spec, task)
        data_spec = with_categories(data_spec, train_set)
        if resume:
            check_classes_match(classes, model_spec)
        else:
            model_spec = model_spec_from_args(args, classes, image_size=data_spec.image_size,
                                              name=name)
        model = build_model(model_spec, seed=config.seed)
        extra = {"model": asdict(model_spec), "data": asdict(data_spec)}
    # An earlier run's files go once the new run has passed every check (the engine's too),
    # and the results are written once it finished, both under the folder's lock: a refused
    # run leaves them, and a live run's, in place, and no other run comes in between.
    result = train(config, model, train_set, val_set, extra=extra,
                   on_start=lambda: _clear_out_folder(out, resume, args.overwrite),
                   on_finish=_write_final_metrics)
    if result.last_checkpoint is not None:  # rank 0
        print(f"{model_spec.name} ({'plain' if not model_spec.deformable else 'deformable'}), "
              f"{result.iteration} iterations: " + format_metrics(result.metrics))
        print(f"checkpoint: {result.last_checkpoint}; metrics: "
              f"{result.out_dir / 'final_metrics.json'}")
    return 0


def _write_final_metrics(result: TrainResult) -> None:
    """``final_metrics.json`` of a finished run (the main process, holding the run's lock)."""
    summary = {"iteration": result.iteration, "metrics": result.metrics,
               "best_metric": result.best_metric, "last_checkpoint": result.last_checkpoint,
               "best_checkpoint": result.best_checkpoint}
    write_json(summary, result.out_dir / "final_metrics.json")


def _length_in_epochs(args: argparse.Namespace) -> bool:
    """Whether --epochs sets the run's length: given on the command line without
    --iterations, or in the config file without iterations (flags override the file)."""
    given = getattr(args, "given", set())
    flags = getattr(args, "given_on_command_line", given)
    return any("epochs" in chosen and "iterations" not in chosen for chosen in (flags, given))


# What decides each source's training samples and their order: a resumed run keeps them.
TRAINING_DATA_FIELDS = {"synthetic": ("image_size", "train_size", "data_seed", "scene"),
                        "coco": ("paths",), "voc": ("paths", "image_size", "num_classes")}


def _resumed_data_spec(args: argparse.Namespace, saved: DataSpec) -> DataSpec:
    """The checkpoint's data with the flags given now, which may change the validation set
    only (a changed training set would not continue the run)."""
    spec = data_spec_from_args(args, saved)
    if spec.source != saved.source:
        raise CLIError(f"cannot resume with other training data (source: checkpoint "
                       f"{saved.source!r} vs now {spec.source!r}); drop --data to resume, or "
                       "start a new run")
    values = {name: (_training_value(saved, name), _training_value(spec, name))
              for name in TRAINING_DATA_FIELDS[spec.source]}
    changed = [f"{name}: checkpoint {before!r} vs now {now!r}"
               for name, (before, now) in values.items() if before != now]
    if changed:
        raise CLIError(f"cannot resume with other training data ({'; '.join(changed)}); drop "
                       "those flags to resume, or start a new run")
    return spec


def _training_value(spec: DataSpec, name: str) -> object:
    """Field ``name`` of ``spec`` as it decides the samples: paths resolved (the same files
    named from another folder), VOC's class count with its default."""
    if name == "paths":
        return [str(Path(path).resolve()) for path in spec.paths]
    if name == "num_classes":
        return spec.num_classes or VOC_CLASSES
    return getattr(spec, name)


def _check_resume_or_overwrite(args: argparse.Namespace, given: set[str]) -> None:
    """Refuse --overwrite with a --resume that continues the run in its own folder from its
    latest state (auto, or a checkpoint written there that nothing there is later than):
    one says continue it, the other start afresh. From an earlier checkpoint (best.pt
    behind last.pt) --overwrite replaces the run's later part (:func:`_old_run_files`)."""
    if not (args.overwrite and args.resume):
        return
    if args.resume == "auto" or (
            ("out" not in given or Path(args.resume).resolve().parent == Path(args.out).resolve())
            and _later_state(Path(args.resume).resolve().parent, args.resume) is None):
        raise CLIError(f"--resume {args.resume} continues the run in its folder, --overwrite "
                       "would start afresh there; drop one of them")


def _resume_checkpoint(resume: str | None, out: Path) -> str | None:
    """The checkpoint to continue from: ``--resume`` as given, "auto" -> OUT/last.pt if
    it exists (else None: a new run)."""
    if resume != "auto":
        return resume
    last = out / "last.pt"
    return str(last) if last.is_file() else None


# What a run writes into its folder (besides tensorboard/): a folder holding any of these
# holds a run.
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "final_metrics.json", "config.json")
# What `deformconv eval` writes beside a run's checkpoints: removed with the run's files.
EVAL_FILES = "eval_*.json"


def _check_out_folder(out: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, that a live run trains into, or that holds a run
    this one may not replace (:func:`_old_run_files`), before anything is built; under
    torchrun only rank 0 checks. The run checks again holding the folder's lock."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; expected a folder (created when missing)")
    from ..engine.distributed import launched_rank
    from ..engine.run_lock import check_not_busy

    if launched_rank() == 0:
        check_not_busy(out)
        _old_run_files(out, resume, overwrite)


def _clear_out_folder(out: Path, resume: str | None, overwrite: bool) -> None:
    """Check ``out`` again (the run holds its lock now) and remove the earlier run's files
    that this run replaces."""
    files = _old_run_files(out, resume, overwrite)
    if files and not overwrite:
        print(f"{out} holds {', '.join(path.name for path in files)} of a run that stopped "
              "before its first checkpoint (nothing to resume): starting afresh there")
    for path in files:
        path.unlink()


def _old_run_files(out: Path, resume: str | None, overwrite: bool) -> list[Path]:
    """The files of an earlier run in ``out`` that this run replaces; refuses a folder
    holding a run it may not replace.

    A folder holding another run is refused (a new run would replace its ``last.pt`` and
    clear its ``metrics.jsonl``) without ``overwrite``, unless this run resumes from that
    folder's checkpoint. A resume from an earlier checkpoint there than the folder's latest
    (best.pt behind last.pt: :func:`_later_state`) would replace the later part of the run:
    refused too without ``overwrite``, which removes the later part's last.pt, results and
    evaluations (the log the run cuts back itself).
    A run that left no checkpoint and no results (it died before its first checkpoint, e.g.
    at a bad setting) is replaced: there is nothing to continue or to lose.
    A finished run whose checkpoints were deleted keeps its results: refused.
    """
    found = [name for name in RUN_FILES if (out / name).is_file()]
    if not found:
        return []
    resuming_here = resume is not None and Path(resume).resolve().parent == out.resolve()
    later = _later_state(out, resume) if resuming_here else None
    if resuming_here and later is None:
        return []  # continuing this folder's own run
    from .evaluate import is_eval_result  # evaluate imports this module

    # only what `deformconv eval` wrote: a user's eval_notes.json is not the run's
    evaluated = sorted(path.name for path in out.glob(EVAL_FILES) if is_eval_result(path))
    if later is not None:
        if not overwrite:
            at, where = later
            raise CLIError(f"--resume {resume} is at iteration {at}, but {out} holds its run "
                           f"up to {where}: resuming there would replace that later part; "
                           "branch off into another folder with --out NEW_FOLDER, or "
                           "replace the later part with --overwrite")
        # what describes the later part; best.pt the run keeps if it is not later
        return [out / name for name in ("last.pt", "final_metrics.json", *evaluated)
                if (out / name).is_file() and (out / name).resolve() != Path(resume).resolve()]
    stopped_early = (not any(name.endswith(".pt") for name in found)
                     and "final_metrics.json" not in found and not evaluated)
    if not (stopped_early or overwrite):
        raise CLIError(f"--out {out} already holds a training run "
                       f"({', '.join(found + evaluated)}); {_ways_to_continue(out, found)}, "
                       "or choose another --out")
    return [out / name for name in [*found, *evaluated]]


def _ways_to_continue(out: Path, found: list[str]) -> str:
    """How to continue the run whose files ``found`` are in ``out``, or start afresh there:
    without last.pt (killed after a validation, before its first last.pt), from its best.pt,
    which --overwrite would delete."""
    if "last.pt" in found:
        return "continue it with --resume auto, start afresh there with --overwrite"
    at = checkpoint_iteration(out / "best.pt") if "best.pt" in found else math.inf
    if at == math.inf:
        return "it has no last.pt to resume, start afresh there with --overwrite"
    return (f"it has no last.pt, continue it from its best.pt (iteration {int(at)}) with "
            f"--resume {out / 'best.pt'}, start afresh there with --overwrite (deleting "
            "best.pt)")


def _later_state(out: Path, resume: str) -> tuple[int, str] | None:
    """``(resume's iteration, what is later in words)`` when ``out``, the folder of checkpoint
    ``resume``, holds its run beyond that checkpoint ("iteration 8 (last.pt)"): a checkpoint
    saved later, or a later run's final_metrics.json. None when ``resume`` is the folder's
    latest state (its last.pt, say)."""
    checkpoint = Path(resume).resolve()
    at = checkpoint_iteration(checkpoint)
    if checkpoint == (out / "last.pt").resolve() or at == math.inf:  # unreadable: refused later
        return None
    states = [(checkpoint_iteration(out / name), name) for name in ("last.pt", "best.pt")
              if (out / name).is_file() and (out / name).resolve() != checkpoint]
    if (out / "final_metrics.json").is_file():
        states.append((_final_iteration(out / "final_metrics.json"), "final_metrics.json"))
    later = [(iteration, name) for iteration, name in states if iteration > at]
    if not later:
        return None
    iteration, name = max(later)
    where = (f"iteration {iteration} ({name})" if iteration < math.inf
             else f"a {name} it cannot read")
    return int(at), where


def _final_iteration(path: Path) -> float:
    """The iteration a run's final_metrics.json was written at; inf when unreadable (a
    result not to be replaced unasked)."""
    try:
        return int(json.loads(path.read_text())["iteration"])
    except (OSError, ValueError, KeyError, TypeError):
        return math.inf


def format_metrics(metrics: dict) -> str:
    """The scalar metrics on one line (per-class lists left out)."""
    parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
             for k, v in metrics.items() if isinstance(v, (int, float))]
    return ", ".join(parts) or "(no validation set)"
