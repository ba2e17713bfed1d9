"""Sampling locations of one layer and their back-projection through stacked layers."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
from torch import nn

from deformconv.nn import DeformConv2d
from deformconv.viz import (
    LayerGeometry,
    OffsetCapture,
    OffsetRecord,
    back_project,
    capture_offsets,
    sampling_locations,
    sampling_positions,
    unit_at,
)

from .helpers import record


def sorted_rows(points: torch.Tensor) -> list[tuple[float, float]]:
    return sorted(map(tuple, points.tolist()))


class TestSamplingLocations:
    def test_zero_offsets_give_the_regular_dilated_grid(self):
        # stride (2, 1), padding (1, 2), dilation (2, 3): output (2, 1) samples rows
        # 2*2 - 1 + {0, 2, 4} = {3, 5, 7} and columns 1 - 2 + {0, 3, 6} = {-1, 2, 5}.
        geometry = LayerGeometry((3, 3), (2, 1), (1, 2), (2, 3))
        out = geometry.output_size((9, 8))
        assert out == (4, 6)  # (9 + 2 - 5) // 2 + 1, (8 + 4 - 7) // 1 + 1
        rec = record(geometry, torch.zeros(1, 18, *out), (9, 8))
        expected = [[3, -1], [3, 2], [3, 5], [5, -1], [5, 2], [5, 5], [7, -1], [7, 2], [7, 5]]
        assert sampling_locations(rec, (2, 1)).tolist() == expected

    def test_offset_channels_follow_the_spec_layout(self):
        # kernel 2x3, kernel point k = i*kw + j = 5 is (1, 2); channel 2k is Δh, 2k+1 is Δw
        geometry = LayerGeometry((2, 3), padding=(0, 1))
        offset = torch.zeros(1, 12, 4, 4)
        offset[0, 10, 1, 2] = 0.25
        offset[0, 11, 1, 2] = -0.5
        points = sampling_locations(record(geometry, offset, (5, 4)), (1, 2))
        assert points[5].tolist() == [1 + 1 + 0.25, 2 - 1 + 2 - 0.5]
        assert points[4].tolist() == [2.0, 2.0]
        positions = sampling_positions(offset, geometry)
        assert positions.shape == (1, 1, 6, 2, 4, 4)
        assert positions[0, 0, :, :, 1, 2].tolist() == points.tolist()

    def test_groups_are_averaged_or_chosen(self):
        geometry = LayerGeometry((1, 2), offset_groups=2)
        offset = torch.zeros(1, 8, 3, 3)  # (group, point, Δh|Δw)
        offset[0, 0] = 1.0  # group 0 point 0 Δh
        offset[0, 4] = 3.0  # group 1 point 0 Δh
        rec = record(geometry, offset, (3, 4))
        assert sampling_locations(rec, (1, 1))[0].tolist() == [1.0 + 2.0, 1.0]
        assert sampling_locations(rec, (1, 1), group=1)[0].tolist() == [4.0, 1.0]
        with pytest.raises(IndexError, match="group must be in"):
            sampling_locations(rec, (1, 1), group=2)

    def test_bad_arguments(self):
        geometry = LayerGeometry((3, 3), padding=(1, 1))
        rec = record(geometry, torch.zeros(1, 18, 4, 4), (4, 4))
        with pytest.raises(ValueError, match=r"unit \(4, 0\) is outside the 4x4 output"):
            sampling_locations(rec, (4, 0))
        with pytest.raises(IndexError, match="image must index the 1 kept image"):
            sampling_locations(rec, (0, 0), image=1)
        with pytest.raises(ValueError, match="got 10, expected a multiple of 2\\*kh\\*kw = 18"):
            sampling_positions(torch.zeros(1, 10, 4, 4), geometry)


def zero_offset_records(model: nn.Module, size: tuple[int, int]) -> list[OffsetRecord]:
    """The records of ``model``'s deformable convs, their offsets zeroed, on one image."""
    torch.manual_seed(0)
    for layer in model.modules():
        if isinstance(layer, DeformConv2d):
            nn.init.zeros_(layer.conv_offset.weight)
            nn.init.zeros_(layer.conv_offset.bias)
    return list(capture_offsets(model, torch.rand(1, 3, *size)).values())


