"""SGD or AdamW with a reduced learning rate for offset branches, and the learning-rate
schedules: warm-up + step decay, cosine, one-cycle (warm-up, then cosine annealing), or
warmup-stable-decay."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..nn import offset_lr_multipliers
from .config import TrainConfig
from .distributed import unwrap_parallel

__all__ = ["build_optimizer", "build_scheduler", "decay_start", "lr_factor", "param_groups"]


def param_groups(model: nn.Module, lr: float, offset_lr_mult: float | None,
                 lr_mults: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Optimizer groups: the offset branches' parameters get ``lr * offset_lr_mult`` (None:
    ``lr`` times their layer's own ``offset_lr_mult``, see
    :func:`deformconv.nn.offset_lr_multipliers`); the others ``lr`` times the multiplier of
    the first ``lr_mults`` key their name starts with (e.g. ``{"backbone.": 0.1}``
    fine-tunes a pretrained backbone at a tenth of the rate of new heads), else ``lr``.

    A model (``DistributedDataParallel`` unwrapped) that defines ``param_groups(base_lr)``
    decides its own groups instead. Frozen parameters are left out. Each group carries
    ``"lr_mult"``; the scheduler scales every group's initial ``lr``, so ratios are kept.
    """
    model = unwrap_parallel(model)
    custom = getattr(model, "param_groups", None)
    if callable(custom):
        groups = list(custom(lr))
        if not groups or not all(isinstance(g, dict) and "params" in g for g in groups):
            raise TypeError(
                f"{type(model).__name__}.param_groups(base_lr) must return a non-empty list of "
                "dicts with a 'params' key"
            )
        return groups
    offsets = offset_lr_multipliers(model, offset_lr_mult)
    names = [name for name, _ in model.named_parameters()]
    unmatched = [p for p in (lr_mults or {}) if not any(n.startswith(p) for n in names)]
    if unmatched:
        raise ValueError(f"lr_mults prefixes {unmatched} match no parameter of "
                         f"{type(model).__name__} (its names begin like {names[:3]})")
    # (is an offset, multiplier) -> parameters; offsets last, each kind in first-seen order
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name in offsets:
            key = (True, offsets[name])
        else:
            key = (False, next((m for prefix, m in (lr_mults or {}).items()
                                if name.startswith(prefix)), 1.0))
        groups.setdefault(key, []).append(param)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return [{"params": groups[key], "lr": lr * key[1], "lr_mult": key[1]}
            for key in sorted(groups, key=lambda k: k[0])]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """``config.optimizer`` over :func:`param_groups`: SGD with ``momentum`` and
    ``weight_decay``, or AdamW with decoupled ``weight_decay``."""
    groups = param_groups(model, config.lr, config.offset_lr_mult, config.lr_mults)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def lr_factor(iteration: int, config: TrainConfig, total_iters: int) -> float:
    """Multiplier of the base lr for the update made at ``iteration`` (0-based).

    Warm-up ramps linearly from ``warmup_factor`` to 1 over ``warmup_iters``; "step"
    multiplies by ``gamma`` at each milestone passed; "cosine" decays from 1 to
    ``min_lr_ratio`` over ``total_iters`` (lr_t = floor + (1 - floor)(1 + cos(pi t / T)) / 2);
    "onecycle" holds 1 during the warm-up and then decays like "cosine" over the remaining
    ``total_iters - warmup_iters`` (the one-cycle policy of Smith & Topin, 2019,
    https://arxiv.org/abs/1708.07120, without its momentum cycle); "wsd" holds 1 and then
    decays linearly to ``min_lr_ratio`` over the last ``decay_share`` of ``total_iters``
    (warmup-stable-decay, which matches cosine at any length: Hägele et al., 2024,
    https://arxiv.org/abs/2405.18392). Before its decay, "wsd" does not depend on
    ``total_iters``. The decays of "cosine", "onecycle" and "wsd" reach ``min_lr_ratio`` at
    iteration ``total_iters``, after the run: its last update is made one decay step above
    it (a decay over D iterations to 0 ends with 1/D), as ``torch.optim.lr_scheduler``'s
    schedules do, so that no update is spent at the floor.
    """
    if config.schedule == "step":
        factor = config.gamma ** bisect.bisect_right(config.milestones, iteration)
    elif config.schedule == "wsd":
        start = decay_start(total_iters, config.decay_share)
        progress = min(max(iteration - start, 0) / max(1, total_iters - start), 1.0)
        factor = 1.0 - (1.0 - config.min_lr_ratio) * progress
    else:
        start = config.warmup_iters if config.schedule == "onecycle" else 0
        progress = min(max(iteration - start, 0) / max(1, total_iters - start), 1.0)
        floor = config.min_lr_ratio
        factor = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if iteration < config.warmup_iters:
        alpha = iteration / config.warmup_iters
        factor *= config.warmup_factor * (1.0 - alpha) + alpha
    return factor


def decay_start(total_iters: int, decay_share: float) -> int:
    """The iteration where the "wsd" schedule starts decaying in a run of ``total_iters``
    (never earlier in a longer run)."""
    return total_iters - max(1, round(decay_share * total_iters))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_iters: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration ``LambdaLR`` following :func:`lr_factor`; ``step()`` after each update."""
    fn: Callable[[int], float] = lambda it: lr_factor(it, config, total_iters)  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
