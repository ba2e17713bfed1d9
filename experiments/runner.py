"""What every study shares: sizes, seeded runs cached as JSON, training, mean ± std.

A study is a set of runs (train + evaluate one configuration with one seed, or measure one
model). Each run's result is written to ``<out>/<study>/<run>.json`` together with the
settings that produced it; a later call skips runs whose JSON exists with the same
settings, so a long study can be stopped and continued. A run that is interrupted while
training resumes from its last checkpoint (``<out>/<study>/<run>/last.pt``).

The models, data and training loop are the library's own (``deformconv.models``,
``deformconv.data`` through ``deformconv.runs``, ``deformconv.engine.train``). The recipe
mirrors the paper's at CPU scale: a plain ResNet-18 pretrained once on synthetic
classification (``deformconv.runs.pretrained_backbone``, the studies' ImageNet, cached and
shared) is fine-tuned with its deformable layers' offsets starting at zero, here with AdamW
and a one-cycle schedule on scenes rendered once and turned and mirrored at random.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from deformconv.cli._common import positive_int
from deformconv.engine import CheckpointError
from deformconv.runs import (
    DataSpec,
    ModelSpec,
    PretrainSettings,
    build_datasets,
    build_model,
    from_scratch_spec,
    load_pretrained,
    parameter_count,
    pretrained_backbone,
    pretraining_seconds,
    set_threads,
    step_seconds,
    twin_model,
    write_json,
)

__all__ = [
    "DEFAULT_OUT",
    "PRETRAIN",
    "SCENE",
    "SMOKE_PRETRAIN",
    "Sizes",
    "Study",
    "add_common_args",
    "detection_specs",
    "iterations_trained",
    "mean_std",
    "parameter_count",
    "plan",
    "pretrained",
    "pretraining_record",
    "result_fields",
    "seed_stats",
    "segmentation_specs",
    "train_data",
    "train_run",
    "twin_model",
]

DEFAULT_OUT = Path("runs/experiments")
SMOKE_OUT = Path("runs/experiments-smoke")
# The studies' own recipe is written out here and in the scripts, not read from the demo's
# or the library's defaults: the studies' results and the pretraining cache (whose key
# hashes PRETRAIN) stay valid when those defaults change.
# The demo's scenes as the studies were run: five shape classes at widely varying scale
# (8 px to 0.7 of the image side), aspect ratio (up to 2.5) and rotation (any angle), on
# lighter clutter.
SCENE: dict[str, Any] = {"classes": ["triangle", "rectangle", "ellipse", "star", "cross"],
                         "clutter": 0.5, "max_distractors": 4, "max_objects": 3}
# The studies' ImageNet: a plain ResNet-18 of width 32 classifying single large objects of
# the ten default shape classes (the five of the scenes among them) at 64 px.
PRETRAIN = PretrainSettings(
    model="resnet18", base_channels=32, image_size=64, train_size=10000, val_size=500,
    iterations=3000, batch_size=32, lr=2e-3, weight_decay=0.05, warmup_share=0.1, seed=0,
    data_seed=100, scene={"min_object_size": 16.0, "max_object_size": 0.9, "clutter": 0.5,
                          "max_distractors": 4})
SMOKE_PRETRAIN = PretrainSettings(base_channels=4, image_size=32, train_size=8, val_size=4,
                                  iterations=2, batch_size=2)


@dataclass(frozen=True)
class Sizes:
    """How a study's runs train: data, model width, optimiser, length, seeds."""

    image_size: int
    batch_size: int
    train_size: int  # scenes rendered once, then turned and mirrored at random
    val_size: int
    base_channels: int
    iterations: int
    seeds: tuple[int, ...]
    lr: float = 2e-3  # AdamW peak rate of the one-cycle schedule
    weight_decay: float = 1e-4
    warmup_share: float = 0.15  # of the iterations: one-cycle's rising part
    # Adam moves every weight by about lr per step whatever its gradient, and an offset
    # sums 9 * C_in of them: offsets train at a tenth of the rate (about the demo's
    # absolute offset rate), so that they grow as the fine-tuned features settle.
    offset_lr_mult: float = 0.1
    # Segmentation: cross-entropy weights (1 / class frequency) ** class_balance.
    class_balance: float = 0.5
    grad_clip: float = 10.0
    pretrain: PretrainSettings | None = None  # None: from random init
    # The pretrained backbone fine-tunes at this fraction of the rate of the new heads
    # (AdamW would otherwise move its weights as fast as the random heads' from the start).
    backbone_lr_mult: float = 0.1
    scene: dict[str, Any] = field(default_factory=lambda: dict(SCENE))

    def __post_init__(self) -> None:
        if self.pretrain is not None and self.pretrain.base_channels != self.base_channels:
            raise ValueError(f"the pretrained backbone has width {self.pretrain.base_channels}"
                             f", the models base_channels={self.base_channels}")

    def identity(self) -> dict[str, Any]:
        """The sizes that decide a run's result; the seed list is left out (each run
        records its own seed), so more seeds can be added to a finished study."""
        return {k: v for k, v in asdict(self).items() if k != "seeds"}

    def data(self) -> DataSpec:
        """Training scenes from seed 0, validation from seed 1, the same for every run."""
        return DataSpec(image_size=self.image_size, train_size=self.train_size,
                        val_size=self.val_size, data_seed=0, scene=dict(self.scene))


