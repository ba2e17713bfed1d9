"""offset_report: one call from a model and a batch to PNGs and markdown tables."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from deformconv.nn import DeformConv2d, DeformRoIPool
from deformconv.viz import offset_report

from .helpers import Stack, randomize_offsets


class TinyDetector(nn.Module):
    """A deformable conv, then deformable RoI pooling of two fixed RoIs per image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = DeformConv2d(3, 4, 3, padding=1, stride=2)
        self.pool = DeformRoIPool(4, 3, spatial_scale=0.5, sampling_ratio=2)
        with torch.no_grad():
            self.pool.offset_fc[-1].weight.normal_(0, 0.1)

    def forward(self, images: Tensor) -> Tensor:
        boxes = torch.tensor([[2.0, 2.0, 12.0, 10.0], [4.0, 6.0, 15.0, 15.0]])
        return self.pool(self.conv(images), [boxes] * images.shape[0])


class ListInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = Stack()

    def forward(self, images: list[Tensor]) -> Tensor:
        return self.body(torch.stack(images))


def valid_png(path) -> bool:
    with Image.open(path) as image:
        image.verify()
        return image.format == "PNG" and path.stat().st_size > 0


def test_report_with_boxes_writes_figures_and_tables(tmp_path):
    model = Stack()
    randomize_offsets(model)
    boxes = [torch.tensor([[0.0, 0.0, 6.0, 6.0], [4.0, 2.0, 16.0, 14.0]]), torch.zeros(0, 4),
             torch.tensor([[1.0, 1.0, 3.0, 3.0]])]
    report = offset_report(model, torch.rand(3, 3, 16, 16), tmp_path / "out", boxes=boxes,
                           max_figures=2, stack_depth=5, thresholds=(10.0, 100.0))
    assert [p.name for p in report.figures] == ["sampling_0.png", "sampling_1.png"]
    assert all(valid_png(p) for p in report.figures)
    assert [row["layer"] for row in report.offset_rows] == ["block.0", "block.2"]
    counts = {(r["layer"], r["bucket"]): r["count"] for r in report.dilation_rows}
    # block.2: 8x8 cells over 16x16 images, centres at 1, 3, ..., 15 (pixel edges).
    # image 0: [0, 0, 6, 6] (area 36, medium) holds 3x3 centres; [4, 2, 16, 14] (area 144,
    # large) 6x6, 2 of them inside the smaller box; image 2: [1, 1, 3, 3] (area 4) 1 cell.
    assert counts[("block.2", "small")] == 1
    assert counts[("block.2", "medium")] == 9
    assert counts[("block.2", "large")] == 36 - 2
    assert counts[("block.2", "background")] == 3 * 64 - 44
    assert sum(c for (layer, _), c in counts.items() if layer == "block.2") == 3 * 64
    text = report.markdown()
    assert "## Effective dilation by object size" in text and "| block.2 |" in text
    assert "![sampling_1](sampling_1.png)" in text


def test_report_draws_roi_offsets(tmp_path):
    report = offset_report(TinyDetector(), torch.rand(2, 3, 16, 16), tmp_path, prefix="dcn_")
    names = sorted(p.name for p in report.figures)
    assert names == ["dcn_roi_offsets_0.png", "dcn_roi_offsets_1.png", "dcn_sampling_0.png",
                     "dcn_sampling_1.png"]
    assert all(valid_png(p) for p in report.figures)
    assert report.dilation_rows == [] and "Effective dilation" not in report.markdown()


def test_class_specific_roi_offsets_draw_an_object_class():
    """R-FCN's score-map pooling has offsets per class: the figure used to draw class 0's,
    the background's, without saying so."""
    from deformconv.viz.report import _offset_class

    offset = torch.zeros(2, 2 * 3, 3, 3)
    offset[:, 0:2] = 5.0  # background: moves most, but is not an object class
    offset[:, 4:6] = 0.5  # class 2
    offset[0, 2:4] = 0.1  # class 1
    assert _offset_class(offset) == 2
    assert _offset_class(torch.ones(2, 2, 3, 3)) == 0  # one offset set: that one


def test_figures_are_named_by_the_image_ids(tmp_path):
    model = Stack()
    randomize_offsets(model)
    report = offset_report(model, torch.rand(2, 3, 16, 16), tmp_path, image_ids=[7, 42])
    assert [p.name for p in report.figures] == ["sampling_7.png", "sampling_42.png"]
    with pytest.raises(ValueError, match="image_ids must number each of the 2 images, got 1"):
        offset_report(model, torch.rand(2, 3, 16, 16), tmp_path, image_ids=[7])


def test_report_needs_an_image_tensor(tmp_path):
    model = ListInput()
    images = [torch.rand(3, 16, 16)]
    with pytest.raises(ValueError, match="set input_module"):
        offset_report(model, images, tmp_path)
    report = offset_report(model, images, tmp_path, input_module="body")
    assert len(report.figures) == 1
    with pytest.raises(ValueError, match="stack_depth must be >= 1"):
        offset_report(model, images, tmp_path, stack_depth=0)


def test_units_from_instance_masks_lie_on_the_largest_objects():
    from deformconv.viz.report import _units

    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 2:5, 2:5] = True  # small square
    masks[1, 4:14, 4:14] = True
    masks[1, 6:12, 6:12] = False  # a large ring: its centroid (8.5, 8.5) is not on it
    points = _units(None, masks, (16, 16), per_image=2)
    assert len(points) == 2
    (y0, x0), (y1, x1) = points
    assert masks[1, int(y0), int(x0)] and masks[0, int(y1), int(x1)]
    assert (y1, x1) == (3.0, 3.0)  # the square's centre pixel
    assert _units(None, None, (16, 16), per_image=2) == [(7.5, 7.5)]
    # (H, W) ids, as VOC masks come (255: ignored), used to give the image centre
    ids = torch.zeros(16, 16, dtype=torch.long)
    ids[1:4, 10:15] = 3
    ids[0, :] = 255
    assert _units(None, ids, (16, 16), per_image=2) == [(2.0, 12.0)]
