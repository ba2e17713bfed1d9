"""The demo run: a deformable network and its plain twin, trained and compared, on a CPU.

Task: semantic segmentation of synthetic scenes whose shapes vary in scale from 8 px to
nearly the whole image, in aspect ratio and in rotation, on clutter. The network is a
:class:`~deformconv.models.CompactFCN`: five 3×3 conv layers, two of them strided, to
output stride 4; in the deformable twin the top layer, on the 16×16 map, learns offsets
that can stretch its sampling grid to the object at hand, at a moderate extra cost per
step. Both twins start from the same weights (the offsets at zero) and train with
AdamW and a warmup-stable-decay schedule.

Three runs are compared:

- ``plain`` and ``deformable``: the same number of iterations;
- ``plain, equal time``: the plain twin trained for as long as the deformable one takes
  (more iterations, by the ratio of the twins' step times measured before training), since
  the deformable layer costs more per iteration: it continues the plain run from the start
  of that run's decay (``branch.pt``; until there both share rate, batches and weights),
  holds the rate longer and decays over its own last fifth.

On a CPU the plain twin (then its equal-time run) and the deformable twin train side by
side in two processes (``DemoSettings.jobs``), each on half of the threads; on one thread
they train one after another in one process (:func:`process_layout`).

:func:`run_demo` then evaluates them (mIoU, each image alone, each object by scale),
times inference, draws the learning curves, predictions, sampling locations and the
object recall per scale, and writes ``report.md`` (see :mod:`.demo_report`),
``metrics.json`` and the PNGs to the output folder. ``deformconv demo`` is its command line.

A demo stopped by Ctrl-C or SIGTERM continues with ``resume=True`` (``deformconv demo
--resume``): the settings and the measured step ratio are saved in the folder's marker
when the demo claims it, finished runs are kept and the others resume from their
``last.pt``, exactly as the trainer resumes a run. The time spent before the stop counts:
each run records its CPU seconds in its folder (``demo_cpu.json``) and the stopped demo
its wall-clock and CPU seconds in the marker, so that the report gives the costs of an
uninterrupted demo (a demo ended by an error records its time too). A demo killed outright
(SIGKILL, a power cut) records nothing: its resume's report says that the whole demo's
times leave out the time before the kill.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .._extras import require
from .._folder_lock import folder_lock
from .results import write_json
from .specs import DataSpec, ModelSpec, build_datasets, model_from_checkpoint
from .timing import ms_per_image, parameter_count, set_threads, step_seconds, threads_set_to
from .twins import twin_model, twin_models

__all__ = ["RUNS", "ChangedSettingsError", "DemoSettings", "demo_data", "demo_specs", "run_demo",
           "run_folder"]

RUNS = ("plain", "deformable", "plain, equal time")
BRANCH = "branch.pt"  # the plain run's checkpoint the equal-time run continues from
MODEL = "compact_fcn"


@dataclass
class DemoSettings:
    """Data, model and training of the demo (the README's demo section and
    ``docs/demo_seeds.md`` give the defaults' results and times over 5 seeds)."""

    iterations: int = 3000  # per twin at equal iterations
    equal_time: bool = True  # also train the plain twin for the deformable one's time
    image_size: int = 64
    batch_size: int = 16
    train_size: int = 3000  # scenes rendered once, then turned and mirrored at random
    val_size: int = 200
    widths: tuple[int, ...] = (24, 32, 48, 48, 48)
    strides: tuple[int, ...] = (2, 2, 1, 1, 1)
    deform_layers: int = 1  # the last layers, on the 16x16 maps of a 64 px image
    modulated: bool = False  # DCN v2 modulation in the deformable layers
    skip_layer: int | None = None  # the layer a decoder fuses (None: no decoder)
    decoder_width: int = 32
    lr: float = 6e-3  # AdamW peak rate
    weight_decay: float = 1e-4
    warmup_share: float = 0.05  # of the iterations: the rate's linear rise
    decay_share: float = 0.2  # of each run's iterations: the rate's linear decay to 0
    # Adam moves every weight by about lr per step whatever its gradient, and an offset
    # sums 9 * C_in of them: at the full rate the zero-initialised offsets would jump by
    # pixels per step; a twentieth of it lets them grow as the features form.
    offset_lr_mult: float = 0.05
    # Cross-entropy weights (1 / class frequency) ** power: background holds most pixels,
    # and unweighted training reaches the rare shapes late.
    class_balance: float = 0.5
    # Max global L2 norm of the gradients. Without it, 2 of 5 seeds of the deformable twin
    # spiked at the peak rate and never recovered the lost ground (docs/demo_seeds.md).
    grad_clip_norm: float | None = 1.0
    seed: int = 0  # model initialisation, data order and the scenes (validation: seed + 1)
    device: str = "cpu"
    # Weights and images stored channels-last: on a CPU each step of either twin is 12-19 %
    # cheaper than NCHW (README; the demo's times over 5 seeds: docs/demo_seeds.md).
    channels_last: bool = True
    # Processes the runs train in, on a CPU: 2 trains the plain twin (then its equal-time
    # run) and the deformable twin side by side, each on half of this process's threads
    # (with one thread: one process); nets this small gain little from a second thread of
    # one process. 1: one after another.
    jobs: int = 2
    figures: int = 3  # images in the prediction and sampling-location figures
    evaluations: int = 6  # validations per run, for the learning curves
    progress: bool = True  # progress bars
    scene: dict[str, Any] = field(default_factory=lambda: {
        "classes": ["triangle", "rectangle", "ellipse", "star", "cross"],
        "clutter": 0.5, "max_distractors": 4, "max_objects": 3, "max_object_size": 0.9})

    @classmethod
    def smoke(cls, **overrides: Any) -> DemoSettings:
        """Seconds, for tests: tiny images, model and data, a few iterations."""
        values = dict(iterations=4, image_size=32, batch_size=2, train_size=8, val_size=4,
                      widths=(4, 4, 4), strides=(2, 1, 1), deform_layers=2, skip_layer=0, figures=2,
                      evaluations=2, jobs=1)
        return cls(**{**values, **overrides})


SUMMARY = "metrics.json"
RUN_CPU = "demo_cpu.json"  # in each run folder: the CPU time its training took so far
MARKER = ".deformconv-demo"  # marks a folder a demo wrote: a rerun may replace its files
DEMO_LOCK = ".deformconv-demo.lock"  # held by the demo running in the folder


def run_folder(name: str) -> str:
    """The subfolder of a run's checkpoints and metrics: ``plain_equal_time`` etc."""
    return name.replace(", ", "_").replace(" ", "_")


def demo_specs(s: DemoSettings, classes: int) -> tuple[ModelSpec, ModelSpec]:
    """(deformable, plain) model specs of the demo for C = ``classes`` object classes."""
    kwargs = {"widths": list(s.widths), "strides": list(s.strides),
              "deform_layers": s.deform_layers, "skip_layer": s.skip_layer,
              "decoder_width": s.decoder_width, "modulated": s.modulated,
              "channels_last": s.channels_last}
    return (ModelSpec(MODEL, classes + 1, True, copy.deepcopy(kwargs)),
            ModelSpec(MODEL, classes + 1, False, copy.deepcopy(kwargs)))


def demo_data(s: DemoSettings) -> tuple[DataSpec, Dataset, Dataset, int]:
    """(spec, training set, validation set, C classes): the scenes rendered once and kept
    in memory; training samples turned by quarter turns and mirrored at random (the
    scenes' statistics do not change under either)."""
    from ..data import InMemory
    from ..data.transforms import Compose, RandomHorizontalFlip, RandomRot90

    data = DataSpec(image_size=s.image_size, train_size=s.train_size, val_size=s.val_size,
                    data_seed=s.seed, scene=dict(s.scene))
    train_set, val_set, classes = build_datasets(data, "segmentation")
    assert train_set is not None
    augment = Compose([RandomRot90(), RandomHorizontalFlip()])
    return data, InMemory(train_set, augment), InMemory(val_set), classes


def _config(s: DemoSettings, iterations: int, out: Path, class_weights: list[float],
            **changes: Any) -> Any:
    """The training config of one run: AdamW, warmup-stable-decay over ``iterations``
    (warm-up and evaluation period from ``s.iterations``, so every run shares them);
    ``changes`` override fields (resume, progress bar label and line, ...)."""
    from ..engine import TrainConfig

    return TrainConfig(
        task="segmentation", iterations=iterations, batch_size=s.batch_size,
        optimizer="adamw", lr=s.lr, weight_decay=s.weight_decay, schedule="wsd",
        warmup_iters=round(s.warmup_share * s.iterations), decay_share=s.decay_share,
        offset_lr_mult=s.offset_lr_mult, grad_clip_norm=s.grad_clip_norm,
        class_weights=class_weights, seed=s.seed,
        eval_every=max(1, s.iterations // s.evaluations), keep_best=False, log_every=10,
        out_dir=str(out), device=s.device, progress=s.progress, **changes)


@dataclass
class _Job:
    """The runs one process trains, in order, and what they start from."""

    names: tuple[str, ...]  # from RUNS; "plain, equal time" after "plain"
    settings: DemoSettings
    specs: dict[str, ModelSpec]  # of each run
    class_weights: list[float]
    step_ratio: float  # deformable / plain step time: the equal-time run's length
    out: Path
    extra: dict[str, Any]  # stored in the checkpoints, with the run's model spec
    threads: int | None = None  # set in a worker process; None: keep this process's
    line: int = 0  # of the progress bars
    scenes: Path | None = None  # the parent's training and validation sets; None: render


def _train_runs(job: _Job, datasets: tuple[Dataset, Dataset] | None = None
                ) -> dict[str, dict[str, Any]]:
    """Train ``job.names`` in order on ``datasets`` (training, validation; None: render
    them, in a worker process): each run's result, its weights in ``result["checkpoint"]``.
    Every run starts from the twins' weights of ``s.seed`` (:func:`twin_model`), or
    continues from its folder's ``last.pt`` (a resumed demo: a new demo's folders are
    empty); a finished run only validates again."""
    from ..engine import train

    if job.threads is not None:
        set_threads(job.threads)
    s = job.settings
    train_set, val_set = datasets or _scenes(job)
    trained = {}
    for name in job.names:
        model = twin_model(job.specs[name], job.specs["plain"], s.seed)
        folder = job.out / run_folder(name)
        length = s.iterations
        changes: dict[str, Any] = {"progress_label": name, "progress_line": job.line,
                                   "resume": "auto"}
        if name == RUNS[2]:
            length = _equal_time_length(s, job.step_ratio)
            if not (folder / "last.pt").is_file():
                changes["resume"] = _equal_time_start(s, length, job.out)
        if name == "plain":
            changes["checkpoint_every"] = _branch_at(s)
        config = _config(s, length, folder, job.class_weights, **changes)
        print(f"training {name}: {config.iterations} iterations")
        spent = _spent_cpu(folder)
        cpu_started = time.process_time()
        try:
            result = train(config, model, train_set, val_set,
                           extra={**job.extra, "model": asdict(job.specs[name])},
                           on_iteration_end=_checkpoint_hook(s, config, folder, name,
                                                             spent, cpu_started))
        except KeyboardInterrupt:  # stopped, last.pt saved: a resume goes on from here
            if not spent.finished and folder.is_dir():
                _record_cpu(folder, spent.until_now(cpu_started), False)
            raise
        # CPU time of this process in the calls that trained the run (validations
        # included), before a stop and after it; a continued run's excludes what it
        # continues from. A finished run only validated again: its time stays.
        cpu = spent.seconds if spent.finished else spent.until_now(cpu_started)
        if not spent.finished:
            _record_cpu(folder, cpu, True)
        summary = {"metrics": result.metrics, "train_seconds": result.train_seconds,
                   "train_cpu_seconds": result.train_cpu_seconds, "cpu_seconds": cpu,
                   "iterations": result.iteration, "checkpoint": result.last_checkpoint}
        if name == RUNS[2]:
            summary["branched_at"] = _branch_at(s) if length >= s.iterations else None
        trained[name] = summary
    return trained


@dataclass(frozen=True)
class _SpentCPU:
    """What a run's :data:`RUN_CPU` file holds."""

    seconds: float = 0.0  # CPU seconds its training took so far, over every call
    finished: bool = False  # whether it reached its last iteration (its time is final)

    def until_now(self, cpu_started: float) -> float:
        """The run's CPU seconds so far: these and this process's since ``cpu_started``
        (a ``time.process_time()`` reading)."""
        return self.seconds + time.process_time() - cpu_started


def _spent_cpu(folder: Path) -> _SpentCPU:
    """The CPU time the run in ``folder`` recorded (:func:`_record_cpu`); none yet (a new
    run, or one of an earlier version) counts as zero."""
    try:
        saved = json.loads((folder / RUN_CPU).read_text(encoding="utf-8"))
        return _SpentCPU(float(saved["cpu_seconds"]), bool(saved["finished"]))
    except (OSError, ValueError, TypeError, KeyError):
        return _SpentCPU()


def _record_cpu(folder: Path, seconds: float, finished: bool) -> None:
    """Save the CPU seconds the run in ``folder`` took so far, for a resumed demo to add to
    (so that its report gives the cost an uninterrupted demo's would)."""
    write_json({"cpu_seconds": seconds, "finished": finished}, folder / RUN_CPU)


def _checkpoint_hook(s: DemoSettings, config: Any, folder: Path, name: str,
                     spent: _SpentCPU, cpu_started: float) -> Callable[[int], None]:
    """The run's ``on_iteration_end``: when a mid-run checkpoint was written, it records
    the run's CPU time so far (a run killed after it resumes from that checkpoint, having
    saved the time that led there), and the plain run keeps ``branch.pt``, its state where
    the schedule starts decaying, for the equal-time run to continue from."""
    branch_at = _branch_at(s)

    def after_iteration(iteration: int) -> None:
        every = config.checkpoint_every
        if every and iteration % every == 0 and iteration < config.iterations \
                and not spent.finished:
            _record_cpu(folder, spent.until_now(cpu_started), False)
        if name == "plain" and iteration == branch_at:
            shutil.copyfile(folder / "last.pt", folder / BRANCH)

    return after_iteration


def _equal_time_length(s: DemoSettings, ratio: float) -> int:
    """Iterations of the plain twin trained for the deformable run's time: ``ratio``
    (deformable / plain step time) times the plain run's iterations."""
    return max(1, round(s.iterations * ratio))


def _equal_time_start(s: DemoSettings, iterations: int, out: Path) -> str | None:
    """The checkpoint the equal-time run of ``iterations`` starts from: when they are at
    least the plain run's, the run continues the plain run from its branch point (until
    there the schedule, batches and weights are the same), holds the rate until its own
    decay and decays; otherwise it starts afresh (None)."""
    if iterations < s.iterations:
        return None
    folder = out / run_folder(RUNS[2])
    folder.mkdir(parents=True, exist_ok=True)
    plain = out / run_folder("plain")
    # the shared part of the learning curve; the trainer drops what follows the branch
    shutil.copyfile(plain / "metrics.jsonl", folder / "metrics.jsonl")
    return str(plain / BRANCH)


def _scenes(job: _Job) -> tuple[Dataset, Dataset]:
    """A worker's training and validation sets: memory-mapped from the file the parent
    saved them to (the processes share its pages), or rendered again without one."""
    if job.scenes is None:
        return demo_data(job.settings)[1:3]
    # the parent's own file in a private temporary folder: safe to unpickle
    saved = torch.load(job.scenes, mmap=True, weights_only=False)
    return saved["train"], saved["val"]


def _branch_at(s: DemoSettings) -> int:
    """Where the equal-time run leaves the plain run: the start of the plain run's decay."""
    from ..engine import decay_start

    return decay_start(s.iterations, s.decay_share)


class _Workers:
    """Worker processes, one per job, started before the parent renders the scenes: each
    imports the training code meanwhile (torch, the models, the engine: seconds), says it
    is ready and waits for its job (:meth:`train`). ``folder`` is a private temporary
    folder to share files with them. Leaving the ``with`` block stops any worker still
    running, then deletes the folder."""

    def __init__(self, count: int) -> None:
        # spawn, not fork: a forked child of a process whose OpenMP threads have started can
        # hang in its first parallel region
        context = multiprocessing.get_context("spawn")
        self.workers: list[tuple[Any, Any, Any]] = []  # (process, job sender, result receiver)
        self.ready = False
        self._folder = tempfile.TemporaryDirectory(prefix="deformconv-demo-")
        self.folder = Path(self._folder.name)
        try:
            for _ in range(count):
                job_receiver, job_sender = context.Pipe(duplex=False)
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=_worker, args=(job_receiver, sender),
                                          daemon=True)
                process.start()
                job_receiver.close()
                sender.close()  # the worker's end: when it dies, the receiver reads EOF
                self.workers.append((process, job_sender, receiver))
        except BaseException:
            self.__exit__()
            raise

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process, job_sender, _ in self.workers:
            job_sender.close()
            process.terminate()
            process.join()
        self._folder.cleanup()

    def wait_ready(self) -> None:
        """Return once every worker has imported what it trains with (so that it no longer
        competes for the CPU with the parent's step timing)."""
        if not self.ready:
            for process, _, receiver in self.workers:
                _receive(receiver, process)
            self.ready = True

    def train(self, jobs: list[_Job]) -> dict[str, Any]:
        """Each job to a worker of its own; the runs' results. The first failure, or a
        worker that dies (killed for memory, say), raises here."""
        self.wait_ready()
        waiting = {}
        for (process, job_sender, receiver), job in zip(self.workers, jobs, strict=True):
            try:
                job_sender.send(job)
            except OSError:  # the worker is gone: raise why
                _receive(receiver, process)
                raise
            waiting[receiver] = process
        results: dict[str, Any] = {}
        while waiting:
            for receiver in multiprocessing.connection.wait(list(waiting)):
                results.update(_receive(receiver, waiting.pop(receiver)))
        return results


def _receive(receiver: Any, process: Any) -> Any:
    """A worker's next ``("ok", value)`` message's value; raises its error, or a
    RuntimeError if it died first."""
    try:
        status, value = receiver.recv()
    except EOFError:
        process.join()
        raise RuntimeError(f"a demo worker died (exit code {process.exitcode}) before "
                           "returning its runs") from None
    if status == "error":
        raise value
    return value


def _train_side_by_side(jobs: list[_Job]) -> dict[str, Any]:
    """Every job in a process of its own (:class:`_Workers`); the runs' results."""
    with _Workers(len(jobs)) as workers:
        return workers.train(jobs)


def _worker(jobs: Any, sender: Any) -> None:
    """A worker process: import the training code, send ``("ok", None)``, wait for a job on
    ``jobs``, train it and send ``("ok", results)``; any error goes as ``("error", e)``."""
    try:
        import torch._dynamo  # noqa: F401  (an optimizer's first step imports it: 1-2 s)

        from ..engine import train  # noqa: F401

        sender.send(("ok", None))
        try:
            job = jobs.recv()
        except EOFError:  # the parent stopped before it had a job to give
            return
        sender.send(("ok", _train_runs(job)))
    except BaseException as error:  # any error, interrupts too, goes to the parent
        sender.send(("error", error))
    finally:
        sender.close()


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished child processes."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _load() -> float:
    """The 1-minute load average (NaN where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


def demo_files(out: Path) -> list[Path]:
    """What a demo writes into ``out`` that is there now: run folders, summary, report."""
    from .demo_report import report_files

    named = [out / run_folder(name) for name in RUNS] + [out / SUMMARY]
    return [path for path in named if path.exists()] + report_files(out)


def earlier_demo(out: Path, overwrite: bool) -> list[Path]:
    """The earlier demo's files in ``out`` that a demo replaces (:func:`demo_files`);
    refuses them without ``overwrite``, and files under those names that no demo wrote (a
    training run in ``out/deformable``) or a run folder a live run trains into always.
    Other files stay. An interrupted demo (one without ``metrics.json``) is not replaced
    but continued with ``resume``. ``out`` passed the demo's ``check_writable``."""
    from ..engine.run_lock import check_not_busy

    earlier = demo_files(out)
    for path in earlier:  # a run folder that a live run trains into (`train --out`)
        if path.is_dir():
            check_not_busy(path)
    if earlier:
        names = ", ".join(sorted(path.name for path in earlier)[:6])
        if not (out / MARKER).exists():
            raise ValueError(f"{out} holds files a demo would replace ({names}) that no demo "
                             "marked as its own (not a demo's, or one of an earlier version); "
                             "remove them or choose another output folder")
        if not overwrite:
            stopped = ("" if (out / SUMMARY).exists()
                       else "continue it, if it was stopped, with --resume; ")
            raise ValueError(f"{out} holds an earlier demo ({names}); {stopped}replace it "
                             "with --overwrite or choose another output folder")
    return earlier


def claim_demo_folder(out: Path, overwrite: bool, state: dict[str, Any]) -> None:
    """Make ``out`` ready for a demo, which marks it as a demo's folder: an earlier demo's
    files are removed (so that none is left beside the new ones), if :func:`earlier_demo`
    allows (none while a run trains in its folder). The marker holds ``state`` (the
    settings and step times) for a resume."""
    earlier = earlier_demo(out, overwrite)
    if earlier:
        print(f"replacing the earlier demo in {out}")
    for path in earlier:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_json(state, out / MARKER)


# Settings that do not change a demo's results: a resume may give other values.
FREE_SETTINGS = frozenset({"progress", "jobs"})


class ChangedSettingsError(ValueError):
    """A resume's settings differ from those the demo in ``out`` was started with
    (``saved``, as its marker holds them)."""

    def __init__(self, message: str, out: Path, saved: dict[str, Any]) -> None:
        super().__init__(message)
        self.out, self.saved = out, saved


def _same_device(state: dict[str, Any], device: str) -> bool:
    """Whether ``device`` resolves to the device the demo of marker ``state`` trained on
    (``auto`` is the saved ``cpu`` where no GPU is)."""
    from ..engine import resolve_device

    saved = state.get("device") or state["settings"]["device"]  # resolved, where saved
    try:
        return resolve_device(device) == resolve_device(saved)
    except ValueError:  # a device this machine lacks
        return False


def resumed_demo(s: DemoSettings, out: Path) -> dict[str, Any]:
    """The state an interrupted demo in ``out`` saved when it claimed the folder (the
    settings, the step times and their ratio); refuses a folder without one and settings
    other than the saved ones (except :data:`FREE_SETTINGS`), and a folder missing what
    the resume needs from its runs (:func:`_check_resumable`)."""
    marker = out / MARKER
    if not out.is_dir() or not marker.is_file():
        raise ValueError(f"{out} holds no demo to resume (no {MARKER} file): start one "
                         "without --resume")
    try:
        state = json.loads(marker.read_text(encoding="utf-8") or "null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        state = None
    if not isinstance(state, dict) or "settings" not in state or "step_ratio" not in state:
        raise ValueError(f"the demo in {out} saved no settings to resume with (an earlier "
                         "version's or a broken marker): start it again with --overwrite")
    now = json.loads(json.dumps(asdict(s)))  # tuples as the saved lists
    saved = state["settings"]
    changed = [f"{key} {saved.get(key)!r} (now {value!r})" for key, value in now.items()
               if key not in FREE_SETTINGS and saved.get(key) != value
               and not (key == "device" and _same_device(state, value))]
    if changed:
        raise ChangedSettingsError(
            f"--resume continues the demo in {out} with its own settings: "
            f"{', '.join(changed)}; give the same options, or start a new demo "
            "(--overwrite or another --out)", out, saved)
    _check_resumable(s, out, state["step_ratio"])
    return state


def _check_resumable(s: DemoSettings, out: Path, ratio: float) -> None:
    """Refuse a resume that would fail only once the other runs had trained: the equal-time
    run, yet to start, continues the plain run from its ``branch.pt`` and learning curve,
    which a plain run past its branch point no longer writes."""
    from ..engine.checkpoint import checkpoint_iteration

    if (not s.equal_time or _equal_time_length(s, ratio) < s.iterations
            or (out / run_folder(RUNS[2]) / "last.pt").is_file()):
        return
    plain = out / run_folder("plain")
    if not (plain / "last.pt").is_file() or checkpoint_iteration(plain / "last.pt") < _branch_at(s):
        return  # the plain run (re)trains through its branch point and writes both
    missing = [name for name in (BRANCH, "metrics.jsonl") if not (plain / name).is_file()]
    if missing:
        raise ValueError(f"{' and '.join(str(plain / name) for name in missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} missing: the equal-time run "
                         "continues the plain run from its branch point; start the demo again "
                         f"with --overwrite, or remove the folder {plain} to have the resume "
                         "retrain the plain run")


def process_layout(device: torch.device, jobs: int, threads: int) -> tuple[int, int]:
    """(processes, torch threads of each) the runs train in, given ``jobs`` and this
    process's ``threads``: on a CPU up to ``min(jobs, 2)`` processes, never more than
    ``threads`` (``--threads 1`` is one process of one thread), sharing the threads; on an
    accelerator one process."""
    workers = 1 if device.type != "cpu" else max(1, min(jobs, 2, threads))
    return workers, max(1, threads // workers)


def check_settings(s: DemoSettings) -> None:
    """Refuse settings the demo could only fail on after training: no deformable layer
    (nothing to compare, no offsets to plot), fewer training scenes than one batch; and
    fail on a missing matplotlib (the vision extra), which only the report needs, and a
    missing torchvision, which the models need once the scenes are rendered."""
    from ..engine import iters_per_epoch

    require("torchvision", "deformconv demo")
    require("matplotlib.figure", "deformconv demo's report")

    if s.deform_layers < 1:
        raise ValueError(f"deform_layers must be at least 1 (the deformable twin needs a "
                         f"deformable layer), got {s.deform_layers}")
    iters_per_epoch(s.train_size, s.batch_size)  # the trainer's own check, before training


def run_demo(s: DemoSettings, out: Path, overwrite: bool = False,
             resume: bool = False) -> dict[str, Any]:
    """Run the demo, writing to folder ``out``; returns what ``metrics.json`` holds. An
    earlier demo in ``out`` is refused, or replaced with ``overwrite``: its files are
    removed only once the settings have passed their checks (at least one deformable
    layer, a training set of at least one batch), the scenes are rendered and the
    training is configured and its steps timed.

    ``resume`` continues a demo in ``out`` that was stopped (Ctrl-C, SIGTERM) with the
    same settings (:func:`resumed_demo`): it keeps the finished runs, resumes the others
    from their ``last.pt`` and uses the step ratio measured then, so the runs end as an
    uninterrupted demo's do, and its report gives the times of an uninterrupted demo
    (each run's CPU seconds and the whole demo's times add up what was spent before the
    stop); a resume of a finished demo returns its summary, changing nothing."""
    from ..engine.checkpoint import check_writable
    from ..engine.run_lock import busy_error

    started, cpu_started, load_start = time.perf_counter(), _cpu_seconds(), _load()
    check_settings(s)
    if resume and overwrite:
        raise ValueError("resume continues the demo in the output folder and overwrite "
                         "replaces it: give one of them")
    check_writable(out / SUMMARY, f"cannot create the demo's folder {out}")
    # held to the end: a second demo into the folder (to replace, resume or rerun this
    # one) is refused while this one runs
    with folder_lock(out, lambda holder: busy_error(holder, out, "running a demo in"),
                     lock_file=DEMO_LOCK, keep_lock_file=False):
        if resume and (out / MARKER).is_file() and (out / SUMMARY).is_file():
            print(f"nothing to resume: the demo in {out} has finished; its report is at "
                  f"{out / 'report.md'}")
            return json.loads((out / SUMMARY).read_text(encoding="utf-8"))
        # refused at once; replaced only once the demo can start
        saved = resumed_demo(s, out) if resume else earlier_demo(out, overwrite)
        if resume:  # the time the demo took before it stopped counts as its own
            started -= saved.get("spent", {}).get("seconds", 0.0)
            cpu_started -= saved.get("spent", {}).get("cpu_seconds", 0.0)
            saved = _mark_running(out, saved)
        with _sigterm_stops():
            return _run_demo(s, out, overwrite, saved if resume else None, started,
                             cpu_started, load_start)


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """Inside, a SIGTERM (a scheduler's) stops the demo as Ctrl-C does, with its time
    recorded, also outside the training (where the trainer's own handler stops a run at
    an iteration boundary): rendering, step timing, the analysis. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_stop(signum: int, frame: object) -> None:
    error = KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")
    error.signum = signum  # type: ignore[attr-defined]  # the command line's exit code
    raise error


def _mark_running(out: Path, saved: dict[str, Any]) -> dict[str, Any]:
    """The marker's state of the demo a resume continues, now marked as running, also in
    the marker: a stop records its time and clears the mark (:func:`_record_spent`), a kill
    leaves it, and ``spent["lost"]`` then says, for this resume and the later ones, that
    the time before a kill went unrecorded (a marker of an earlier version: no ``spent``)."""
    lost = saved.get("running", "spent" not in saved) or _time_lost(saved)
    state = {**saved, "running": True,
             "spent": {"seconds": 0.0, "cpu_seconds": 0.0, **saved.get("spent", {}),
                       "lost": lost}}
    write_json(state, out / MARKER)
    return state


def _time_lost(state: dict[str, Any]) -> bool:
    """Whether the demo of marker ``state`` was killed once without recording its time."""
    return state.get("spent", {}).get("lost", False)


def _record_spent(out: Path, state: dict[str, Any], started: float,
                  cpu_started: float) -> None:
    """Save in the marker of the demo in ``out`` (``state``, as this demo wrote it) that it
    no longer runs and the wall-clock and CPU seconds it took since ``started`` and
    ``cpu_started``, for a resume to count them."""
    write_json({**state, "running": False,
                "spent": {"seconds": time.perf_counter() - started,
                          "cpu_seconds": _cpu_seconds() - cpu_started,
                          "lost": _time_lost(state)}}, out / MARKER)


def _run_demo(s: DemoSettings, out: Path, overwrite: bool, saved: dict[str, Any] | None,
              started: float, cpu_started: float, load_start: float) -> dict[str, Any]:
    """:func:`run_demo` once ``out`` passed its checks: ``saved`` is the marker's state of
    the demo a resume continues (None: a new demo); ``started`` and ``cpu_started`` the
    clocks' readings the demo's times count from."""
    from ..engine import (
        balanced_class_weights,
        build_optimizer,
        label_counts,
        resolve_device,
        write_atomically,
    )
    from .demo_report import analyse, comparison_table, write_report

    device = resolve_device(s.device)
    threads = torch.get_num_threads()
    workers, train_threads = process_layout(device, s.jobs, threads)
    resume = saved is not None
    marker = saved  # the marker's state once it is this demo's
    try:
        with contextlib.ExitStack() as stack:
            # the workers start first: their imports overlap the rendering
            pool = stack.enter_context(_Workers(workers)) if workers > 1 else None
            print(f"rendering {s.train_size} training and {s.val_size} validation scenes")
            data, train_set, val_set, classes = demo_data(s)
            deform_spec, plain_spec = demo_specs(s, classes)
            specs = {"plain": plain_spec, "deformable": deform_spec,
                     "plain, equal time": plain_spec}
            twins = twin_models(deform_spec, plain_spec, s.seed)
            counts = label_counts(train_set.targets,  # type: ignore[attr-defined]
                                  classes + 1)
            weights = balanced_class_weights(counts, s.class_balance)
            names = RUNS if s.equal_time else RUNS[:2]
            if resume:  # the interrupted demo's: the equal-time run's length depends on it
                assert isinstance(saved, dict)
                steps, ratio = saved["step_seconds"], saved["step_ratio"]
                print(f"continuing the demo in {out}")
            else:
                # The step costs at the runs' thread count; also the warm-up: kernel
                # compilation and first calls are not counted as training.
                print("timing the twins' training steps")
                if pool is not None:
                    pool.wait_ready()
                config = _config(s, s.iterations, out, weights)
                with threads_set_to(train_threads):
                    steps = step_seconds(twins, "segmentation", train_set, s.batch_size, device,
                                         lambda net: build_optimizer(net, config))
                ratio = steps["deformable"] / steps["plain"]
                marker = {"settings": asdict(s), "device": str(device),
                          "step_seconds": steps, "step_ratio": ratio, "running": True}
                claim_demo_folder(out, overwrite, marker)
            job = _Job(names, s, specs, weights, ratio, out, {"data": asdict(data)})
            if pool is not None:
                print(f"training the twins side by side: {workers} processes of "
                      f"{train_threads} thread(s)")
                plain_runs = tuple(name for name in names if name != "deformable")
                # the workers map the rendered scenes from a file instead of rendering them
                # again; through a Python file: torch.save to a path fails with no OSError
                # to name it
                scenes = pool.folder / "scenes.pt"
                write_atomically(scenes, lambda f: torch.save({"train": train_set,
                                                               "val": val_set}, f))
                worker = replace(job, threads=train_threads, scenes=scenes)
                results = pool.train([replace(worker, names=plain_runs),
                                      replace(worker, names=("deformable",), line=1)])
            else:
                results = _train_runs(job, (train_set, val_set))
        results = {name: results[name] for name in names}
        models = {name: model_from_checkpoint(specs[name], results[name]["checkpoint"]).to(device)
                  for name in names}

        batch = torch.stack([val_set[i][0] for i in range(min(8, len(val_set)))]).to(device)  # type: ignore[arg-type]
        speed = ms_per_image({k: models[k] for k in RUNS[:2]}, batch)
        for name, result in results.items():
            result.update(name=specs[name].name, deformable=specs[name].deformable,
                          params=parameter_count(models[name]),
                          ms_per_image=speed["deformable" if specs[name].deformable else "plain"])
        summary: dict[str, Any] = {
            "settings": asdict(s), "classes": list(val_set.class_names),  # type: ignore[attr-defined]
            "class_weights": weights, "runs": results,
            "step_seconds": steps, "step_ratio": ratio,
        }
        summary.update(analyse(s, models, val_set, classes, out))
        summary["total_seconds"] = time.perf_counter() - started
        summary["machine"] = {"cpu_seconds": _cpu_seconds() - cpu_started, "jobs": workers,
                              "threads": threads, "train_threads": train_threads,
                              "cpus": os.cpu_count(), "load_start": load_start,
                              "load_end": _load(),
                              "unrecorded_stop": _time_lost(marker)}
        write_json(summary, out / SUMMARY)
        write_report(summary, out)
        with contextlib.suppress(OSError):  # the demo has finished all the same
            _record_spent(out, marker, started, cpu_started)  # no longer running
        print()
        print(comparison_table(summary))
        print(f"\nreport: {out / 'report.md'} ({summary['total_seconds']:.0f} s in all)")
        return summary
    except BaseException:  # stopped or failed (training: the workers are gone, their CPU
        # time counted; or the analysis, its runs finished): a resume counts the time.
        # Unrecorded (a full disk), the marker still says running: the resume says so.
        if marker is not None:
            with contextlib.suppress(OSError):
                _record_spent(out, marker, started, cpu_started)
        raise