def add_common_args(parser: argparse.ArgumentParser, training: bool = True) -> None:
    """The options every study takes; ``training`` studies also ``--keep-checkpoints``,
    ``--jobs`` and ``--shard``. A study that trains nothing (``training=False``: overhead)
    measures with one seed, and its ``--plan`` only says how long it takes."""
    parser.add_argument("--out", type=Path,
                        help=f"results folder (default {DEFAULT_OUT}, {SMOKE_OUT} with --smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes that run in seconds (for tests); results are "
                             "marked as smoke results")
    parser.add_argument("--seeds", type=int, nargs="+", action=_DistinctSeeds,
                        default=None if training else [0],
                        help="override the study's seeds (each at most once)" if training
                        else "measure with this one seed instead of 0")
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="CPU threads for torch and the Numba kernels (default 2)")
    parser.add_argument("--plan", action="store_true",
                        help="measure seconds per training iteration of each configuration, "
                             "print the estimated study time, and stop" if training
                        else "print how long the study takes, and stop")
    if not training:
        return
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each finished run's last.pt (default: deleted once the "
                             "run's result JSON is written)")
    parser.add_argument("--jobs", type=positive_int, default=2,
                        help="train the runs in this many --shard processes of one thread "
                             "each, side by side (default 2: one per core); the shared "
                             "pretraining first, in this process at --threads")
    parser.add_argument("--shard", type=_shard, metavar="K/N",
                        help="run only every N-th run starting at the K-th (0-based), e.g. two "
                             "processes with --shard 0/2 and --shard 1/2 --threads 1 each; a "
                             "last call without --shard writes the summary")


class _DistinctSeeds(argparse.Action):
    """``--seeds``, refused when a seed repeats: its runs would count twice in the means and
    make up a seed-to-seed spread."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        repeated = sorted({seed for seed in values if values.count(seed) > 1})
        if repeated:
            parser.error(f"{option_string}: each seed at most once, got {values} "
                         f"({', '.join(map(str, repeated))} repeated)")
        setattr(namespace, self.dest, values)


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
    """One configuration over its seeds: parameters, mean wall seconds per run (everything)
    and per training iteration (the steps alone), mean CPU seconds per iteration of the
    calls that wrote the results (a resumed run's call: per iteration it trained; NaN if no
    run says how far it trained), and per metric ``{"mean", "std", "values"}``."""
    trained = [(r, iterations_trained(r)) for r in results]
    known = [r.get("cpu_seconds", math.nan) / n for r, n in trained if n]
    row: dict[str, Any] = {
        "params": results[0]["params"],
        "run_seconds": mean_std([r["seconds"] for r in results])[0],
        "seconds_per_iteration": mean_std([r["seconds_per_iteration"] for r in results])[0],
        "cpu_seconds_per_iteration": mean_std(known)[0],
        "cpu_runs": len(known)}
    for key in metrics:
        values = [r["metrics"][key] for r in results]
        mean, std = mean_std(values)
        row[key] = {"mean": mean, "std": std, "values": values}
    return row


def iterations_trained(result: dict[str, Any]) -> int | None:
    """The iterations trained by the call that wrote a run's result (its CPU seconds cover
    those only). Results without ``resumed_at`` (older ones) were resumed, at an unknown
    iteration (None), if their training clock, which a resumed run carries over from its
    checkpoint, exceeds the call's own wall time."""
    if "resumed_at" in result:
        return result["iterations"] - result["resumed_at"]
    fresh = result.get("train_seconds", 0.0) <= result.get("seconds", math.inf)
    return result["iterations"] if fresh else None


