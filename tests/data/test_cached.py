"""InMemory: the source's samples once, transforms on every access, source attributes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deformconv.data import (
    InMemory,
    SyntheticClassification,
    SyntheticDetection,
    SyntheticSegmentation,
)
from deformconv.data import transforms as T


def test_samples_equal_the_source_and_attributes_pass_through() -> None:
    source = SyntheticSegmentation(length=5, seed=3, image_size=32)
    cached = InMemory(source)
    assert len(cached) == 5 and cached.num_classes == source.num_classes
    for i in range(5):
        image, mask = cached[i]
        assert torch.equal(image, source[i][0]) and torch.equal(mask, source[i][1])
    assert cached.scene(2).masks.shape[1:] == (32, 32)
    with pytest.raises(AttributeError):
        cached.no_such_attribute  # noqa: B018


def test_indices_are_a_sequences() -> None:
    cached = InMemory(SyntheticClassification(length=3, seed=1, image_size=32))
    assert torch.equal(cached[np.int64(-1)][0], cached[2][0])
    with pytest.raises(TypeError, match=r"dataset indices must be integers, got float 1\.7"):
        cached[1.7]
    with pytest.raises(IndexError, match="index 3 out of range for a dataset of 3"):
        cached[3]


def test_labels_come_back_as_ints_and_transforms_apply_each_time() -> None:
    source = SyntheticClassification(length=3, seed=1, image_size=32)
    cached = InMemory(source, T.RandomRot90())
    torch.manual_seed(0)
    images = [cached[0][0] for _ in range(12)]
    assert all(isinstance(cached[i][1], int) and cached[i][1] == source[i][1] for i in range(3))
    assert len({im.flatten()[:64].sum().item() for im in images}) > 1  # turned differently
    assert all(any(torch.equal(im, source[0][0].rot90(k, (-2, -1))) for k in range(4))
               for im in images)


def test_images_of_different_sizes_are_refused() -> None:
    samples = [(torch.zeros(3, 8, 8), 0), (torch.zeros(3, 9, 8), 1)]
    with pytest.raises(ValueError, match="images of one size"):
        InMemory(samples)  # type: ignore[arg-type]


def test_detection_targets_are_kept_as_dicts_and_turn_with_the_image() -> None:
    source = SyntheticDetection(length=4, seed=2, image_size=32)
    cached = InMemory(source, T.RandomRot90())
    torch.manual_seed(1)
    for i in range(4):
        image, target = cached[i]
        k = next(k for k in range(4) if torch.equal(image, source[i][0].rot90(k, (-2, -1))))
        torch.testing.assert_close(target["boxes"], T.rot90(*source[i], k)[1]["boxes"])
        assert torch.equal(target["labels"], source[i][1]["labels"])
