"""OffsetCapture: which layers, which images, what is recorded, and that hooks go away."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from deformconv.viz import LayerGeometry, OffsetCapture, capture_offsets

from .helpers import Stack, randomize_offsets


class Unstack(nn.Module):
    """Stacks a list of images into a batch, as a detector's transform does."""

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(images)


class TestOffsetCapture:
    def test_finds_every_deform_conv_with_sizes_and_geometry(self):
        model = Stack()
        records = capture_offsets(model, torch.randn(2, 3, 12, 10))
        assert list(records) == ["block.0", "block.2"]
        first, second = records["block.0"], records["block.2"]
        assert first.geometry == LayerGeometry((3, 3), (2, 2), (1, 1), (1, 1), 1)
        assert second.geometry == LayerGeometry((3, 3), (1, 1), (2, 2), (2, 2), 2)
        assert first.input_size == (12, 10) and first.output_size == (6, 5)
        assert second.input_size == (6, 5) and second.output_size == (6, 5)
        assert first.image_size == (12, 10) and first.images == (0, 1)
        assert second.offset.shape == (2, 2 * 2 * 9, 6, 5)
        assert first.mask is None
        assert first.input_stride.tolist() == [1.0, 1.0]
        assert second.input_stride.tolist() == [2.0, 2.0]

    def test_offsets_equal_the_offset_branch_output_for_chosen_images(self):
        model = Stack(modulated=True)
        randomize_offsets(model)
        x = torch.randn(3, 3, 8, 8)
        records = capture_offsets(model, x, images=[2, 0])
        conv = model.block[2]
        with torch.no_grad():
            feature = model.block[1](model.block[0](model.stem(x)))
            expected = conv.conv_offset(feature)
        record = records["block.2"]
        assert record.images == (2, 0)
        torch.testing.assert_close(record.offset, expected[[2, 0], :36])
        torch.testing.assert_close(record.mask, expected[[2, 0], 36:].sigmoid())
        assert record.offset.abs().max() > 0

    def test_layers_max_calls_and_hook_removal(self):
        model = Stack()
        x = torch.randn(1, 3, 8, 8)
        with OffsetCapture(model, layers=["block.2"], max_calls=2) as capture:
            for _ in range(3):
                model(x)
        assert list(capture.records) == ["block.2"]
        assert len(capture.records["block.2"]) == 2
        model(x)  # hooks are gone: nothing more is recorded
        assert len(capture.records["block.2"]) == 2
        assert all(not m._forward_hooks for m in model.modules())
        assert not model._forward_pre_hooks
        capture.clear()
        assert capture.latest() == {}

    def test_records_are_detached_in_training(self):
        model = Stack().train()
        randomize_offsets(model)
        with OffsetCapture(model) as capture:
            model(torch.randn(2, 3, 8, 8)).sum().backward()
        record = capture.latest()["block.0"]
        assert not record.offset.requires_grad and record.offset.dtype == torch.float32

    def test_bad_layer_names(self):
        model = Stack()
        with pytest.raises(ValueError, match="no module named 'nope'"):
            OffsetCapture(model, layers=["nope"])
        with pytest.raises(ValueError, match="'stem' is a Conv2d, expected a DeformConv2d"):
            OffsetCapture(model, layers=["stem"])
        with pytest.raises(ValueError, match="max_calls must be >= 1"):
            OffsetCapture(model, max_calls=0)

    def test_image_indices_past_the_batch_are_refused(self):
        model = Stack()
        x = torch.randn(2, 3, 8, 8)
        message = r"images: index 5 is out of range for a batch of 2 image\(s\)"
        with pytest.raises(ValueError, match=message):
            capture_offsets(model, x, images=[0, 5])
        with pytest.raises(ValueError, match=message):  # input not a tensor: the conv hook
            capture_offsets(nn.Sequential(Unstack(), model), [x[0], x[1]], images=[5])
        # once max_calls passes are recorded, a smaller later batch is no longer checked
        with OffsetCapture(model, images=[1], max_calls=1) as capture:
            model(x)
            model(x[:1])
        assert capture.latest()["block.0"].images == (1,)

    def test_a_short_later_batch_keeps_the_images_it_has(self):
        """Over batches of 4, 4, 2 the last one raised "images: index 3 is out of range for
        a batch of 2": only the first recorded pass refuses, nothing could be kept there."""
        model = Stack()
        x = torch.randn(4, 3, 8, 8)
        with OffsetCapture(model, images=[1, 3], max_calls=None, keep_inputs=True) as capture:
            for batch in (x, x, x[:2]):
                model(batch)
        assert [rec.images for rec in capture.records["block.0"]] == [(1, 3), (1, 3), (1,)]
        torch.testing.assert_close(capture.records["block.0"][-1].offset,
                                   capture.records["block.0"][0].offset[:1])
        assert [len(batch) for batch in capture.inputs] == [2, 2, 1]
        message = r"images: index 3 is out of range for a batch of 2 image\(s\)"
        with pytest.raises(ValueError, match=message), \
                OffsetCapture(model, images=[1, 3], max_calls=None):
            model(x[:2])
        listed = nn.Sequential(Unstack(), model)
        with pytest.raises(ValueError, match=message), \
                OffsetCapture(listed, images=[3], max_calls=None):
            listed([x[0], x[1]])
        # a loop that clears what it used after each batch still reaches its last one
        with OffsetCapture(model, images=[1, 3], max_calls=None) as capture:
            model(x)
            capture.clear()
            model(x[:2])
        assert capture.latest()["block.0"].images == (1,)

    def test_image_size_unknown_for_list_inputs(self):
        class ListModel(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.body = Stack()

            def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
                return self.body(torch.stack(images))

        model = ListModel()
        record = capture_offsets(model, [torch.randn(3, 8, 8)])["body.block.0"]
        assert record.image_size is None
        with pytest.raises(ValueError, match="image_size is unknown"):
            _ = record.input_stride
        record = dataclasses.replace(record, image_size=(16, 16))
        assert record.output_stride.tolist() == [4.0, 4.0]
        given = capture_offsets(model, [torch.randn(3, 8, 8)], image_size=(8, 8))
        assert given["body.block.0"].image_size == (8, 8)


def test_input_module_sets_the_image_and_keeps_its_input():
    class Resize(nn.Module):
        """Upsamples 2x before the body, as a detector's transform resizes its images."""

        def __init__(self) -> None:
            super().__init__()
            self.body = Stack()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(nn.functional.interpolate(x, scale_factor=2.0))

    model = Resize()
    x = torch.rand(3, 3, 5, 6)
    with torch.no_grad(), OffsetCapture(model, images=[2], input_module="body",
                                        keep_inputs=True) as capture:
        model(x)
    assert capture.latest()["body.block.0"].image_size == (10, 12)
    assert len(capture.inputs) == 1
    torch.testing.assert_close(capture.inputs[0],
                               nn.functional.interpolate(x, scale_factor=2.0)[[2]])
    with pytest.raises(ValueError, match="input_module: no module named 'trunk'"):
        OffsetCapture(model, input_module="trunk")


@pytest.mark.parametrize(("image", "cells", "stride"), [
    (64, 4, 16.0), (100, 7, 16.0), (60, 4, 16.0), (513, 33, 16.0), (513, 65, 8.0),
    (100, 34, 3.0), (5, 7, 5 / 7), (9, 1, 9.0),
])
def test_cumulative_stride_of_padded_layers(image, cells, stride):
    """ceil(image / s) == cells: a power of two where one fits, else the smallest integer,
    else (an upsampled map) the size ratio; one cell fits any s >= image: the image side."""
    from deformconv.viz.coords import cumulative_stride

    assert cumulative_stride(image, cells) == stride