def _plain_json(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj))


def run_script(main: Callable[[], int]) -> None:
    """Run a study script's ``main`` and exit with its code. Ctrl-C or a SIGTERM stops the
    training run at the end of an iteration, with a checkpoint; the script then says so in
    one line and exits with 128 + the signal's number, and the same command continues. An
    unreadable checkpoint is an ``error:`` line and exit code 2, as a study's own errors.

    A shard of ``--jobs`` (:meth:`Study.in_shards`) stops quietly: its parent says it, once.
    It starts with the stop signals held: one that came while it imported torch is taken
    here (a SIGTERM ends the process by itself)."""
    shard = os.environ.get(_SHARD_ENV) == "1"
    try:
        _hold_stop_signals(False)
    except KeyboardInterrupt:
        raise SystemExit(128 + signal.SIGINT) from None
    try:
        code = main()
    except CheckpointError as err:  # a run's last.pt or the pretraining's, kept as it is
        print(f"error: {err}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt as err:  # engine.TrainingStopped included
        if not shard:
            print(f"{str(err) or 'interrupted'}; run the same command again to continue",
                  file=sys.stderr)
        code = 128 + getattr(err, "signum", signal.SIGINT)
    raise SystemExit(code)


# What stops a study (Ctrl-C, a scheduler's kill), passed on to its shards.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _hold_stop_signals(hold: bool) -> set[signal.Signals] | None:
    """Block (``hold``) or unblock the stop signals in this thread; this thread's mask
    before (:func:`_restore_signal_mask`). None and nothing done where signals cannot be
    blocked (Windows)."""
    if not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK if hold else signal.SIG_UNBLOCK,
                                  _STOP_SIGNALS)


def _restore_signal_mask(mask: set[signal.Signals] | None) -> None:
    """Give this thread back the signal ``mask`` :func:`_hold_stop_signals` returned."""
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


# Set in the environment of the shard processes that Study.in_shards starts.
_SHARD_ENV = "DEFORMCONV_STUDY_SHARD"


