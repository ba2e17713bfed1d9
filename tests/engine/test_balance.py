"""Class-balanced weights and the weighted cross-entropy they feed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _engine_toys import TinySegmenter

from deformconv.engine import (
    TrainConfig,
    balanced_class_weights,
    compute_loss,
    label_counts,
)


def test_label_counts_skip_ignored_and_refuse_out_of_range():
    masks = torch.tensor([[0, 0, 2], [255, 1, 0]])
    assert label_counts(masks, 3).tolist() == [3, 1, 1]
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        label_counts(masks, 2)


def test_weights_follow_inverse_frequency_and_keep_the_mean_sample_weight():
    counts = torch.tensor([80, 16, 4])
    full = balanced_class_weights(counts, power=1.0)
    freq = counts.double() / counts.sum()
    assert full[0] * 80 == pytest.approx(full[1] * 16) == pytest.approx(full[2] * 4)
    soft = balanced_class_weights(counts, power=0.5)
    assert soft[1] / soft[0] == pytest.approx(5 ** 0.5)
    for weights in (full, soft):
        assert float((freq * torch.tensor(weights)).sum()) == pytest.approx(1.0)
    assert balanced_class_weights(counts, power=0.0) == pytest.approx([1.0, 1.0, 1.0])
    assert balanced_class_weights(torch.tensor([10, 0, 30]))[1] == pytest.approx(
        max(balanced_class_weights(torch.tensor([10, 30]))))


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="all zero"):
        balanced_class_weights(torch.zeros(3))
    with pytest.raises(ValueError, match="class_weights must be a non-empty list"):
        TrainConfig(class_weights=[1.0, -1.0])


def test_compute_loss_weights_the_segmentation_cross_entropy():
    torch.manual_seed(0)
    model = TinySegmenter()
    images, masks = torch.rand(2, 3, 8, 8), torch.randint(3, (2, 8, 8))
    weights = torch.tensor([0.5, 1.0, 2.0])
    loss, _ = compute_loss("segmentation", model, images, masks, weights)
    expected = F.cross_entropy(model(images), masks, weight=weights)
    assert loss.item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="one weight per class of the model's 3 outputs"):
        compute_loss("segmentation", model, images, masks, torch.ones(2))


def test_masks_of_a_narrow_integer_type_are_taken_as_labels():
    """uint8 masks, 255 ignored (as PIL gives them), failed inside cross_entropy."""
    torch.manual_seed(0)
    model = TinySegmenter()
    images, masks = torch.rand(2, 3, 8, 8), torch.randint(3, (2, 8, 8))
    masks[:, 0] = 255
    expected, _ = compute_loss("segmentation", model, images, masks)
    got, _ = compute_loss("segmentation", model, images, masks.to(torch.uint8))
    assert got.item() == expected.item()


def test_the_trainer_passes_the_config_weights_on(tmp_path):
    from _engine_toys import ToySegmentation

    from deformconv.engine import read_metrics, train

    losses = {}
    for weights in ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]):  # all weights 0: nothing to learn
        config = TrainConfig(task="segmentation", iterations=2, batch_size=4, progress=False,
                             class_weights=weights, out_dir=str(tmp_path / str(weights[0])))
        train(config, TinySegmenter(), ToySegmentation(size=8))
        records = read_metrics(tmp_path / str(weights[0]) / "metrics.jsonl")
        losses[weights[0]] = [r["loss"] for r in records if r["split"] == "train"]
    assert losses[1.0] and all(loss > 0 for loss in losses[1.0]) and losses[0.0] == [0.0]