class TestBackProject:
    def test_zero_offsets_give_9_to_the_L_points_of_the_receptive_field(self):
        geometry = LayerGeometry((3, 3), padding=(1, 1))
        stack = [record(geometry, torch.zeros(1, 18, 12, 12), (12, 12), name=f"l{n}")
                 for n in range(3)]
        projection = back_project(stack, (5, 6))
        assert [len(level) for level in projection.levels] == [9, 81, 729]
        assert projection.layers == ("l2", "l1", "l0")
        assert projection.unit.tolist() == [5.0, 6.0]
        steps = [-1, 0, 1]
        for depth, level in enumerate(projection.levels, start=1):
            expected = [(5.0 + sum(dy), 6.0 + sum(dx))
                        for dy, dx in itertools.product(itertools.product(steps, repeat=depth),
                                                        repeat=2)]
            assert sorted_rows(level) == sorted(expected)

    def test_strides_are_followed_through_image_coordinates(self):
        # bottom: 3x3 stride 2 pad 1 on a 16x16 image -> 8x8; top: 3x3 pad 1 on 8x8.
        bottom = record(LayerGeometry((3, 3), (2, 2), (1, 1)), torch.zeros(1, 18, 8, 8),
                        (16, 16), (16, 16), "bottom")
        top = record(LayerGeometry((3, 3), padding=(1, 1)), torch.zeros(1, 18, 8, 8),
                     (8, 8), (16, 16), "top")
        projection = back_project([bottom, top], (3, 3))
        # top samples features 3 + {-1, 0, 1}, at image 2f: the centre of the rows
        # 2f - 1 .. 2f + 1 that the bottom's cell f reads (they were drawn at 2f + 0.5)
        assert sorted({p[0] for p in projection.levels[0].tolist()}) == [4.0, 6.0, 8.0]
        assert projection.unit.tolist() == [6.0, 6.0]
        # bottom reads image rows 2f - 1 + {0, 1, 2} for f in {2, 3, 4}
        expected = [(2.0 * fy - 1 + i, 2.0 * fx - 1 + j)
                    for fy, fx, i, j in itertools.product([2, 3, 4], [2, 3, 4], range(3),
                                                           range(3))]
        assert sorted_rows(projection.points) == sorted(expected)

    def test_lower_offsets_are_interpolated_or_rounded(self):
        geometry = LayerGeometry((1, 3), padding=(0, 1))
        top_offset = torch.zeros(1, 6, 1, 8)
        top_offset[:, 1::2] = 0.25  # every top point moves right by 0.25
        bottom_offset = torch.zeros(1, 6, 1, 8)
        bottom_offset[:, 0::2] = torch.arange(8.0)  # Δh of the bottom = its output column
        bottom = record(geometry, bottom_offset, (1, 8), name="bottom")
        top = record(geometry, top_offset, (1, 8), name="top")
        # top unit (0, 4) samples columns 3.25, 4.25, 5.25
        assert sorted({p[1] for p in back_project([bottom, top], (0, 4)).levels[0].tolist()}) \
            == [3.25, 4.25, 5.25]
        rows = {p[0] for p in back_project([bottom, top], (0, 4)).points.tolist()}
        assert sorted(rows) == [3.25, 4.25, 5.25]
        rows = {p[0] for p in back_project([bottom, top], (0, 4), lookup="nearest")
                .points.tolist()}
        assert sorted(rows) == [3.0, 4.0, 5.0]

    def test_constant_offsets_shift_every_point(self):
        geometry = LayerGeometry((3, 3), padding=(1, 1))
        zero = record(geometry, torch.zeros(1, 18, 6, 6), (6, 6))
        moved = torch.zeros(1, 18, 6, 6)
        moved[:, 0::2] = 0.5
        moved[:, 1::2] = -1.0
        shifted = back_project([record(geometry, moved, (6, 6)), zero], (2, 2)).points
        regular = back_project([zero, zero], (2, 2)).points
        torch.testing.assert_close(shifted, regular + torch.tensor([0.5, -1.0],
                                                                   dtype=torch.float64))

    def test_records_given_top_layer_first_are_refused(self):
        """[top, bottom] silently gave points at row -1 (bottom first: rows 3..5)."""
        low, high = zero_offset_records(nn.Sequential(
            DeformConv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1),
            DeformConv2d(8, 8, 3, padding=1)), (30, 50))
        # unit (2, 3) at image (8, 12); its first point (4, 8), read by the bottom layer
        # from rows 3..5 and columns 7..9
        assert back_project([low, high], (2, 3)).points[:3].tolist() == [
            [3.0, 7.0], [3.0, 8.0], [3.0, 9.0]]
        with pytest.raises(ValueError, match=r"records must be given bottom layer first, in "
                                             r"the order the layers ran: layer '2' ran after "
                                             r"layer '0' \(calls 1 and 0\) but is given "
                                             r"before it; reverse"):
            back_project([high, low], (2, 3))
        back_project([high, high], (2, 3))  # one call is not out of order
        # hand-made records do not say when they ran: any order is taken
        back_project([replace(high, call=None), replace(low, call=None)], (2, 3))

    def test_records_of_a_decoder_bottom_first_are_taken(self):
        """With upsampling between the layers the input of the top layer is finer than the
        output of the bottom one: a check of the strides refused the right order."""
        low, high = zero_offset_records(nn.Sequential(
            DeformConv2d(3, 4, 3, stride=2, padding=1), nn.Upsample(scale_factor=2),
            DeformConv2d(4, 4, 3, padding=1)), (16, 16))
        # top unit (5, 5) samples image rows 4..6, the bottom's cells 2, 2.5, 3; cell 2 reads
        # rows 3..5
        assert back_project([low, high], (5, 5)).points[:3].tolist() == [
            [3.0, 3.0], [3.0, 4.0], [3.0, 5.0]]
        with pytest.raises(ValueError, match="records must be given bottom layer first"):
            back_project([high, low], (5, 5))

    def test_bad_arguments(self):
        geometry = LayerGeometry((3, 3), padding=(1, 1))
        rec = record(geometry, torch.zeros(1, 18, 4, 4), (4, 4))
        with pytest.raises(ValueError, match="at least one OffsetRecord"):
            back_project([], (0, 0))
        with pytest.raises(ValueError, match="lookup must be one of"):
            back_project([rec], (0, 0), lookup="cubic")
        other = record(geometry, torch.zeros(2, 18, 4, 4), (4, 4))
        with pytest.raises(ValueError, match="same images"):
            back_project([rec, other], (0, 0))