class ShardsStopped(KeyboardInterrupt):
    """The shard processes of a ``--jobs`` study stopped at signal ``signum``."""

    def __init__(self, signum: int, message: str) -> None:
        self.signum = signum
        super().__init__(message)


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
        self.keep_checkpoints: bool = getattr(args, "keep_checkpoints", False)
        self.shard: tuple[int, int] | None = getattr(args, "shard", None)
        self.jobs: int = getattr(args, "jobs", 1)
        self.done: list[str] = []
        self.skipped: list[str] = []
        self.left: list[str] = []  # runs of other shards, not done yet
        # the pretraining its runs fine-tune (:func:`pretrained`), for the summary
        self.pretraining: dict[str, Any] | None = None
        # a --plan may time other settings (e.g. another length), not the other mode
        self._refuse_other_results(settings=not getattr(args, "plan", False))
        set_threads(args.threads)

    def _refuse_other_results(self, settings: bool = True) -> None:
        """Stop at once, before any pretraining or rendering, if the folder holds a result
        made in the other mode or (``settings``) with other settings (:meth:`run` also
        checks each run's own configuration when it gets there)."""
        here = {"mode": self.mode, **({"settings": self.settings} if settings else {})}
        for path in _result_files(self.folder):
            identity = _read_result(path).get("identity") or {}
            if {key: identity.get(key) for key in here} != here:
                raise _made_otherwise(path, here, identity)

    def run_dir(self, run: str) -> Path:
        return self.folder / run

    @property
    def complete(self) -> bool:
        """Whether every run asked for so far has a result (false only with ``--shard``)."""
        return not self.left

    def run(self, run: str, config: dict[str, Any], fn: Callable[[Path], dict[str, Any]],
            needs: Sequence[str] = ()) -> dict[str, Any] | None:
        """The result of run ``run``: read from its JSON, or ``fn(run_dir)`` then saved;
        None for a run left to another shard. ``needs``: what the script reads of a result
        (dotted paths, e.g. ``metrics.miou``); a saved result without one of them is a
        :class:`StudyError` naming the file and the field."""
        index = len(self.done) + len(self.skipped) + len(self.left)
        path = self.folder / f"{run}.json"
        identity = _plain_json({"study": self.name, "run": run, "mode": self.mode,
                                "settings": self.settings, "config": config})
        if path.exists():
            saved = _read_result(path, needs)
            if saved.get("identity") != identity:
                raise _made_otherwise(path, identity, saved.get("identity") or {})
            self.skipped.append(run)
            print(f"[{self.name}] {run}: done before, skipped")
            return saved["result"]
        if self.shard is not None and index % self.shard[1] != self.shard[0]:
            self.left.append(run)
            return None
        print(f"[{self.name}] {run}: running")
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn(self.run_dir(run))
        # wall seconds, and this process's CPU seconds (with one thread: the run's own work,
        # however busy the machine was; a resumed run counts its last part only)
        result["seconds"] = time.perf_counter() - start
        result["cpu_seconds"] = time.process_time() - cpu_start
        write_json({"identity": identity, "result": result}, path)  # complete or absent
        checkpoint = self.run_dir(run) / "last.pt"
        if not self.keep_checkpoints and checkpoint.exists():
            checkpoint.unlink()
        self.done.append(run)
        return result

    @property
    def trains_here(self) -> bool:
        """Whether this process trains runs itself (not a ``--jobs`` parent whose shard
        processes do)."""
        return self.jobs <= 1 or self.shard is not None

    def in_shards(self, script: str, argv: Sequence[str] | None) -> None:
        """With ``--jobs N`` (N > 1, no ``--shard``): run the script again as N shard
        processes of one thread each, side by side, and wait for them; this process then
        reads their results back. A failed shard stops the study (exit code 2).

        The shards run in sessions of their own, so a signal reaches them only through this
        process, once: a SIGINT (Ctrl-C) or SIGTERM (``kill``, a scheduler) to it is passed on
        to them, which stops their runs at the end of an iteration with a checkpoint (a second
        Ctrl-C at once), or ends a shard quietly before its runs (still importing: see
        :func:`run_script`); this process then stops as they did.
        """
        if self.jobs <= 1 or self.shard is not None:
            return
        argv = list(sys.argv[1:] if argv is None else argv)
        shards: list[subprocess.Popen] = []
        received: list[int] = []

        sent: dict[int, int] = {}  # per shard's pid: how many of ``received`` it was sent

        def pass_on(shard: subprocess.Popen) -> None:
            while sent.get(shard.pid, 0) < len(received) and shard.poll() is None:
                sent[shard.pid] = sent.get(shard.pid, 0) + 1
                shard.send_signal(received[sent[shard.pid] - 1])

        def forward(signum: int, frame: object) -> None:
            received.append(signum)
            for shard in shards:
                pass_on(shard)

        # before the shards start: a signal in between would end this process alone
        previous = {s: signal.signal(s, forward) for s in _STOP_SIGNALS}
        try:
            for k in range(self.jobs):
                if received:  # stopped while starting them: start no more
                    break
                # a shard starts with the stop signals held (a process keeps its parent's
                # mask), until run_script takes them: Python's SIGINT while it imported
                # torch was a KeyboardInterrupt traceback; held, it ends the shard quietly.
                # Only this thread's mask: one sent to this process meanwhile may reach
                # another thread and be handled inside Popen, before the shard is listed;
                # it is passed on to the shard once listed.
                held = _hold_stop_signals(True)
                try:
                    shard = subprocess.Popen(
                        [sys.executable, script, *argv, "--jobs", "1", "--shard",
                         f"{k}/{self.jobs}", "--threads", "1"], start_new_session=True,
                        env={**os.environ, _SHARD_ENV: "1"})
                finally:
                    _restore_signal_mask(held)
                shards.append(shard)
                pass_on(shard)
            codes = [shard.wait() for shard in shards]
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        # a shard stops with 128 + the signal's number, or dies of it (-number) outside a run
        stopped = {code for s in (signal.SIGINT, signal.SIGTERM) for code in (128 + s, -s)}
        if set(codes) - stopped - {0}:
            raise StudyError(f"[{self.name}] shard exit codes {codes}; the runs done so far "
                             "are kept, run the study again to continue")
        if received or set(codes) - {0}:
            signum = received[0] if received else next(abs(c) % 128 for c in codes if c)
            raise ShardsStopped(signum, f"[{self.name}] shards stopped (exit codes {codes})")

    def finish_shard(self) -> int:
        """Report a shard's end (the summary needs every run); the exit code, 0."""
        print(f"[{self.name}] shard {self.shard}: {len(self.done)} run(s) done, "
              f"{len(self.skipped)} skipped, {len(self.left)} left to other shards; run "
              "again without --shard once all are done to write the summary")
        return 0

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """``<out>/<name>/summary.json``: what the results generator reads; with the
        pretraining the runs fine-tuned (:func:`pretraining_record`) where they did."""
        record = {} if self.pretraining is None else {"pretraining": self.pretraining}
        path = write_json({"study": self.name, "mode": self.mode, "settings": self.settings,
                           "measured": run_minutes(self.folder), **record, **summary},
                          self.folder / "summary.json")
        print(f"[{self.name}] {len(self.done)} run(s) done, {len(self.skipped)} skipped; "
              f"summary: {path}")
        return path


