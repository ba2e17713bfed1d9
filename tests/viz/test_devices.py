"""Offset capture and reports on a CUDA model give what they give on the CPU."""

from __future__ import annotations

import pytest
import torch

from deformconv.nn import DeformPSRoIPool
from deformconv.viz import OffsetCapture, capture_offsets, offset_report

from .helpers import Stack, randomize_offsets

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_conv_capture_on_cuda_matches_cpu(tmp_path):
    model = Stack(modulated=True)
    randomize_offsets(model)
    x = torch.rand(2, 3, 12, 12)
    on_cpu = capture_offsets(model, x, images=[1])
    on_cuda = capture_offsets(model.cuda(), x.cuda(), images=[1])
    for name, rec in on_cpu.items():
        assert on_cuda[name].offset.device.type == "cpu"
        torch.testing.assert_close(on_cuda[name].offset, rec.offset, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(on_cuda[name].mask, rec.mask, atol=1e-4, rtol=1e-4)
    report = offset_report(model, x.cuda(), tmp_path, boxes=[torch.zeros(0, 4)] * 2)
    assert len(report.figures) == 2 and report.dilation_rows


def test_psroi_capture_on_cuda_matches_cpu():
    pool = DeformPSRoIPool(3, output_dim=2, group_size=2, spatial_scale=0.5)
    with torch.no_grad():
        pool.conv_offset.weight.normal_(0, 0.3)
    maps, features = torch.rand(1, 8, 16, 16), torch.rand(1, 3, 16, 16)
    rois = torch.tensor([[0.0, 4.0, 6.0, 20.0, 24.0]])
    results = []
    for device in ("cpu", "cuda"):
        pool.to(device)
        with OffsetCapture(pool) as capture:
            pool(maps.to(device), rois.to(device), features.to(device))
        results.append(capture.latest_rois()[""].offset)
    torch.testing.assert_close(results[1], results[0], atol=1e-4, rtol=1e-4)
