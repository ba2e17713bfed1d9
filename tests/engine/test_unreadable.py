"""Evaluation over a dataset with unreadable images: each readable one counted once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Subset

from deformconv.data import (
    CocoDetection,
    InMemory,
    NoReadableSamplesError,
    export_coco,
    synthetic_dataset,
)
from deformconv.engine import evaluate


class _OneBoxDetector(nn.Module):
    """Eval-mode detector output: the same box for every image."""

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1]),
                 "scores": torch.tensor([0.9])} for _ in images]


def _coco_folder(tmp_path: Path, corrupt: list[int]) -> CocoDetection:
    export_coco(synthetic_dataset("detection", 4, seed=2, image_size=32), tmp_path)
    files = sorted((tmp_path / "images").iterdir())
    for index in corrupt:
        files[index].write_bytes(b"not an image")
    return CocoDetection(tmp_path, tmp_path / "annotations.json")


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_eval_counts_only_readable_images(tmp_path: Path, batch_size: int) -> None:
    """The dataset substitutes the next image for an unreadable one (training); evaluation
    leaves it out instead of counting the substitute twice."""
    dataset = _coco_folder(tmp_path, corrupt=[1])
    with pytest.warns(RuntimeWarning, match="skipping sample 1: cannot decode image"):
        metrics = evaluate(_OneBoxDetector(), dataset, "detection", batch_size=batch_size)
    assert metrics["num_images"] == 3
    assert dataset.skipped == {"corrupt_image": 1}


def test_eval_with_workers_counts_only_readable_images(tmp_path: Path) -> None:
    dataset = _coco_folder(tmp_path, corrupt=[0, 3])
    metrics = evaluate(_OneBoxDetector(), dataset, "detection", batch_size=2, num_workers=2)
    assert metrics["num_images"] == 2


def test_eval_of_unreadable_images_only_is_an_error(tmp_path: Path) -> None:
    dataset = _coco_folder(tmp_path, corrupt=[0, 1, 2, 3])
    with pytest.warns(RuntimeWarning), pytest.raises(
            NoReadableSamplesError, match=r"none of the 4 samples of CocoDetection\(.*"
                                          r"skipped=\{'corrupt_image': 4\}\) could be read"):
        evaluate(_OneBoxDetector(), dataset, "detection", batch_size=2)


@pytest.mark.filterwarnings("ignore:skipping sample:RuntimeWarning")
@pytest.mark.parametrize("wrap", ["subset", "concat", "in_memory"])
def test_wrapped_datasets_count_only_readable_images(tmp_path: Path, wrap: str) -> None:
    """Through Subset, ConcatDataset and InMemory too: a Subset or ConcatDataset used to
    count the substitute of an unreadable image, and evaluating an InMemory read the source's
    files again instead of its own samples."""
    dataset = _coco_folder(tmp_path, corrupt=[1])
    wrapped = {"subset": lambda: Subset(dataset, [3, 1, 2]),
               "concat": lambda: ConcatDataset([dataset, Subset(dataset, [1, 0])]),
               "in_memory": lambda: InMemory(dataset)}[wrap]()
    expected = {"subset": 2, "concat": 4, "in_memory": 3}[wrap]
    metrics = evaluate(_OneBoxDetector(), wrapped, "detection", batch_size=2)
    assert metrics["num_images"] == expected
    if wrap == "in_memory":
        files = (tmp_path / "images").iterdir()
        for file in files:  # its samples are in memory: the files are not read again
            file.unlink()
        assert evaluate(_OneBoxDetector(), wrapped, "detection")["num_images"] == 3
        assert len(wrapped) == 4 and wrapped.load_or_skip(1) is None
        assert torch.equal(wrapped[1][0], wrapped[2][0])  # the next readable, as the source
        assert wrapped.skipped == dataset.skipped == {"corrupt_image": 1}  # the source's