def _result_files(folder: Path) -> list[Path]:
    """The runs' result files in a study's folder (not its summary or plan)."""
    return [path for path in sorted(folder.glob("*.json"))
            if path.name not in ("summary.json", "plan.json")]


def _read_result(path: Path, needs: Sequence[str] = ()) -> dict[str, Any]:
    """A run's result file read back: ``{"identity", "result"}`` whose result holds each of
    ``needs`` (dotted paths); a :class:`StudyError` naming it if it is not one (empty, cut
    short, not JSON, a field missing)."""
    def check(saved: dict[str, Any]) -> str | None:
        if not isinstance(saved["result"], dict):
            return "no result object in it"
        for need in needs:
            value: Any = saved["result"]
            for key in need.split("."):
                if not isinstance(value, dict) or key not in value:
                    return f"no result.{need} in it"
                value = value[key]
        return None

    return read_json(path, ("result file", ("result",)), "delete it to run it again", check)


def result_fields(metrics: Sequence[str]) -> tuple[str, ...]:
    """What :func:`seed_stats` reads of each run's result (:meth:`Study.run`'s ``needs``)."""
    return ("params", "seconds", "seconds_per_iteration", "iterations",
            *(f"metrics.{key}" for key in metrics))


def read_json(path: Path, kind: tuple[str, Sequence[str]],
              hint: str = "delete it, or run its study again to write it",
              check: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any]:
    """The JSON object in ``path``, a ``kind`` (its name, its required keys) that ``check``
    (if given) finds nothing wrong with (it returns why not, or None); an error naming the
    file and ending in ``hint`` (exit code 2) if it is not one."""
    name, keys = kind
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = f"{type(err).__name__}: {err}"
    else:
        missing = [key for key in keys if key not in data] if isinstance(data, dict) else keys
        reason = f"no {', '.join(missing)} in it" if missing else \
            check(data) if check is not None else None
        if reason is None:
            return data
    raise StudyError(f"{path} is not a valid {name} ({reason}); {hint}")


def _made_otherwise(path: Path, here: dict[str, Any], saved: dict[str, Any]) -> StudyError:
    return StudyError(f"{path} was made with other settings or another mode "
                      f"({first_difference(here, saved)}); use another --out or delete it")