def test_unit_at_maps_image_points_to_the_nearest_output_pixel():
    geometry = LayerGeometry((3, 3), (4, 4), (1, 1))
    rec = record(geometry, torch.zeros(1, 18, 8, 8), (32, 32), (32, 32))
    # output cell f is centred on image pixel 4f (viz.coords); (5, 5) was cell (0, 0) when
    # cells were taken to centre on 4f + 1.5
    assert unit_at(rec, (8.0, 12.0)) == (2, 3)
    assert unit_at(rec, (5.0, 5.0)) == (1, 1)
    assert unit_at(rec, (-10.0, 100.0)) == (0, 7)


@pytest.mark.parametrize(("name", "kwargs", "size", "cell"), [
    ("compact_fcn", {"widths": (3, 3, 3, 3), "strides": (2, 2, 1, 1), "deform_layers": 1}, 48, 5),
    # 50 px at stride 4 makes 13 cells, a size ratio of 3.85: cell 5 was drawn at 19.2, not 20
    ("compact_fcn", {"widths": (3, 3, 3, 3), "strides": (2, 2, 1, 1), "deform_layers": 1}, 50, 5),
    ("resnet18", {"base_channels": 4, "deform_blocks": (0, 0, 0, 1)}, 1024, 16),
])
def test_points_are_drawn_where_the_models_cells_look(name, kwargs, size, cell):
    """The centre tap of a deformable layer (zero offsets) is drawn on the middle of the
    image window its input cell sees, measured as the input gradient's extent. Positive
    weights and images keep every ReLU open. The points used to be drawn (s - 1) / 2 pixels
    off: 1.5 at stride 4, 15.5 at stride 32; and at the size ratio instead of the stride when
    the image side is not a multiple of it."""
    from deformconv import models

    torch.manual_seed(0)
    model = models.create(name, 3, **kwargs).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.abs_()
    images = torch.rand(1, 3, size, size, requires_grad=True)
    with OffsetCapture(model) as capture:
        model(images)
    top = list(capture.latest().values())[-1]
    seen = {}
    layer = dict(model.named_modules())[top.name]
    hook = layer.register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    model(images)
    hook.remove()
    (grad,) = torch.autograd.grad(seen["x"][0, :, cell, cell].sum(), images)
    rows = grad[0].abs().sum((0, 2)).nonzero()
    middle = float(rows.min() + rows.max()) / 2
    zero = replace(top, offset=torch.zeros_like(top.offset))
    centre_tap = back_project([zero], (cell, cell)).levels[0][4]
    assert centre_tap.tolist() == [middle, middle]
