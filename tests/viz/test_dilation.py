"""Effective dilation (mean adjacent sampling distance) and its size buckets."""

from __future__ import annotations

import math

import pytest
import torch

from deformconv.viz import (
    SIZE_BUCKETS,
    DilationStats,
    LayerGeometry,
    effective_dilation,
    effective_dilation_table,
    format_dilation_table,
    scale_thresholds,
    size_buckets,
)

from .helpers import record, scaling_offset


class TestEffectiveDilation:
    @pytest.mark.parametrize("dilation", [1, 2, 3])
    @pytest.mark.parametrize("stride", [1, 2])
    def test_zero_offsets_give_the_dilation(self, dilation, stride):
        geometry = LayerGeometry((3, 3), (stride, stride), (dilation, dilation),
                                 (dilation, dilation))
        values = effective_dilation(torch.zeros(2, 18, 5, 4), geometry)
        assert values.shape == (2, 5, 4)
        assert torch.equal(values, torch.full((2, 5, 4), float(dilation), dtype=torch.float64))

    @pytest.mark.parametrize("dilation", [1, 2])
    def test_a_kernel_stretched_twice_doubles_it(self, dilation):
        geometry = LayerGeometry((3, 3), padding=(dilation, dilation),
                                 dilation=(dilation, dilation))
        offset = scaling_offset(geometry, (4, 4), 2.0, 2.0)
        # point (i, j) moves by ((i - 1) * d, (j - 1) * d): neighbours end up 2d apart
        assert offset[0, 0, 0, 0] == -dilation and offset[0, 17, 0, 0] == dilation
        values = effective_dilation(offset, geometry)
        torch.testing.assert_close(values, torch.full_like(values, 2.0 * dilation))

    def test_stretching_one_axis_and_one_group(self):
        geometry = LayerGeometry((3, 3), padding=(1, 1), offset_groups=2)
        wide = scaling_offset(geometry, (3, 3), 1.0, 2.0)
        # 6 horizontal pairs 2 apart, 6 vertical pairs 1 apart
        torch.testing.assert_close(effective_dilation(wide, geometry),
                                   torch.full((1, 3, 3), 1.5, dtype=torch.float64))
        wide[:, :36 // 2] = 0  # group 0 back to the regular grid: mean of 1 and 1.5
        torch.testing.assert_close(effective_dilation(wide, geometry),
                                   torch.full((1, 3, 3), 1.25, dtype=torch.float64))

    def test_diagonal_shift_uses_euclidean_distance(self):
        geometry = LayerGeometry((1, 2))
        offset = torch.zeros(1, 4, 1, 1)
        offset[0, 2] = 1.0  # point 1 moves down by 1: distance sqrt(1 + 1)
        assert effective_dilation(offset, geometry).item() == pytest.approx(math.sqrt(2))

    def test_needs_two_kernel_points(self):
        with pytest.raises(ValueError, match="kernel with >= 2 points, got 1x1"):
            effective_dilation(torch.zeros(1, 2, 3, 3), LayerGeometry((1, 1)))


class TestSizeBuckets:
    def test_boxes_smallest_containing_box_wins(self):
        # 64x64 image, 16x16 map: cell (y, x) centred on pixel (4y, 4x), edges 4y + 0.5
        boxes = torch.tensor([
            [0.0, 0.0, 8.0, 8.0],  # area 64: small, cells y, x in {0, 1}
            [16.0, 16.0, 32.0, 32.0],  # area 256: medium, cells 4..7
            [40.0, 0.0, 64.0, 64.0],  # area 1536: large, columns 10..15
            [48.0, 48.0, 56.0, 56.0],  # area 64 inside the large one: small, cells 12, 13
        ])
        codes = size_buckets((16, 16), (64, 64), boxes=boxes, thresholds=(100.0, 400.0))
        small, medium, large, background = range(4)
        assert SIZE_BUCKETS == ("small", "medium", "large", "background")
        assert codes[1, 1] == small and codes[2, 2] == background
        assert codes[4, 4] == medium and codes[7, 7] == medium and codes[8, 8] == background
        assert codes[0, 10] == large and codes[12, 13] == small and codes[14, 13] == large
        counts = torch.bincount(codes.flatten(), minlength=4).tolist()
        assert counts == [8, 16, 16 * 6 - 4, 256 - 8 - 16 - 92]

    def test_cells_sit_at_the_stride_when_the_image_is_not_a_multiple_of_it(self):
        # 100 px at stride 16: 7 cells centred on pixels 16f; the size ratio 14.3 put cell 6
        # on pixel 85.7, outside the box
        box = torch.tensor([[92.0, 92.0, 100.0, 100.0]])
        codes = size_buckets((7, 7), (100, 100), boxes=box, thresholds=(10.0, 100.0))
        assert codes[6, 6] == 1 and int((codes != 3).sum()) == 1

    def test_no_boxes_is_all_background(self):
        codes = size_buckets((3, 4), (12, 16), boxes=torch.zeros(0, 4))
        assert codes.tolist() == [[3] * 4] * 3

    def test_instance_mask(self):
        mask = torch.zeros(32, 32, dtype=torch.long)
        mask[0:4, 0:4] = 1  # 16 pixels: small
        mask[16:22, 0:6] = 3  # 36 pixels: medium
        mask[8:16, 8:16] = 2  # 64 pixels: large
        mask[28:32, 28:32] = 255  # ignored
        # 8x8 map: cell (y, x) reads pixel (4y, 4x), its centre (viz.coords)
        codes = size_buckets((8, 8), (32, 32), instance_mask=mask, thresholds=(20.0, 50.0))
        assert codes[0, 0] == 0 and codes[4, 0] == 1 and codes[5, 1] == 1 and codes[6, 0] == 3
        assert codes[2:4, 2:4].tolist() == [[2, 2], [2, 2]]
        assert codes[7, 7] == -1
        assert torch.bincount(codes.flatten() + 1, minlength=5).tolist() == [1, 1, 4, 4, 54]

    def test_stacked_binary_masks_smallest_wins(self):
        masks = torch.zeros(3, 16, 16, dtype=torch.bool)
        masks[0] = True  # 256 pixels: large, everywhere
        masks[1, :8, :8] = True  # 64 pixels: medium, 4x4 cells
        masks[2, 2:4, 2:4] = True  # 4 pixels: small, the cell reading pixel (2, 2)
        # 8x8 map: cell (y, x) has its centre in pixel (2y, 2x)
        codes = size_buckets((8, 8), (16, 16), instance_mask=masks, thresholds=(10.0, 100.0))
        counts = torch.bincount(codes.flatten(), minlength=4).tolist()
        assert counts == [1, 15, 48, 0]
        assert codes[1, 1] == 0 and codes[0, 0] == 1 and codes[7, 7] == 2

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="exactly one of boxes and instance_mask"):
            size_buckets((4, 4), (8, 8))
        with pytest.raises(ValueError, match=r"boxes must be \(M, 4\)"):
            size_buckets((4, 4), (8, 8), boxes=torch.zeros(3))
        with pytest.raises(ValueError, match=r"instance_mask must be .* \(H, W\) = \(8, 8\)"):
            size_buckets((4, 4), (8, 8), instance_mask=torch.zeros(4, 4))
        with pytest.raises(ValueError, match="thresholds must be increasing"):
            size_buckets((4, 4), (8, 8), boxes=torch.zeros(0, 4), thresholds=(9.0, 4.0))

    def test_scale_thresholds(self):
        assert scale_thresholds((480, 640)) == (1024.0, 9216.0)
        assert scale_thresholds((1000, 1000)) == (1024.0, 9216.0)
        assert scale_thresholds((48, 64)) == pytest.approx((10.24, 92.16))
        assert scale_thresholds((10, 10), (4.0, 8.0), (20, 20)) == (1.0, 2.0)