def first_difference(here: Any, saved: Any, key: str = "") -> str:
    """The first key where ``here`` and ``saved`` (plain JSON values) differ, with both
    values: ``"mode: smoke here, full in the file"``."""
    if isinstance(here, dict) and isinstance(saved, dict):
        for name in [*here, *(k for k in saved if k not in here)]:
            if here.get(name, _ABSENT) != saved.get(name, _ABSENT):
                return first_difference(here.get(name, _ABSENT), saved.get(name, _ABSENT),
                                        f"{key}.{name}" if key else str(name))
    return f"{key or 'value'}: {shown(here)} here, {shown(saved)} in the file"


_ABSENT = object()


def shown(value: Any, width: int = 60) -> str:
    if value is _ABSENT:
        return "absent"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def run_minutes(folder: Path) -> dict[str, float] | None:
    """The study's runs' summed wall and CPU minutes (each run's own timing) and their
    count, from the run files in ``folder``; None before any run."""
    runs = [_read_result(p)["result"] for p in _result_files(folder)]
    if not runs:
        return None
    return {"runs": len(runs), "wall": sum(r.get("seconds", 0.0) for r in runs) / 60,
            "cpu": sum(r.get("cpu_seconds", math.nan) for r in runs) / 60}


_DATA: dict[str, tuple[Dataset, Dataset, int]] = {}


def train_data(sizes: Sizes, task: str) -> tuple[Dataset, Dataset, int]:
    """(training set, validation set, C classes) of ``sizes``, rendered once per process
    and kept in memory; training samples are turned by quarter turns and mirrored at
    random (the scenes' statistics do not change under either)."""
    from deformconv.data import InMemory
    from deformconv.data.transforms import Compose, RandomHorizontalFlip, RandomRot90

    key = json.dumps([task, asdict(sizes.data())], sort_keys=True)
    if key not in _DATA:
        train_set, val_set, classes = build_datasets(sizes.data(), task)
        assert train_set is not None
        augment = Compose([RandomRot90(), RandomHorizontalFlip()])
        _DATA[key] = InMemory(train_set, augment), InMemory(val_set), classes
    return _DATA[key]


def pretrained(sizes: Sizes, study: Study) -> dict[str, Any] | None:
    """The pretrained backbone of ``sizes`` (trained on first use, then read from
    ``<out>/cache``; a process that finds another training it waits), or None for
    training from random init. The scripts call it before their runs, so that no run's
    time includes the pretraining (the budget counts it apart). The study keeps its
    :func:`pretraining_record` for its summary."""
    if sizes.pretrain is None:
        return None
    info = pretrained_backbone(sizes.pretrain, study.folder.parent / "cache")
    study.pretraining = pretraining_record(info)
    return info


def pretraining_record(info: dict[str, Any]) -> dict[str, Any]:
    """What identifies a pretraining and its cost, from its cache record (``pretrain.json``,
    as :func:`pretrained` returns it): ``{"key"`` (the cache key of its settings),
    ``"top1"``, and where the record tells them ``"threads", "cpu_seconds", "seconds",
    "iterations", "resumed"}`` (its training clock, summed over resumes, exceeds the last
    process's wall time: :func:`iterations_trained`). One key, trained again (at
    other threads, by other code), is another pretraining: the record tells them apart."""
    record: dict[str, Any] = {"key": PretrainSettings(**info["settings"]).key(),
                              "top1": info["metrics"]["top1"]}
    record.update({key: info[key] for key in ("threads", "cpu_seconds", "seconds", "iterations")
                   if key in info})
    if "train_seconds" in info:
        record["resumed"] = iterations_trained(info) is None
    return record


