"""Tiny stand-in datasets and models for the engine tests, and a script entry point.

The datasets draw augmentation noise from the global torch RNG and the classifier uses
dropout, so exact resumption really depends on the engine restoring/seeding RNGs.

Run as a script (used by the subprocess tests)::

    python _engine_toys.py OUT_DIR ITERATIONS [--resume] [--batch-size B] [--dropout P]
                           [--device D] [--eval-extra] [--nan-loss-at ITERATION:RANK]

trains TinyClassifier (checkpoint every 3 iterations), then each rank saves its final
weights to OUT_DIR/rank<r>.pt (and, with --eval-extra, metrics to eval_rank<r>.json).
Works under ``torchrun --nproc_per_node N`` as well. ``--nan-loss-at`` makes the training
loss of that (0-based) iteration NaN in the process of that torchrun rank only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from deformconv.nn import OffsetBranchMixin


class ToyClassification(Dataset):
    """Images (3, 8, 8) whose class is the brightest channel, plus random noise per access."""

    def __init__(self, size: int = 32, num_classes: int = 3, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(num_classes, (size,), generator=g)
        self.base = torch.rand(size, 3, 8, 8, generator=g) * 0.5
        self.base[torch.arange(size), self.labels] += 0.5

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        noise = 0.05 * torch.randn(3, 8, 8)  # global RNG: exercises per-sample seeding
        return self.base[index] + noise, self.labels[index]


class ToySegmentation(Dataset):
    """Masks where class = brightest channel per pixel; a border of 255 (ignored) pixels."""

    def __init__(self, size: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(size, 3, 8, 8, generator=g)
        self.masks = self.images.argmax(1)
        self.masks[:, 0, :] = 255

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.masks[index]


class ToyDetection(Dataset):
    """One bright square per 16x16 image; label 1 or 2 by which channel is lit."""

    def __init__(self, size: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(size):
            x, y = (int(v) for v in torch.randint(0, 8, (2,), generator=g))
            label = int(torch.randint(1, 3, (1,), generator=g))
            image = torch.zeros(3, 16, 16)
            image[label, y:y + 8, x:x + 8] = 1.0
            target = {"boxes": torch.tensor([[x, y, x + 8, y + 8]], dtype=torch.float32),
                      "labels": torch.tensor([label])}
            self.items.append((image, target))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.items[index]


class _OffsetBranch(nn.Module, OffsetBranchMixin):
    """A 1x1 conv that counts as an offset branch (its own lr multiplier ``offset_lr_mult``)."""

    def __init__(self, channels: int, offset_lr_mult: float) -> None:
        super().__init__()
        self.offset_branch = nn.Conv2d(channels, channels, 1)
        self.offset_lr_mult = offset_lr_mult

    def forward(self, x: Tensor) -> Tensor:
        return self.offset_branch(x)


class TinyClassifier(nn.Module):
    """conv -> (offset branch, added) -> dropout -> pooled linear head."""

    def __init__(self, num_classes: int = 3, offset_lr_mult: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.offset_conv = _OffsetBranch(4, offset_lr_mult)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv(x))
        x = x + self.offset_conv(x)
        return self.head(self.drop(x.mean((2, 3))))


class TinySegmenter(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class TinyDetector(nn.Module):
    """Torchvision-style detector predicting one box per image from a heat map.

    Train mode: ``model(images, targets) -> {"loss_box", "loss_cls"}``; eval mode:
    ``model(images) -> [{"boxes", "labels", "scores"}]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.box = nn.Linear(3 * 16 * 16, 4)
        self.cls = nn.Linear(3 * 16 * 16, 3)

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        x = torch.stack(images).flatten(1)
        boxes, logits = self.box(x) * 16, self.cls(x)
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in train mode")
            gt_boxes = torch.stack([t["boxes"][0] for t in targets])
            gt_labels = torch.stack([t["labels"][0] for t in targets])
            return {"loss_box": F.smooth_l1_loss(boxes, gt_boxes) / 16,
                    "loss_cls": F.cross_entropy(logits, gt_labels)}
        scores, labels = logits.softmax(1)[:, 1:].max(1)
        return [{"boxes": b[None], "labels": (lab + 1)[None], "scores": s[None]}
                for b, lab, s in zip(boxes, labels, scores, strict=True)]


def state_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


@contextlib.contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """Writes beyond ``size`` bytes of any file fail with EFBIG while inside, as on a full
    disk (Python ignores SIGXFSZ, so the write raises ``OSError``)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _nan_loss_at(iteration: int) -> None:
    """Make the trainer's loss of its ``iteration``-th step (0-based) NaN in this process."""
    from deformconv.engine import trainer

    compute_loss, calls = trainer.compute_loss, []

    def nan_once(*args, **kwargs):
        loss, parts = compute_loss(*args, **kwargs)
        calls.append(None)
        return (loss * float("nan") if len(calls) == iteration + 1 else loss), parts

    trainer.compute_loss = nan_once


def main(argv: list[str] | None = None) -> None:
    from deformconv.engine import (
        TrainConfig,
        cleanup_distributed,
        evaluate,
        init_distributed,
        train,
    )

    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("iterations", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--eval-extra", action="store_true",
                        help="also evaluate a seeded segmenter and detector (eval_rank<r>.json)")
    parser.add_argument("--nan-loss-at", metavar="ITERATION:RANK")
    args = parser.parse_args(argv)
    if args.nan_loss_at is not None:
        iteration, rank = (int(v) for v in args.nan_loss_at.split(":"))
        if rank == int(os.environ.get("RANK", "0")):
            _nan_loss_at(iteration)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyClassifier()
    model.drop.p = args.dropout
    config = TrainConfig(task="classification", iterations=args.iterations,
                         batch_size=args.batch_size, lr=0.1, warmup_iters=2, schedule="cosine",
                         checkpoint_every=3, out_dir=args.out_dir, progress=False,
                         resume="auto" if args.resume else None, log_every=1,
                         device=args.device)
    info = init_distributed(args.device)  # joined here, so train() leaves the group to us
    train(config, model, ToyClassification(size=20), ToyClassification(size=7, seed=5))
    torch.save(model.state_dict(), os.path.join(args.out_dir, f"rank{info.rank}.pt"))
    if args.eval_extra:
        torch.manual_seed(1)
        segmenter, detector = TinySegmenter(), TinyDetector()
        kw = {"batch_size": 2, "dist_info": info}
        result = {
            "segmentation": evaluate(segmenter, ToySegmentation(size=5), "segmentation", **kw),
            "detection": evaluate(detector, ToyDetection(size=5), "detection", **kw),
        }
        with open(os.path.join(args.out_dir, f"eval_rank{info.rank}.json"), "w") as f:
            json.dump(result, f)
    cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
