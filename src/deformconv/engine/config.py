"""Training configuration: one dataclass, plain values only (it is saved in checkpoints)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ..conventions import TASKS

__all__ = ["OPTIMIZERS", "SCHEDULES", "TASKS", "TrainConfig"]

SCHEDULES = ("step", "cosine", "onecycle", "wsd")
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig:
    """Everything the train loop needs besides the model and the datasets.

    Training length is counted in iterations (optimizer steps): ``iterations`` when set,
    otherwise ``epochs`` passes over the training set (``drop_last`` batches per epoch).
    """

    task: str = "classification"  # one of TASKS: picks the loss and the evaluation metric
    epochs: int = 1
    iterations: int | None = None  # overrides epochs when set
    batch_size: int = 8  # per process; the global batch is batch_size * world_size
    # "sgd" (momentum) or "adamw" (Loshchilov & Hutter 2019; betas 0.9, 0.999, decoupled
    # weight decay): with "onecycle" it trains small nets from scratch in far fewer steps.
    optimizer: str = "sgd"  # one of OPTIMIZERS
    lr: float = 0.01
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4
    # Offset branches (the offset parameters of deformconv.nn's modules) train at
    # lr * offset_lr_mult: one multiplier for all, replacing each layer's own. None: each
    # layer's own ``offset_lr_mult``, the paper's β (1 for deformable convs, 0.01 for the fc
    # of deformable RoI pooling). 0.1 keeps the zero-initialised offsets from moving fast
    # while the rest of the net is unsettled. A model with a param_groups(base_lr) method
    # sets its own multipliers instead.
    offset_lr_mult: float | None = 0.1
    # Parameter-name prefix -> learning-rate multiplier for the other parameters (first
    # match wins), e.g. {"backbone.": 0.1}: a pretrained backbone fine-tuned at a tenth of
    # the rate of the heads trained from scratch. Empty: every one at lr.
    lr_mults: dict[str, float] = field(default_factory=dict)
    warmup_iters: int = 0  # linear warm-up from warmup_factor * lr to lr
    warmup_factor: float = 1.0 / 3.0  # starting fraction of lr during warm-up (Detectron's 1/3)
    # "step": times gamma at each milestone; "cosine": to min_lr_ratio over the whole run
    # (warm-up on top); "onecycle": warm-up, then cosine to min_lr_ratio over the rest;
    # "wsd": warm-up, hold lr, then linear to min_lr_ratio over the last decay_share of the
    # run (warmup-stable-decay): runs of different lengths share the schedule until the
    # shorter one's decay, so a longer run can branch off a shorter one's checkpoint
    schedule: str = "step"  # one of SCHEDULES
    decay_share: float = 0.2  # "wsd": the share of the run spent decaying
    # iterations where "step" multiplies lr by gamma, strictly increasing
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    # Cross-entropy weight per class (classification, segmentation), e.g. from
    # engine.balanced_class_weights; None = unweighted
    class_weights: list[float] | None = None
    grad_clip_norm: float | None = None  # max global L2 norm of the gradients; None = no clip
    bf16: bool = False  # torch.autocast(dtype=bfloat16) for forward passes
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    checkpoint_every: int = 0  # iterations between checkpoints (0 = only at the end)
    eval_every: int = 0  # iterations between evaluations on the val set (0 = only at the end)
    keep_best: bool = True  # also keep best.pt, the checkpoint with the best val metric
    resume: str | None = None  # a checkpoint path, or "auto" for <out_dir>/last.pt if present
    out_dir: str = "runs/train"
    log_every: int = 10  # iterations between metrics.jsonl lines
    tensorboard: bool = False  # also log to <out_dir>/tensorboard when tensorboard is installed
    progress: bool = True  # tqdm progress bar on rank 0
    # The bar's label and line: runs trained side by side in several processes each keep
    # their own line of the terminal.
    progress_label: str = "train"
    progress_line: int = 0
    num_workers: int = 0
    device: str = "auto"  # "auto" = cuda when available, else cpu; or any torch device string
    eval_batch_size: int | None = None  # defaults to batch_size

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field, its value and what it must be."""
        hints = typing.get_type_hints(type(self))
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if not is_of_type(value, hints[spec.name]):
                raise ValueError(f"{spec.name} must be {describe_type(hints[spec.name])}, got "
                                 f"{value!r} ({type(value).__name__})")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}
        if self.iterations is not None:
            positive["iterations"] = self.iterations
        if self.eval_batch_size is not None:
            positive["eval_batch_size"] = self.eval_batch_size
        if self.grad_clip_norm is not None:
            positive["grad_clip_norm"] = self.grad_clip_norm
        for name, value in positive.items():  # types are checked above: no bools here
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be finite and > 0, got {value!r}")
        non_negative = {
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "warmup_iters": self.warmup_iters,
            "gamma": self.gamma,
            "min_lr_ratio": self.min_lr_ratio,
            "checkpoint_every": self.checkpoint_every,
            "eval_every": self.eval_every,
            "num_workers": self.num_workers,
            "progress_line": self.progress_line,
        }
        if self.offset_lr_mult is not None:
            non_negative["offset_lr_mult"] = self.offset_lr_mult
        for name, value in non_negative.items():
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if any(not (m >= 0 and math.isfinite(m)) for m in self.lr_mults.values()):
            raise ValueError(f"lr_mults must map parameter-name prefixes to finite multipliers "
                             f">= 0, got {self.lr_mults!r}")
        if self.class_weights is not None and (
            not self.class_weights
            or any(not (w >= 0 and math.isfinite(w)) for w in self.class_weights)
        ):
            raise ValueError(f"class_weights must be a non-empty list of finite weights >= 0, "
                             f"got {self.class_weights!r}")
        if not self.momentum < 1:  # 1 and above: the velocity never decays, SGD diverges
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every!r}")
        if not 0 < self.warmup_factor <= 1:
            raise ValueError(f"warmup_factor must be in (0, 1], got {self.warmup_factor!r}")
        if not self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if not 0 < self.decay_share <= 1:
            raise ValueError(f"decay_share must be in (0, 1], got {self.decay_share!r}")
        if any(m <= 0 for m in self.milestones) or any(
            later <= earlier for earlier, later in itertools.pairwise(self.milestones)
        ):  # a repeated milestone would multiply lr by gamma twice there
            raise ValueError(f"milestones must be positive and strictly increasing, got "
                             f"{list(self.milestones)!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields (JSON- and ``torch.load(weights_only=True)``-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a ``dict``; unknown keys raise ``ValueError`` listing the valid ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**values)


def is_of_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a field's type: an int is a float, a bool is neither."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(is_of_type(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, (list, tuple)) and all(is_of_type(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            is_of_type(k, args[0]) and is_of_type(v, args[1]) for k, v in value.items())
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def describe_type(hint: Any) -> str:
    """A field type in words: "an int or None", "a list of numbers"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(describe_type(arg) for arg in args)
    if origin is list:
        return f"a list of {describe_type(args[0]).split(' ', 1)[1]}s"
    if origin is dict:
        return f"a dict of {describe_type(args[0]).split(' ', 1)[1]} -> {describe_type(args[1])}"
    words = {type(None): "None", float: "a number", int: "an int", bool: "true or false",
             str: "a string", dict: "a dict", list: "a list"}
    return words.get(hint, getattr(hint, "__name__", str(hint)))