def train_run(task: str, spec: ModelSpec, plain: ModelSpec, sizes: Sizes, seed: int,
              run_dir: Path, study: Study) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune ``spec`` (its plain twin's weights, the pretrained backbone, zero offsets)
    with ``seed``; evaluate on the validation scenes. Resumes from ``run_dir/last.pt`` if a
    previous call was stopped. Returns the trained model and ``{"metrics", "params",
    "iterations", "resumed_at" (the checkpoint's iteration, 0 for a fresh run),
    "train_seconds", "seconds_per_iteration"}``."""
    from deformconv.engine import (
        TrainConfig,
        balanced_class_weights,
        label_counts,
        load_checkpoint,
        train,
    )

    train_set, val_set, classes = train_data(sizes, task)
    model = twin_model(spec, plain, seed)
    backbone = pretrained(sizes, study)
    if backbone is not None:
        model.load_backbone_state_dict(load_pretrained(backbone["checkpoint"]))  # type: ignore[operator]
    lr_mults = {} if backbone is None else {BACKBONE_PREFIX[task]: sizes.backbone_lr_mult}
    weights = None
    if task == "segmentation":
        counts = label_counts(train_set.targets, classes + 1)  # type: ignore[attr-defined]
        weights = balanced_class_weights(counts, sizes.class_balance)
    config = TrainConfig(
        task=task, iterations=sizes.iterations, batch_size=sizes.batch_size,
        optimizer="adamw", lr=sizes.lr, weight_decay=sizes.weight_decay, schedule="onecycle",
        warmup_iters=round(sizes.warmup_share * sizes.iterations), class_weights=weights,
        lr_mults=lr_mults,
        grad_clip_norm=sizes.grad_clip, offset_lr_mult=sizes.offset_lr_mult, seed=seed,
        checkpoint_every=max(1, sizes.iterations // 4), keep_best=False, resume="auto",
        out_dir=str(run_dir), progress=False, log_every=10, device="cpu")
    last = run_dir / "last.pt"
    resumed_at = load_checkpoint(last)["iteration"] if last.exists() else 0
    result = train(config, model, train_set, val_set,
                   extra={"model": asdict(spec), "data": asdict(sizes.data())})
    return model, {"metrics": result.metrics, "params": parameter_count(model),
                   "iterations": result.iteration, "resumed_at": resumed_at,
                   "train_seconds": result.train_seconds,
                   "seconds_per_iteration": result.train_seconds / max(1, result.iteration)}


PLAN_STEPS = 10  # timed steps per configuration in a --plan


def plan(study: Study, task: str, specs: dict[str, ModelSpec], sizes: Sizes,
         eval_share: float = 0.1) -> dict[str, Any]:
    """The study's estimated time on an otherwise idle machine, without training it.

    With ``--jobs N`` (N > 1; default 2, one per core) the runs train in N processes of one
    thread: each configuration's step is timed at one thread in this process's CPU seconds
    (its own work, however busy the machine is; the median of :data:`PLAN_STEPS` steps on
    one batch, the configurations taking turns), and the study takes 1/N of the sum over
    configurations of s/iteration x iterations x seeds. With ``--jobs 1``, in wall seconds
    at ``--threads``. On top: ``eval_share`` for evaluation, checkpoints and model
    building, and rendering the scenes. The pretraining, once for all studies, is costed
    at one thread in CPU seconds (an upper bound: it runs at ``--threads``) and kept apart.
    Also written to ``<study>/plan.json``.
    """
    threads, processes = torch.get_num_threads(), study.jobs
    clock = time.process_time if processes > 1 else time.perf_counter
    if processes > 1:
        set_threads(1)
    start = time.perf_counter()
    train_set, _, _ = train_data(sizes, task)
    render_s = time.perf_counter() - start
    print(f"  rendering the scenes: {render_s:.0f} s")
    # every configuration on the same batch, taking turns: a detection step's cost varies
    # with its batch's proposals, and a burst of load hits all alike
    models = {name: build_model(spec, seed=0) for name, spec in specs.items()}
    per_iter = step_seconds(models, task, train_set, sizes.batch_size, torch.device("cpu"),
                            lambda net: torch.optim.AdamW(net.parameters(), lr=1e-6),
                            steps=PLAN_STEPS, clock=clock)
    for name, seconds in per_iter.items():
        print(f"  {name}: {seconds:.3f} s / iteration")
    train_s = sum(per_iter.values()) * sizes.iterations * len(sizes.seeds) / processes
    total = train_s * (1 + eval_share) + render_s
    how = (f"{processes} processes of 1 thread (CPU seconds per step)" if processes > 1
           else f"one process of {threads} threads (wall seconds per step)")
    print(f"estimate, {how}: {len(specs)} configurations x {len(sizes.seeds)} seeds x "
          f"{sizes.iterations} iterations = {total / 60:.1f} min "
          f"({train_s / 60:.1f} min training + {eval_share:.0%} for the rest + rendering)")
    estimate = {"mode": study.mode, "settings": study.settings,
                "seconds_per_iteration": per_iter, "iterations": sizes.iterations,
                "seeds": len(sizes.seeds), "estimated_minutes": total / 60,
                "threads": 1 if processes > 1 else threads, "processes": processes,
                "clock": "cpu" if processes > 1 else "wall",
                "timing": f"the median of {PLAN_STEPS} AdamW steps on one batch, after a "
                          "warm-up step, the configurations taking turns"}
    if sizes.pretrain is not None:
        pretrain_s = pretraining_seconds(sizes.pretrain, clock) * (1 + eval_share)
        print(f"  pretraining, once for all studies: {pretrain_s / 60:.1f} min")
        estimate["pretraining_minutes"] = pretrain_s / 60
    set_threads(threads)
    write_json(estimate, study.folder / "plan.json")
    return estimate


# The studies' networks: the basic-block ResNet-18 the pretraining trains, fine-tuned.
BACKBONE = "resnet18"
# Where the pretrained ResNet sits in each task's models (parameter-name prefix).
BACKBONE_PREFIX = {"segmentation": "backbone.", "detection": "backbone.body."}


def segmentation_specs(sizes: Sizes, classes: int, deform_blocks: Sequence[int]
                       ) -> tuple[ModelSpec, ModelSpec]:
    """(DeepLab with ``deform_blocks``, its plain twin) on a ResNet-18 of width
    ``base_channels`` at output stride 8 (res4 and res5 dilated: the paper's stride 16
    would leave 4x4 maps of 64 px images), with a DeepLabv3+ decoder back to stride 4."""
    overrides = {"backbone_kwargs": {"output_stride": 8},
                 "decoder_channels": 2 * sizes.base_channels}

    def spec(deformable: bool) -> ModelSpec:
        return from_scratch_spec(f"deeplab_{BACKBONE}", classes, image_size=sizes.image_size,
                                 deformable=deformable, base_channels=sizes.base_channels,
                                 deform_blocks=list(deform_blocks), overrides=overrides)

    return spec(True), spec(False)


# Detection on a CPU: the torchvision defaults sized down (fewer RoIs, narrower head), and
# a low score threshold so that mAP sees the whole precision-recall curve.
DETECTION_OPTIONS: dict[str, Any] = {
    "rpn_pre_nms_top_n_train": 300, "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_train": 64, "rpn_post_nms_top_n_test": 64,
    "box_batch_size_per_image": 32, "box_score_thresh": 0.001, "box_detections_per_img": 20,
}
DETECTORS = ("faster_rcnn", "rfcn")


def detection_specs(sizes: Sizes, classes: int, deform_blocks: Sequence[int],
                    deformable_head: bool, detector: str = "faster_rcnn"
                    ) -> tuple[ModelSpec, ModelSpec]:
    """(Faster R-CNN or R-FCN on a ResNet-18 with ``deform_blocks`` and deformable (PS) RoI
    pooling or not, its plain twin), at ``image_size`` (anchors scaled to it) with
    :data:`DETECTION_OPTIONS`."""
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    options = {**DETECTION_OPTIONS, "deformable_head": deformable_head,
               "head_channels": 4 * sizes.base_channels}
    if detector == "faster_rcnn":
        options["representation_size"] = 8 * sizes.base_channels
    else:  # 3x3 position-sensitive bins (R-FCN's own ablation has them): on our 8x8 maps a
        # 7x7 grid would cut most objects into bins far smaller than a feature cell
        options["group_size"] = 3

    def spec(deformable: bool) -> ModelSpec:
        return from_scratch_spec(f"{detector}_{BACKBONE}", classes,
                                 image_size=sizes.image_size, deformable=deformable,
                                 base_channels=sizes.base_channels,
                                 deform_blocks=list(deform_blocks), overrides=options)

    return spec(True), spec(False)
