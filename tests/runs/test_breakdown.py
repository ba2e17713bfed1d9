"""runs.breakdown: per-image mIoU, object recall and its scale buckets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deformconv.data import InMemory, SyntheticSegmentation
from deformconv.runs import (
    image_mious,
    object_recalls,
    predict_masks,
    recall_by_scale,
    scale_edges,
)


class Oracle(nn.Module):
    """Logits that pick each pixel's true class (the mask is smuggled in channel 0)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes
        self.anchor = nn.Parameter(torch.zeros(()))  # a device to follow

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        labels = images[:, 0].round().long().clamp(0, self.classes - 1)
        return nn.functional.one_hot(labels, self.classes).permute(0, 3, 1, 2).float()


def _scenes() -> InMemory:
    return InMemory(SyntheticSegmentation(length=6, seed=4, image_size=32, max_objects=3))


def test_a_perfect_prediction_scores_one_everywhere():
    data = _scenes()
    masks = data.targets
    assert image_mious(masks, masks, data.num_classes + 1) == [1.0] * 6
    rows = object_recalls(masks, data)
    assert rows and all(r["recall"] == 1.0 for r in rows)
    scenes = [data.scene(i) for i in range(6)]
    assert len(rows) == sum(int((s.masks.sum((1, 2)) > 0).sum()) for s in scenes)
    assert {r["image"] for r in rows} <= set(range(6))


def test_background_everywhere_recalls_nothing_and_halves_a_two_class_miou():
    data = _scenes()
    empty = torch.zeros_like(data.targets)
    assert all(r["recall"] == 0.0 for r in object_recalls(empty, data))
    one_class = [i for i in range(6) if len(set(data.targets[i].unique().tolist())) == 2]
    assert one_class
    classes = data.num_classes + 1
    for i in one_class:  # background IoU = background share, object IoU 0
        background = float((data.targets[i] == 0).float().mean())
        miou = image_mious(empty[i:i + 1], data.targets[i:i + 1], classes)[0]
        assert miou == pytest.approx(background / 2)


def test_predict_masks_batches_and_restores_the_mode():
    images = torch.stack([torch.full((3, 4, 4), float(k)) for k in range(5)])
    data = [(image, torch.zeros(4, 4, dtype=torch.long)) for image in images]
    model = Oracle(3).train()
    out = predict_masks(model, data, indices=[4, 0, 2], batch_size=2)  # type: ignore[arg-type]
    assert out.tolist() == torch.tensor([2, 0, 2]).view(3, 1, 1).expand(3, 4, 4).tolist()
    assert model.training


def test_scale_buckets():
    edges = scale_edges(8.0, 64.0, buckets=3)
    assert edges == pytest.approx([8.0, 16.0, 32.0, 64.0])
    rows = [{"scale": 4.0, "recall": 1.0}, {"scale": 20.0, "recall": 0.5},
            {"scale": 30.0, "recall": 0.0}, {"scale": 99.0, "recall": 1.0}]
    buckets = recall_by_scale(rows, edges)
    assert [b["objects"] for b in buckets] == [1, 2, 1]
    assert [b["recall"] for b in buckets] == [1.0, 0.25, 1.0]
    assert math.isnan(recall_by_scale(rows[:1], edges)[1]["recall"])
    with pytest.raises(ValueError, match="increasing"):
        recall_by_scale(rows, [8.0, 4.0])
    with pytest.raises(ValueError, match="0 < low < high"):
        scale_edges(8.0, 8.0)


def test_object_recalls_need_scenes():
    with pytest.raises(ValueError, match="synthetic scenes only"):
        object_recalls(torch.zeros(1, 4, 4), [(torch.zeros(3, 4, 4), 0)])  # type: ignore[arg-type]
