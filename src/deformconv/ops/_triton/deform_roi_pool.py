"""deform_roi_pool on CUDA with Triton (RoIAlign sampling whose bins move by offsets).

The RoI geometry comes from ``roi_align_grid`` in float32. The forward runs a program per
(RoI, block of bins, block of channels) and gathers ``[bins × channels]`` tiles. The
backward runs a program per (RoI, block of bins): it owns those bins' offset and mask
gradients, reduced over all channels without atomics, and adds the input gradient to a
float32 buffer with 4-corner atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._dispatch import alert_not_deterministic
from ..geometry import roi_align_grid
from .bilinear import (
    clamp_into_plane,
    corner_offsets,
    corners,
    interpolate,
    load_corner,
    scatter_corners,
    slopes,
)
from .launch import block, check_index_range, flat_grid, on_device, program_ids


@triton.jit
def _bins(k, pid, geo_ptr, offset_ptr, bins_per_roi, pw, gamma,
          HAS_OFFSET: tl.constexpr, BLOCK_B: tl.constexpr):
    """Bins of the ``pid``-th block of RoI ``k``: index, validity, moved top-left ``(y, x)``."""
    bins = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    bins_ok = bins < bins_per_roi
    y = tl.load(geo_ptr + 6 * k) + (bins // pw).to(tl.float32) * tl.load(geo_ptr + 6 * k + 2)
    x = tl.load(geo_ptr + 6 * k + 1) + (bins % pw).to(tl.float32) * tl.load(geo_ptr + 6 * k + 3)
    if HAS_OFFSET:
        at = k.to(tl.int64) * 2 * bins_per_roi + bins
        dx = tl.load(offset_ptr + at, mask=bins_ok, other=0.0).to(tl.float32)
        dy = tl.load(offset_ptr + at + bins_per_roi, mask=bins_ok, other=0.0).to(tl.float32)
        y += gamma * tl.load(geo_ptr + 6 * k + 4) * dy
        x += gamma * tl.load(geo_ptr + 6 * k + 5) * dx
    return bins, bins_ok, y, x


@triton.jit
def _sample(y_bin, x_bin, iy, ix, bin_h, bin_w, grid_h, grid_w, height, width, bins_ok):
    """Sample ``(iy, ix)`` of each bin clamped into the plane, whether it counts (RoIAlign:
    outside ``[-1, H] × [-1, W]`` it is 0) and whether it moves with ``y`` / ``x``.

    In torchvision's order, ``y_bin + (iy + 0.5) * bin_h / grid_h`` with an IEEE division
    (``/`` is approximate on NVIDIA GPUs), so that a sample on the map's edge rounds as
    RoIAlign's does (``(iy + 0.5) * (bin_h / grid_h)`` can land one step past it).
    """
    y = y_bin + tl.div_rn((iy + 0.5) * bin_h, grid_h)
    x = x_bin + tl.div_rn((ix + 0.5) * bin_w, grid_w)
    taken = bins_ok & (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    y, y_moves = clamp_into_plane(y, height)
    x, x_moves = clamp_into_plane(x, width)
    return y, x, taken, y_moves, x_moves


@triton.jit
def _forward_kernel(
    x_ptr, batch_ptr, geo_ptr, grid_ptr, offset_ptr, mask_ptr, out_ptr,
    rois, channels, height, width, pw, bins_per_roi, gamma, x_sn, x_sc, x_sh, x_sw,
    HAS_OFFSET: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    k, b_block, c_block = program_ids(rois, tl.cdiv(bins_per_roi, BLOCK_B))
    bins, bins_ok, y_bin, x_bin = _bins(k, b_block, geo_ptr, offset_ptr, bins_per_roi, pw,
                                        gamma, HAS_OFFSET, BLOCK_B)
    c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < channels
    channel_offsets = c.to(tl.int64) * x_sc
    grid_h = tl.load(grid_ptr + 2 * k)
    grid_w = tl.load(grid_ptr + 2 * k + 1)
    bin_h = tl.load(geo_ptr + 6 * k + 2)
    bin_w = tl.load(geo_ptr + 6 * k + 3)
    rows_f = grid_h.to(tl.float32)  # the divisors of ``_sample`` (>= 1 wherever it runs)
    cols_f = grid_w.to(tl.float32)
    image = x_ptr + tl.load(batch_ptr + k).to(tl.int64) * x_sn
    rows = image + tl.zeros((BLOCK_B,), dtype=tl.int64)
    acc = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    for iy in range(0, grid_h):
        for ix in range(0, grid_w):
            y, x, taken, _, _ = _sample(y_bin, x_bin, iy, ix, bin_h, bin_w, rows_f, cols_f,
                                        height, width, bins_ok)
            h0, w0, lh, lw, ok00, ok01, ok10, ok11 = corners(y, x, height, width)
            o00, o01, o10, o11 = corner_offsets(h0, w0, x_sh, x_sw)
            acc += interpolate(load_corner(rows, o00, ok00 & taken, channel_offsets, c_ok),
                               load_corner(rows, o01, ok01 & taken, channel_offsets, c_ok),
                               load_corner(rows, o10, ok10 & taken, channel_offsets, c_ok),
                               load_corner(rows, o11, ok11 & taken, channel_offsets, c_ok),
                               lh[:, None], lw[:, None])
    scale = tl.where(bins_ok, 1.0, 0.0) / tl.maximum(grid_h * grid_w, 1)
    if HAS_MASK:
        scale *= tl.load(mask_ptr + k.to(tl.int64) * bins_per_roi + bins, mask=bins_ok,
                         other=0.0).to(tl.float32)
    at = (k.to(tl.int64) * channels + c[None, :]) * bins_per_roi + bins[:, None]
    tl.store(out_ptr + at, (acc * scale[:, None]).to(out_ptr.dtype.element_ty),
             mask=bins_ok[:, None] & c_ok[None, :])


@triton.jit
def _backward_kernel(
    x_ptr, batch_ptr, geo_ptr, grid_ptr, offset_ptr, mask_ptr, go_ptr,
    grad_x_ptr, grad_offset_ptr, grad_mask_ptr,
    rois, channels, height, width, pw, bins_per_roi, gamma, x_sn, x_sc, x_sh, x_sw,
    HAS_OFFSET: tl.constexpr, HAS_MASK: tl.constexpr, NEED_INPUT: tl.constexpr,
    NEED_OFFSET_MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``grad_x_ptr``: zeroed float32 (N, H, W, C); ``go_ptr``: contiguous (K, C, ph, pw)."""
    k, b_block, _ = program_ids(rois, tl.cdiv(bins_per_roi, BLOCK_B))
    bins, bins_ok, y_bin, x_bin = _bins(k, b_block, geo_ptr, offset_ptr, bins_per_roi, pw,
                                        gamma, HAS_OFFSET, BLOCK_B)
    b = tl.load(batch_ptr + k).to(tl.int64)
    grid_h = tl.load(grid_ptr + 2 * k)
    grid_w = tl.load(grid_ptr + 2 * k + 1)
    bin_h = tl.load(geo_ptr + 6 * k + 2)
    bin_w = tl.load(geo_ptr + 6 * k + 3)
    rows_f = grid_h.to(tl.float32)  # the divisors of ``_sample`` (>= 1 wherever it runs)
    cols_f = grid_w.to(tl.float32)
    scale = tl.where(bins_ok, 1.0, 0.0) / tl.maximum(grid_h * grid_w, 1)
    if HAS_MASK:
        m = tl.load(mask_ptr + k.to(tl.int64) * bins_per_roi + bins, mask=bins_ok,
                    other=0.0).to(tl.float32)
    else:
        m = tl.where(bins_ok, 1.0, 0.0)
    rows = x_ptr + b * x_sn + tl.zeros((BLOCK_B,), dtype=tl.int64)
    grad_rows = grad_x_ptr + b * height * width * channels + tl.zeros((BLOCK_B,), tl.int64)
    grad_y = tl.zeros((BLOCK_B,), dtype=tl.float32)
    grad_x = tl.zeros((BLOCK_B,), dtype=tl.float32)
    grad_m = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for c0 in range(0, channels, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < channels
        channel_offsets = c.to(tl.int64) * x_sc
        go = tl.load(go_ptr + (k.to(tl.int64) * channels + c[None, :]) * bins_per_roi
                     + bins[:, None], mask=bins_ok[:, None] & c_ok[None, :],
                     other=0.0).to(tl.float32) * scale[:, None]
        pooled = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
        for iy in range(0, grid_h):
            for ix in range(0, grid_w):
                y, x, taken, y_moves, x_moves = _sample(y_bin, x_bin, iy, ix, bin_h, bin_w,
                                                        rows_f, cols_f, height, width,
                                                        bins_ok)
                h0, w0, lh, lw, ok00, ok01, ok10, ok11 = corners(y, x, height, width)
                if NEED_OFFSET_MASK:
                    o00, o01, o10, o11 = corner_offsets(h0, w0, x_sh, x_sw)
                    v00 = load_corner(rows, o00, ok00 & taken, channel_offsets, c_ok)
                    v01 = load_corner(rows, o01, ok01 & taken, channel_offsets, c_ok)
                    v10 = load_corner(rows, o10, ok10 & taken, channel_offsets, c_ok)
                    v11 = load_corner(rows, o11, ok11 & taken, channel_offsets, c_ok)
                    slope_y, slope_x = slopes(v00, v01, v10, v11, lh[:, None], lw[:, None])
                    grad_y += tl.sum(go * slope_y, axis=1) * tl.where(y_moves, 1.0, 0.0)
                    grad_x += tl.sum(go * slope_x, axis=1) * tl.where(x_moves, 1.0, 0.0)
                    pooled += interpolate(v00, v01, v10, v11, lh[:, None], lw[:, None])
                if NEED_INPUT:
                    g00, g01, g10, g11 = corner_offsets(h0, w0, width * channels, channels)
                    taken_c = taken[:, None] & c_ok[None, :]
                    scatter_corners(grad_rows[:, None] + c[None, :], g00[:, None], g01[:, None],
                                    g10[:, None], g11[:, None], ok00[:, None] & taken_c,
                                    ok01[:, None] & taken_c, ok10[:, None] & taken_c,
                                    ok11[:, None] & taken_c, go * m[:, None], lh[:, None],
                                    lw[:, None])
        grad_m += tl.sum(go * pooled, axis=1)
    if NEED_OFFSET_MASK:
        if HAS_OFFSET:  # (K, 2, ph, pw): channel 0 is x, 1 is y
            out_ty = grad_offset_ptr.dtype.element_ty
            at_x = k.to(tl.int64) * 2 * bins_per_roi + bins
            factor = gamma * m
            tl.store(grad_offset_ptr + at_x,
                     (grad_x * factor * tl.load(geo_ptr + 6 * k + 5)).to(out_ty), mask=bins_ok)
            tl.store(grad_offset_ptr + at_x + bins_per_roi,
                     (grad_y * factor * tl.load(geo_ptr + 6 * k + 4)).to(out_ty), mask=bins_ok)
        if HAS_MASK:
            tl.store(grad_mask_ptr + k.to(tl.int64) * bins_per_roi + bins,
                     grad_m.to(grad_mask_ptr.dtype.element_ty), mask=bins_ok)


class _Args:
    """RoI tables (float32 geometry, int32 batch index and samples per bin) and sizes."""

    def __init__(self, input: Tensor, rois: Tensor, pooled: tuple[int, int],
                 spatial_scale: float, sampling_ratio: int, aligned: bool) -> None:
        grid = roi_align_grid(rois.float(), pooled, spatial_scale, sampling_ratio, aligned)
        self.geo = torch.stack([grid.start_h, grid.start_w, grid.bin_h, grid.bin_w, grid.roi_h,
                                grid.roi_w], dim=1).contiguous()
        self.grid = torch.stack([grid.grid_h, grid.grid_w], dim=1).int().contiguous()
        self.batch = rois[:, 0].int().contiguous()
        self.rois = rois.shape[0]
        self.channels, self.height, self.width = input.shape[1:]
        self.pooled = pooled
        self.bins = pooled[0] * pooled[1]
        self.block_b = block(self.bins, 16, 64)
        check_index_range(self.rois * self.channels * self.bins, "K * C * ph * pw")

    def sizes(self, gamma: float) -> tuple:
        return (self.rois, self.channels, self.height, self.width, self.pooled[1], self.bins, gamma)


def forward(input: Tensor, rois: Tensor, offset: Tensor | None, mask: Tensor | None,
            pooled: tuple[int, int], spatial_scale: float, sampling_ratio: int, gamma: float,
            aligned: bool) -> Tensor:
    """(N, C, H, W) -> (K, C, ph, pw) in the input's dtype; arguments already checked."""
    a = _Args(input, rois, pooled, spatial_scale, sampling_ratio, aligned)
    out = input.new_empty(a.rois, a.channels, *pooled)
    if out.numel() == 0:
        return out
    offset = offset.contiguous() if offset is not None else a.geo
    mask = mask.contiguous() if mask is not None else a.geo
    block_c = block(a.channels, 16, 64)
    grid = (a.rois, triton.cdiv(a.bins, a.block_b), triton.cdiv(a.channels, block_c))
    with on_device(input):
        _forward_kernel[flat_grid(grid, "deform_roi_pool forward")](
            input, a.batch, a.geo, a.grid, offset, mask, out, *a.sizes(gamma), *input.stride(),
            HAS_OFFSET=offset is not a.geo, HAS_MASK=mask is not a.geo, BLOCK_B=a.block_b,
            BLOCK_C=block_c, num_warps=4,
        )
    return out


def backward(grad_out: Tensor, input: Tensor, rois: Tensor, offset: Tensor | None,
             mask: Tensor | None, pooled: tuple[int, int], spatial_scale: float,
             sampling_ratio: int, gamma: float, aligned: bool, need_input: bool,
             need_offset_mask: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (input, offset, mask); empty tensors stand for a missing offset / mask."""
    a = _Args(input, rois, pooled, spatial_scale, sampling_ratio, aligned)
    grad_input = torch.zeros_like(input)
    grad_offset = input.new_zeros(a.rois, 2, *pooled) if offset is not None else None
    grad_mask = input.new_zeros(a.rois, 1, *pooled) if mask is not None else None
    need_offset_mask = need_offset_mask and (offset is not None or mask is not None)
    if need_input:
        alert_not_deterministic("deform_roi_pool", "triton")
    if grad_out.numel() and (need_input or need_offset_mask):
        grad_x = input.new_zeros(input.shape[0], a.height, a.width, a.channels,
                                 dtype=torch.float32) if need_input else a.geo
        grid = (a.rois, triton.cdiv(a.bins, a.block_b))
        with on_device(input):
            _backward_kernel[flat_grid(grid, "deform_roi_pool backward")](
                input, a.batch, a.geo, a.grid,
                offset.contiguous() if offset is not None else a.geo,
                mask.contiguous() if mask is not None else a.geo, grad_out.contiguous(), grad_x,
                grad_offset if grad_offset is not None else a.geo,
                grad_mask if grad_mask is not None else a.geo,
                *a.sizes(gamma), *input.stride(), HAS_OFFSET=offset is not None,
                HAS_MASK=mask is not None, NEED_INPUT=need_input,
                NEED_OFFSET_MASK=need_offset_mask, BLOCK_B=a.block_b,
                BLOCK_C=block(a.channels, 16, 32), num_warps=4,
            )
        if need_input:
            grad_input.copy_(grad_x.permute(0, 3, 1, 2))
    return (grad_input,
            grad_offset if grad_offset is not None else input.new_empty(0),
            grad_mask if grad_mask is not None else input.new_empty(0))
