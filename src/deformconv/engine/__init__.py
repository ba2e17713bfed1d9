"""Training and evaluation engine: config, train loop, checkpoints, metrics, distributed runs.

Typical use::

    from deformconv.engine import TrainConfig, evaluate, train

    config = TrainConfig(task="classification", iterations=200, batch_size=16, lr=0.05,
                         warmup_iters=20, schedule="cosine", checkpoint_every=50,
                         out_dir="runs/cls")
    result = train(config, model, train_set, val_set)   # writes last.pt, best.pt, metrics.jsonl
    print(result.metrics["top1"])

Under ``torchrun --nproc_per_node N`` the same call trains with DistributedDataParallel.
"""

from .balance import balanced_class_weights, label_counts
from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    write_atomically,
)
from .coco import COCO_METRICS, coco_map, detection_record
from .config import OPTIMIZERS, SCHEDULES, TASKS, TrainConfig
from .distributed import DistInfo, cleanup_distributed, init_distributed, resolve_device
from .evaluate import evaluate
from .loader import ShardSampler, TrainSampler, eval_loader, iters_per_epoch, train_loader
from .metrics import IGNORE_INDEX, confusion_matrix, iou_from_confusion, top1_correct
from .metrics_log import MetricsLogger, read_metrics
from .optim import build_optimizer, build_scheduler, decay_start, lr_factor, param_groups
from .run_lock import RunInProgressError
from .seeding import SeededSamples, get_rng_state, seed_everything, set_rng_state, worker_init_fn
from .stop import TrainingStopped
from .tasks import PRIMARY_METRIC, collate_fn, compute_loss, make_evaluator
from .trainer import RefusedByMainProcess, TrainResult, train

__all__ = [
    "COCO_METRICS",
    "IGNORE_INDEX",
    "OPTIMIZERS",
    "PRIMARY_METRIC",
    "SCHEDULES",
    "TASKS",
    "CheckpointError",
    "DistInfo",
    "MetricsLogger",
    "RefusedByMainProcess",
    "RunInProgressError",
    "SeededSamples",
    "ShardSampler",
    "TrainConfig",
    "TrainResult",
    "TrainSampler",
    "TrainingStopped",
    "balanced_class_weights",
    "build_optimizer",
    "build_scheduler",
    "cleanup_distributed",
    "coco_map",
    "collate_fn",
    "compute_loss",
    "confusion_matrix",
    "decay_start",
    "detection_record",
    "eval_loader",
    "evaluate",
    "get_rng_state",
    "init_distributed",
    "iou_from_confusion",
    "iters_per_epoch",
    "label_counts",
    "load_checkpoint",
    "load_weights",
    "lr_factor",
    "make_evaluator",
    "param_groups",
    "read_metrics",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "top1_correct",
    "train",
    "train_loader",
    "worker_init_fn",
    "write_atomically",
]