class TestDilationStats:
    def test_buckets_collect_their_pixels(self):
        # 1 image 16x16, layer input = output 8x8 (stride 2), dilation 2; the kernel is
        # stretched 2x inside the top-left 4x4 cells, regular elsewhere.
        geometry = LayerGeometry((3, 3), padding=(2, 2), dilation=(2, 2))
        offset = torch.zeros(1, 18, 8, 8)
        offset[..., :4, :4] = scaling_offset(geometry, (4, 4), 2.0, 2.0)
        rec = record(geometry, offset, (8, 8), (16, 16), name="res5a")
        boxes = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 12.0, 16.0]])]
        rows = effective_dilation_table({"res5a": rec}, boxes=boxes, thresholds=(50.0, 60.0))
        by_bucket = {row["bucket"]: row for row in rows}
        assert by_bucket["large"] == {"layer": "res5a", "bucket": "large", "count": 16,
                                      "mean": 4.0, "std": 0.0}
        assert by_bucket["small"]["count"] == 8 and by_bucket["small"]["mean"] == 2.0
        assert by_bucket["medium"]["count"] == 0 and math.isnan(by_bucket["medium"]["mean"])
        assert by_bucket["background"]["count"] == 40

    def test_accumulates_over_updates_with_mean_and_std(self):
        geometry = LayerGeometry((3, 3), padding=(1, 1))
        stats = DilationStats(thresholds=(1e9, 2e9))  # every object is small
        everything = [torch.tensor([[0.0, 0.0, 4.0, 4.0]])]
        stats.update(record(geometry, torch.zeros(1, 18, 4, 4), (4, 4)), boxes=everything)
        stretched = scaling_offset(geometry, (4, 4), 3.0, 3.0)
        stats.update(record(geometry, stretched, (4, 4)), boxes=everything)
        small = stats.rows()[0]
        assert small["count"] == 32
        assert small["mean"] == pytest.approx(2.0) and small["std"] == pytest.approx(1.0)

    def test_masks_and_default_thresholds(self):
        geometry = LayerGeometry((3, 3), padding=(1, 1))
        mask = torch.zeros(8, 8, dtype=torch.long)
        mask[:4] = 1  # 32 pixels, above 1024 * 64 / 307200 and 9216 * 64 / 307200
        stats = DilationStats()
        stats.update(record(geometry, torch.zeros(1, 18, 8, 8), (8, 8)), masks=[mask])
        counts = {row["bucket"]: row["count"] for row in stats.rows()}
        assert counts == {"small": 0, "medium": 0, "large": 32, "background": 32}

    def test_bad_targets(self):
        geometry = LayerGeometry((3, 3), padding=(1, 1))
        rec = record(geometry, torch.zeros(2, 18, 4, 4), (4, 4))
        stats = DilationStats()
        with pytest.raises(ValueError, match="kept 2 image"):
            stats.update(rec, boxes=[torch.zeros(0, 4)])
        with pytest.raises(ValueError, match="exactly one of boxes and masks"):
            stats.update(rec)

    def test_markdown(self):
        rows = [
            {"layer": "res5a", "bucket": "small", "count": 3, "mean": 1.5, "std": 0.25},
            {"layer": "res5a", "bucket": "medium", "count": 0, "mean": math.nan,
             "std": math.nan},
            {"layer": "res5b", "bucket": "background", "count": 9, "mean": 2.0, "std": 0.0},
        ]
        assert format_dilation_table(rows) == (
            "| layer | small | medium | large | background |\n"
            "|---|---|---|---|---|\n"
            "| res5a | 1.50 ± 0.25 (3) | – | – | – |\n"
            "| res5b | – | – | – | 2.00 ± 0.00 (9) |"
        )
