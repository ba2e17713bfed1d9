"""RoI bin geometry (paper Fig. 7) from captured deformable RoI pooling offsets."""

from __future__ import annotations

import pytest
import torch

from deformconv import ops
from deformconv.nn import DeformPSRoIPool, DeformRoIPool
from deformconv.viz import OffsetCapture, RoIOffsetRecord, RoIPoolGeometry, roi_bins


def ramps(height: int, width: int, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, H, W) maps whose value is the column index, and the row index."""
    xs = torch.arange(width, dtype=torch.float32).expand(1, channels, height, width)
    ys = torch.arange(height, dtype=torch.float32)[:, None].expand(1, channels, height, width)
    return xs.contiguous(), ys.contiguous()


def to_feature(coord: torch.Tensor, spatial_scale: float) -> torch.Tensor:
    return (coord + 0.5) * spatial_scale - 0.5


class TestRoIBins:
    def test_hand_computed_bins_and_shifts(self):
        geometry = RoIPoolGeometry("roi", (2, 2), spatial_scale=0.5, offset_scale=0.1)
        offset = torch.zeros(1, 2, 2, 2)
        offset[0, 0, 0, 1] = 0.5  # Δx̂ of bin (0, 1)
        offset[0, 1, 1, 0] = -1.0  # Δŷ of bin (1, 0)
        rec = RoIOffsetRecord("pool", geometry, torch.tensor([[0.0, 2.0, 4.0, 14.0, 10.0]]),
                              offset)
        bins = roi_bins(rec, 0)
        # edges x 2..14, y 4..10 are pixel-index coordinates 1.5..13.5, 3.5..9.5
        assert bins.roi.tolist() == [1.5, 3.5, 13.5, 9.5]
        assert bins.bins[0, 0].tolist() == [1.5, 3.5, 7.5, 6.5]
        assert bins.bins[1, 1].tolist() == [7.5, 6.5, 13.5, 9.5]
        # γ * Δx̂ * roi_w = 0.1 * 0.5 * 12, γ * Δŷ * roi_h = 0.1 * -1 * 6 (image pixels)
        torch.testing.assert_close(bins.shifts[0, 1], torch.tensor([0.6, 0.0],
                                                                   dtype=torch.float64))
        torch.testing.assert_close(bins.shifts[1, 0], torch.tensor([0.0, -0.6],
                                                                   dtype=torch.float64))
        assert bins.shifts[0, 0].tolist() == [0.0, 0.0]
        torch.testing.assert_close(bins.shifted[0, 1], bins.bins[0, 1] + torch.tensor(
            [0.6, 0.0, 0.6, 0.0], dtype=torch.float64))

    def test_psroi_parts_classes_and_rounding(self):
        # pooled 4 over part 2: bins 0-1 read part 0, bins 2-3 part 1; class 1 is channels 2, 3
        geometry = RoIPoolGeometry("psroi", (4, 4), spatial_scale=0.5, offset_scale=0.1,
                                   part_size=2)
        offset = torch.zeros(1, 4, 2, 2)
        offset[0, 2, 1, 0] = 1.0  # class 1 Δx̂ of part (1, 0)
        rec = RoIOffsetRecord("ps", geometry, torch.tensor([[0.0, 2.4, 3.6, 12.6, 9.4]]),
                              offset)
        bins = roi_bins(rec, 0, class_index=1)
        # corners round to 2, 4, 13, 9; start = 2 * 0.5 - 0.5, end = 14 * 0.5 - 0.5 (features)
        assert bins.roi.tolist() == [1.5, 3.5, 13.5, 9.5]
        dx = bins.shifts[..., 0]
        assert dx[2:, :2].flatten().tolist() == pytest.approx([0.1 * 12] * 4)
        assert dx.abs().sum().item() == pytest.approx(0.1 * 12 * 4)
        assert roi_bins(rec, 0, class_index=0).shifts.abs().sum() == 0
        with pytest.raises(IndexError, match="class_index must be in"):
            roi_bins(rec, 0, class_index=2)
        with pytest.raises(IndexError, match="index must be in"):
            roi_bins(rec, 1)


class TestCaptureRoIOffsets:
    def test_deform_roi_pool_offsets_reproduce_the_module_and_bins_match_the_op(self):
        scale = 0.5
        pool = DeformRoIPool(2, (2, 3), spatial_scale=scale, sampling_ratio=2)
        with torch.no_grad():
            pool.offset_fc[-1].weight.normal_(0, 0.05)
        xs, ys = ramps(16, 16)
        features = torch.cat([xs, ys], dim=1)  # channel 0 = column, 1 = row
        features = torch.cat([features, features])  # batch of 2
        rois = torch.tensor([[0.0, 4.0, 6.0, 20.0, 18.0], [1.0, 6.0, 4.0, 18.0, 22.0],
                             [1.0, 8.0, 8.0, 16.0, 16.0]])
        with OffsetCapture(pool, images=[1]) as capture:
            out = pool(features, rois)
        rec = capture.latest_rois()[""]
        assert rec.rois.tolist() == rois[1:].tolist() and rec.offset.shape == (2, 2, 2, 3)
        assert rec.offset.abs().max() > 0 and rec.mask is None
        again = ops.deform_roi_pool(features, rois[1:], rec.offset, output_size=(2, 3),
                                    spatial_scale=scale, sampling_ratio=2)
        torch.testing.assert_close(again, out[1:])
        # on a ramp, RoIAlign's mean over a bin is the bin centre: the displaced bin's centre
        for k in range(2):
            shifted = roi_bins(rec, k).shifted
            centre_x = to_feature((shifted[..., 0] + shifted[..., 2]) / 2, scale)
            centre_y = to_feature((shifted[..., 1] + shifted[..., 3]) / 2, scale)
            torch.testing.assert_close(centre_x.float(), out[k + 1, 0])
            torch.testing.assert_close(centre_y.float(), out[k + 1, 1])

    def test_deform_psroi_pool_offsets_reproduce_the_module_and_bins_match_the_op(self):
        scale, spp = 0.5, 4
        pool = DeformPSRoIPool(3, output_dim=1, group_size=2, spatial_scale=scale,
                               sample_per_part=spp)
        with torch.no_grad():
            pool.conv_offset.weight.normal_(0, 0.3)
        features = torch.randn(1, 3, 16, 16)
        rois = torch.tensor([[0.0, 6.0, 8.0, 20.0, 18.0]])
        xs, ys = ramps(16, 16, channels=4)
        with OffsetCapture(pool, max_calls=2) as capture:
            out_x = pool(xs, rois, features)
            out_y = pool(ys, rois, features=features)
        first, rec = capture.roi_records[""]
        torch.testing.assert_close(first.offset, rec.offset)
        assert rec.offset.shape == (1, 2, 2, 2) and rec.offset.abs().max() > 0
        again = ops.deform_psroi_pool(xs, rois, rec.offset, spatial_scale=scale,
                                      output_dim=1, group_size=2, pooled_size=2,
                                      sample_per_part=spp, trans_std=0.1)
        torch.testing.assert_close(again, out_x)
        # samples start at the bin's corner: mean = start + (spp - 1) / (2 spp) * bin size
        shifted = roi_bins(rec, 0).shifted
        start_x, start_y = to_feature(shifted[..., 0], scale), to_feature(shifted[..., 1], scale)
        bin_w = (shifted[..., 2] - shifted[..., 0]) * scale
        bin_h = (shifted[..., 3] - shifted[..., 1]) * scale
        factor = (spp - 1) / (2 * spp)
        torch.testing.assert_close((start_x + factor * bin_w).float(), out_x[0, 0])
        torch.testing.assert_close((start_y + factor * bin_h).float(), out_y[0, 0])
