"""deform_psroi_pool on CUDA with Triton (the original DeformablePSROIPooling).

A program handles a block of the ``M = output_dim·P·P`` bins of one RoI; each bin reads
its own input channel (tables from ``psroi_bins``). The backward adds the input gradient
with float32 atomics and writes each bin's offset gradient to a float32 ``(K, M, 2)``
buffer; bins sharing a class and part cell are then summed in torch (deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._checks import compute_dtype
from .._dispatch import alert_not_deterministic
from ..geometry import psroi_bins, psroi_grid
from .bilinear import (
    clamp_into_plane,
    corner_offsets,
    corners,
    interpolate,
    scatter_corners,
    slopes,
)
from .launch import check_index_range, flat_grid, on_device, program_ids

_BLOCK = 64


@triton.jit
def _bins(k, pid, batch_ptr, geo_ptr, table_ptr, offset_ptr, bins_per_roi, classes, part_size,
          pooled_size, samples, trans_std, HAS_OFFSET: tl.constexpr, BLOCK: tl.constexpr):
    """Per bin of the block: validity, input channel, sample origin and step, RoI size."""
    e = pid * BLOCK + tl.arange(0, BLOCK)
    ok = e < bins_per_roi
    channel = tl.load(table_ptr + e, mask=ok, other=0)
    cls = tl.load(table_ptr + bins_per_roi + e, mask=ok, other=0)
    part_h = tl.load(table_ptr + 2 * bins_per_roi + e, mask=ok, other=0)
    part_w = tl.load(table_ptr + 3 * bins_per_roi + e, mask=ok, other=0)
    row = tl.load(table_ptr + 4 * bins_per_roi + e, mask=ok, other=0)
    col = tl.load(table_ptr + 5 * bins_per_roi + e, mask=ok, other=0)
    start_h = tl.load(geo_ptr + 4 * k)
    start_w = tl.load(geo_ptr + 4 * k + 1)
    roi_h = tl.load(geo_ptr + 4 * k + 2)
    roi_w = tl.load(geo_ptr + 4 * k + 3)
    # IEEE divisions ('/' is approximate on NVIDIA GPUs), in the CPU kernels' order, so that a
    # sample exactly on the -0.5 limit is taken there as here; fp32 divisors (* 1.0: Triton may
    # pass a size of 1 as a Python int)
    size, per_bin = pooled_size * 1.0, samples * 1.0
    bin_h, bin_w = tl.div_rn(roi_h, size), tl.div_rn(roi_w, size)
    h = row.to(tl.float32) * bin_h + start_h
    w = col.to(tl.float32) * bin_w + start_w
    if HAS_OFFSET:
        at = ((k.to(tl.int64) * 2 * classes + 2 * cls) * part_size + part_h) * part_size + part_w
        plane = part_size * part_size
        w += tl.load(offset_ptr + at, mask=ok, other=0.0).to(tl.float32) * trans_std * roi_w
        h += tl.load(offset_ptr + at + plane, mask=ok, other=0.0).to(tl.float32) * trans_std \
            * roi_h
    return (ok, channel, h, w, tl.div_rn(bin_h, per_bin), tl.div_rn(bin_w, per_bin), roi_h,
            roi_w)


@triton.jit
def _sample(h_start, w_start, ih, iw, sub_h, sub_w, height, width, ok):
    """Sample ``(ih, iw)`` clamped into the plane, whether it is taken (the original kernel
    skips samples outside ``[-0.5, H - 0.5] × [-0.5, W - 0.5]``), whether it moves."""
    h = h_start + ih * sub_h
    w = w_start + iw * sub_w
    taken = ok & (w >= -0.5) & (w <= width - 0.5) & (h >= -0.5) & (h <= height - 0.5)
    h, h_moves = clamp_into_plane(h, height)
    w, w_moves = clamp_into_plane(w, width)
    return h, w, taken, h_moves, w_moves


@triton.jit
def _forward_kernel(
    x_ptr, batch_ptr, geo_ptr, table_ptr, offset_ptr, out_ptr, count_ptr,
    rois, height, width, bins_per_roi, classes, part_size, pooled_size, samples, trans_std,
    x_sn, x_sc, x_sh, x_sw, HAS_OFFSET: tl.constexpr, BLOCK: tl.constexpr,
):
    k, pid, _ = program_ids(rois, tl.cdiv(bins_per_roi, BLOCK))
    ok, channel, h_start, w_start, sub_h, sub_w, _, _ = _bins(
        k, pid, batch_ptr, geo_ptr, table_ptr, offset_ptr, bins_per_roi, classes,
        part_size, pooled_size, samples, trans_std, HAS_OFFSET, BLOCK)
    planes = x_ptr + tl.load(batch_ptr + k).to(tl.int64) * x_sn + channel.to(tl.int64) * x_sc
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    count = tl.zeros((BLOCK,), dtype=tl.float32)
    for ih in range(0, samples):
        for iw in range(0, samples):
            h, w, taken, _, _ = _sample(h_start, w_start, ih, iw, sub_h, sub_w, height, width,
                                        ok)
            h0, w0, lh, lw, ok00, ok01, ok10, ok11 = corners(h, w, height, width)
            o00, o01, o10, o11 = corner_offsets(h0, w0, x_sh, x_sw)
            v00 = tl.load(planes + o00, mask=taken & ok00, other=0.0).to(tl.float32)
            v01 = tl.load(planes + o01, mask=taken & ok01, other=0.0).to(tl.float32)
            v10 = tl.load(planes + o10, mask=taken & ok10, other=0.0).to(tl.float32)
            v11 = tl.load(planes + o11, mask=taken & ok11, other=0.0).to(tl.float32)
            total += interpolate(v00, v01, v10, v11, lh, lw)
            count += tl.where(taken, 1.0, 0.0)
    at = k.to(tl.int64) * bins_per_roi + pid * BLOCK + tl.arange(0, BLOCK)
    out = tl.where(count > 0, total / tl.maximum(count, 1.0), 0.0)
    tl.store(out_ptr + at, out.to(out_ptr.dtype.element_ty), mask=ok)
    tl.store(count_ptr + at, count.to(count_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _backward_kernel(
    x_ptr, batch_ptr, geo_ptr, table_ptr, offset_ptr, go_ptr, count_ptr, grad_x_ptr,
    bin_grad_ptr, channels, rois, height, width, bins_per_roi, classes, part_size, pooled_size,
    samples, trans_std, x_sn, x_sc, x_sh, x_sw, HAS_OFFSET: tl.constexpr,
    NEED_INPUT: tl.constexpr, NEED_OFFSET: tl.constexpr, BLOCK: tl.constexpr,
):
    """``grad_x_ptr``: zeroed float32 (N, C, H, W); ``bin_grad_ptr``: float32 (K, M, 2)."""
    k, pid, _ = program_ids(rois, tl.cdiv(bins_per_roi, BLOCK))
    ok, channel, h_start, w_start, sub_h, sub_w, roi_h, roi_w = _bins(
        k, pid, batch_ptr, geo_ptr, table_ptr, offset_ptr, bins_per_roi, classes,
        part_size, pooled_size, samples, trans_std, HAS_OFFSET, BLOCK)
    at = k.to(tl.int64) * bins_per_roi + pid * BLOCK + tl.arange(0, BLOCK)
    count = tl.load(count_ptr + at, mask=ok, other=0.0).to(tl.float32)
    scale = tl.where(count > 0, tl.load(go_ptr + at, mask=ok, other=0.0).to(tl.float32)
                     / tl.maximum(count, 1.0), 0.0)
    b = tl.load(batch_ptr + k).to(tl.int64)
    planes = x_ptr + b * x_sn + channel.to(tl.int64) * x_sc
    grad_planes = grad_x_ptr + (b * channels + channel.to(tl.int64)) * (height * width)
    grad_h = tl.zeros((BLOCK,), dtype=tl.float32)
    grad_w = tl.zeros((BLOCK,), dtype=tl.float32)
    for ih in range(0, samples):
        for iw in range(0, samples):
            h, w, taken, h_moves, w_moves = _sample(h_start, w_start, ih, iw, sub_h, sub_w,
                                                    height, width, ok)
            h0, w0, lh, lw, ok00, ok01, ok10, ok11 = corners(h, w, height, width)
            ok00 &= taken
            ok01 &= taken
            ok10 &= taken
            ok11 &= taken
            if NEED_INPUT:
                g00, g01, g10, g11 = corner_offsets(h0, w0, width, 1)
                scatter_corners(grad_planes, g00, g01, g10, g11, ok00, ok01, ok10, ok11, scale,
                                lh, lw)
            if NEED_OFFSET:
                o00, o01, o10, o11 = corner_offsets(h0, w0, x_sh, x_sw)
                v00 = tl.load(planes + o00, mask=ok00, other=0.0).to(tl.float32)
                v01 = tl.load(planes + o01, mask=ok01, other=0.0).to(tl.float32)
                v10 = tl.load(planes + o10, mask=ok10, other=0.0).to(tl.float32)
                v11 = tl.load(planes + o11, mask=ok11, other=0.0).to(tl.float32)
                slope_h, slope_w = slopes(v00, v01, v10, v11, lh, lw)
                grad_h += tl.where(h_moves, slope_h, 0.0)
                grad_w += tl.where(w_moves, slope_w, 0.0)
    if NEED_OFFSET:
        tl.store(bin_grad_ptr + 2 * at, grad_w * scale * trans_std * roi_w, mask=ok)
        tl.store(bin_grad_ptr + 2 * at + 1, grad_h * scale * trans_std * roi_h, mask=ok)


class _Args:
    """Per-RoI geometry (float32), batch index, bin tables (int32) and sizes of one call."""

    def __init__(self, input: Tensor, rois: Tensor, offset: Tensor | None, spatial_scale: float,
                 output_dim: int, group_size: int, pooled_size: int, part_size: int,
                 samples: int, trans_std: float) -> None:
        grid = psroi_grid(rois.float(), spatial_scale)
        self.geo = torch.stack([grid.start_h, grid.start_w, grid.roi_h, grid.roi_w],
                               dim=1).contiguous()
        self.batch = rois[:, 0].int().contiguous()
        self.classes = 1 if offset is None else offset.shape[1] // 2
        self.bins = psroi_bins(output_dim, group_size, pooled_size, part_size, self.classes,
                               input.device)
        self.table = torch.stack([self.bins.channel, self.bins.cls, self.bins.part_h,
                                  self.bins.part_w, self.bins.row, self.bins.col]).int()
        self.offset = offset.contiguous() if offset is not None else self.geo
        self.rois = rois.shape[0]
        self.per_roi = output_dim * pooled_size * pooled_size
        check_index_range(self.rois * self.per_roi, "K * output_dim * P * P")
        self.grid = flat_grid((self.rois, triton.cdiv(self.per_roi, _BLOCK)),
                              "deform_psroi_pool")
        self.common = (self.rois, input.shape[2], input.shape[3], self.per_roi, self.classes,
                       part_size, pooled_size, samples, trans_std, *input.stride())


def forward(input: Tensor, rois: Tensor, offset: Tensor | None, spatial_scale: float,
            output_dim: int, group_size: int, pooled_size: int, part_size: int,
            sample_per_part: int, trans_std: float) -> tuple[Tensor, Tensor]:
    """(N, output_dim*G*G, H, W) -> output and sample count, both (K, output_dim, P, P),
    the count in the compute dtype (float32 for float16/bfloat16)."""
    a = _Args(input, rois, offset, spatial_scale, output_dim, group_size, pooled_size,
              part_size, sample_per_part, trans_std)
    out = input.new_empty(a.rois, output_dim, pooled_size, pooled_size)
    count = torch.empty_like(out, dtype=compute_dtype(input.dtype))
    if out.numel():
        with on_device(input):
            _forward_kernel[a.grid](input, a.batch, a.geo, a.table, a.offset, out, count,
                                    *a.common, HAS_OFFSET=offset is not None, BLOCK=_BLOCK,
                                    num_warps=2)
    return out, count


def backward(grad_out: Tensor, input: Tensor, rois: Tensor, offset: Tensor | None,
             count: Tensor, spatial_scale: float, group_size: int, part_size: int,
             sample_per_part: int, trans_std: float, need_input: bool,
             need_offset: bool) -> tuple[Tensor, Tensor]:
    """Gradients (input, offset); an empty tensor stands for a missing offset."""
    output_dim, pooled_size = grad_out.shape[1], grad_out.shape[2]
    a = _Args(input, rois, offset, spatial_scale, output_dim, group_size, pooled_size,
              part_size, sample_per_part, trans_std)
    if need_input:
        alert_not_deterministic("deform_psroi_pool", "triton")
    grad_input = torch.zeros_like(input)
    need_offset = need_offset and offset is not None
    if grad_out.numel() == 0 or not (need_input or need_offset):
        return grad_input, torch.zeros_like(offset) if offset is not None else input.new_empty(0)
    grad_x = input.new_zeros(input.shape, dtype=torch.float32) if need_input else a.geo
    bin_grad = input.new_empty(a.rois, a.per_roi, 2, dtype=torch.float32) if need_offset \
        else a.geo
    with on_device(input):
        _backward_kernel[a.grid](
            input, a.batch, a.geo, a.table, a.offset, grad_out.contiguous(), count.contiguous(),
            grad_x, bin_grad, input.shape[1], *a.common, HAS_OFFSET=offset is not None,
            NEED_INPUT=need_input, NEED_OFFSET=need_offset, BLOCK=_BLOCK, num_warps=2,
        )
    if need_input:
        grad_input.copy_(grad_x)
    if offset is None:
        return grad_input, input.new_empty(0)
    if not need_offset:
        return grad_input, torch.zeros_like(offset)
    part = a.bins.part_w[:pooled_size]  # part cell of bin column j (ctop 0, row 0)
    return grad_input, _offset_gradient(bin_grad, a.classes, part, part_size, offset.dtype)


def _offset_gradient(bin_grad: Tensor, classes: int, part: Tensor, part_size: int,
                     dtype: torch.dtype) -> Tensor:
    """Sum the bins' ``(K, M, 2)`` (x, y) gradients into ``(K, 2*classes, part, part)``.

    Output channel ``ctop`` uses class ``ctop // per_class`` and bin row ``i`` part row
    ``floor(i / P * part)``, so the sum is a reshape over classes and a one-hot product
    over rows and columns.
    """
    k, pooled_size = bin_grad.shape[0], part.shape[0]
    per_class = bin_grad.shape[1] // (classes * pooled_size * pooled_size)
    grads = bin_grad.view(k, classes, per_class, pooled_size, pooled_size, 2).sum(dim=2)
    one_hot = torch.nn.functional.one_hot(part, part_size).to(bin_grad.dtype)  # (P, part)
    cells = torch.einsum("kcijt,ia,jb->kctab", grads, one_hot, one_hot)
    return cells.reshape(k, 2 * classes, part_size, part_size).to(dtype)
