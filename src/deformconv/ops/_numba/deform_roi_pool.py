"""deform_roi_pool on the CPU: Numba kernels over NCHW planes.

The RoI geometry (start, bin size, samples per bin) comes from ``roi_align_grid``, computed
once per call in torch. Forward runs in parallel over RoIs × channel blocks; the input
gradient over channel blocks (each thread owns whole channel planes of ``grad_input``, so
the scatter has no races); offset and mask gradients over RoIs (each RoI owns its bins).
"""

from __future__ import annotations

import numba
import torch
from torch import Tensor

from .._utils import roi_align_grid
from .roi_sampling import clamped_corners, slope_weights, value_weights
from .threads import threads_for

# Channels handled together by one forward task: their samples share the corner arithmetic.
_CHANNEL_BLOCK = 16


@numba.njit(inline="always", cache=True)
def _bin_origin(geo, k, i, j, offset, has_offset, gamma):
    """Top-left ``(y, x)`` of bin ``(i, j)`` of RoI ``k``, moved by its offset."""
    y = geo[k, 0] + i * geo[k, 2]
    x = geo[k, 1] + j * geo[k, 3]
    if has_offset:
        y += gamma * geo[k, 4] * offset[k, 1, i, j]
        x += gamma * geo[k, 5] * offset[k, 0, i, j]
    return y, x


@numba.njit(inline="always", cache=True)
def _outside(y, x, height, width):
    """RoIAlign's rule: such a sample is 0 (it still counts in the bin's average)."""
    return y < -1.0 or y > height or x < -1.0 or x > width


@numba.njit(parallel=True, cache=True)
def _forward(x, batch, geo, grid, offset, has_offset, gamma, mask, has_mask, out, cblock):
    nrois, channels, ph, pw = out.shape
    height, width = x.shape[2], x.shape[3]
    blocks = (channels + cblock - 1) // cblock
    for task in numba.prange(nrois * blocks):
        k = task // blocks
        c0 = (task % blocks) * cblock
        c1 = min(channels, c0 + cblock)
        b = batch[k]
        gh, gw = grid[k, 0], grid[k, 1]
        count = max(gh * gw, 1)
        for i in range(ph):
            for j in range(pw):
                y_bin, x_bin = _bin_origin(geo, k, i, j, offset, has_offset, gamma)
                for c in range(c0, c1):
                    out[k, c, i, j] = 0.0
                for iy in range(gh):
                    y = y_bin + (iy + 0.5) * geo[k, 2] / gh
                    for ix in range(gw):
                        xx = x_bin + (ix + 0.5) * geo[k, 3] / gw
                        if _outside(y, xx, height, width):
                            continue
                        h0, h1, w0, w1, lh, lw, k00, k01, k10, k11, _, _ = clamped_corners(
                            y, xx, height, width)
                        a00, a01, a10, a11 = value_weights(lh, lw, k00, k01, k10, k11)
                        for c in range(c0, c1):
                            out[k, c, i, j] += (a00 * x[b, c, h0, w0] + a01 * x[b, c, h0, w1]
                                                + a10 * x[b, c, h1, w0] + a11 * x[b, c, h1, w1])
                scale = (mask[k, 0, i, j] if has_mask else 1.0) / count
                for c in range(c0, c1):
                    out[k, c, i, j] *= scale


@numba.njit(parallel=True, cache=True)
def _input_grad(batch, geo, grid, offset, has_offset, gamma, mask, has_mask, grad_out, grad_x,
                blocks):
    """Scatter ``grad_out`` into ``grad_x`` (zeroed); thread ``blk`` owns a channel block."""
    nrois, channels, ph, pw = grad_out.shape
    height, width = grad_x.shape[2], grad_x.shape[3]
    for blk in numba.prange(blocks):
        c0 = blk * channels // blocks
        c1 = (blk + 1) * channels // blocks
        for k in range(nrois):
            b = batch[k]
            gh, gw = grid[k, 0], grid[k, 1]
            count = max(gh * gw, 1)
            for i in range(ph):
                for j in range(pw):
                    y_bin, x_bin = _bin_origin(geo, k, i, j, offset, has_offset, gamma)
                    scale = (mask[k, 0, i, j] if has_mask else 1.0) / count
                    for iy in range(gh):
                        y = y_bin + (iy + 0.5) * geo[k, 2] / gh
                        for ix in range(gw):
                            xx = x_bin + (ix + 0.5) * geo[k, 3] / gw
                            if _outside(y, xx, height, width):
                                continue
                            h0, h1, w0, w1, lh, lw, k00, k01, k10, k11, _, _ = clamped_corners(
                                y, xx, height, width)
                            a00, a01, a10, a11 = value_weights(lh, lw, k00, k01, k10, k11)
                            for c in range(c0, c1):
                                g = grad_out[k, c, i, j] * scale
                                grad_x[b, c, h0, w0] += a00 * g
                                grad_x[b, c, h0, w1] += a01 * g
                                grad_x[b, c, h1, w0] += a10 * g
                                grad_x[b, c, h1, w1] += a11 * g


@numba.njit(parallel=True, cache=True)
def _offset_mask_grad(x, batch, geo, grid, offset, has_offset, gamma, mask, has_mask, grad_out,
                      grad_offset, grad_mask):
    """Fill ``grad_offset (K, 2, ph, pw)`` and, with a mask, ``grad_mask (K, 1, ph, pw)``."""
    nrois, channels, ph, pw = grad_out.shape
    height, width = x.shape[2], x.shape[3]
    for k in numba.prange(nrois):
        b = batch[k]
        gh, gw = grid[k, 0], grid[k, 1]
        count = max(gh * gw, 1)
        for i in range(ph):
            for j in range(pw):
                y_bin, x_bin = _bin_origin(geo, k, i, j, offset, has_offset, gamma)
                acc_h = 0.0
                acc_w = 0.0
                acc_v = 0.0
                for iy in range(gh):
                    y = y_bin + (iy + 0.5) * geo[k, 2] / gh
                    for ix in range(gw):
                        xx = x_bin + (ix + 0.5) * geo[k, 3] / gw
                        if _outside(y, xx, height, width):
                            continue
                        h0, h1, w0, w1, lh, lw, k00, k01, k10, k11, dh, dw = clamped_corners(
                            y, xx, height, width)
                        a00, a01, a10, a11 = value_weights(lh, lw, k00, k01, k10, k11)
                        s00, s01, s10, s11, t00, t01, t10, t11 = slope_weights(
                            lh, lw, k00, k01, k10, k11, dh, dw)
                        for c in range(channels):
                            g = grad_out[k, c, i, j]
                            x00, x01 = x[b, c, h0, w0], x[b, c, h0, w1]
                            x10, x11 = x[b, c, h1, w0], x[b, c, h1, w1]
                            acc_v += g * (a00 * x00 + a01 * x01 + a10 * x10 + a11 * x11)
                            acc_h += g * (s00 * x00 + s01 * x01 + s10 * x10 + s11 * x11)
                            acc_w += g * (t00 * x00 + t01 * x01 + t10 * x10 + t11 * x11)
                m = mask[k, 0, i, j] if has_mask else 1.0
                grad_offset[k, 0, i, j] = gamma * geo[k, 5] * m * acc_w / count
                grad_offset[k, 1, i, j] = gamma * geo[k, 4] * m * acc_h / count
                if has_mask:
                    grad_mask[k, 0, i, j] = acc_v / count


class _Args:
    """Numpy views of one call's tensors, with dummies standing in for a missing offset/mask."""

    def __init__(self, input: Tensor, rois: Tensor, offset: Tensor | None, mask: Tensor | None,
                 pooled: tuple[int, int], spatial_scale: float, sampling_ratio: int,
                 aligned: bool) -> None:
        g = roi_align_grid(rois, pooled, spatial_scale, sampling_ratio, aligned)
        self.geo = torch.stack(
            [g.start_h, g.start_w, g.bin_h, g.bin_w, g.roi_h, g.roi_w], dim=1).numpy()
        self.grid = torch.stack([g.grid_h, g.grid_w], dim=1).numpy()
        samples = int((g.grid_h.clamp(min=0) * g.grid_w.clamp(min=0)).sum())
        self.work = samples * pooled[0] * pooled[1] * input.shape[1]
        self.batch = rois[:, 0].long().numpy()
        dummy = input.new_zeros(1, 2, 1, 1)
        self.has_offset = offset is not None
        self.offset = (offset if offset is not None else dummy).numpy()
        self.has_mask = mask is not None
        self.mask = (mask if mask is not None else dummy).numpy()


def forward(input: Tensor, rois: Tensor, offset: Tensor | None, mask: Tensor | None,
            pooled: tuple[int, int], spatial_scale: float, sampling_ratio: int, gamma: float,
            aligned: bool) -> Tensor:
    """(N, C, H, W) -> (K, C, ph, pw); contiguous arguments, already checked."""
    a = _Args(input, rois, offset, mask, pooled, spatial_scale, sampling_ratio, aligned)
    out = input.new_empty(rois.shape[0], input.shape[1], *pooled)
    with threads_for(a.work):
        _forward(input.numpy(), a.batch, a.geo, a.grid, a.offset, a.has_offset, gamma, a.mask,
                 a.has_mask, out.numpy(), _CHANNEL_BLOCK)
    return out


def backward(grad_out: Tensor, input: Tensor, rois: Tensor, offset: Tensor | None,
             mask: Tensor | None, pooled: tuple[int, int], spatial_scale: float,
             sampling_ratio: int, gamma: float, aligned: bool, need_input: bool,
             need_offset_mask: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (input, offset, mask); empty tensors stand for a missing offset / mask."""
    a = _Args(input, rois, offset, mask, pooled, spatial_scale, sampling_ratio, aligned)
    grad_input = torch.zeros_like(input)
    grad_offset = input.new_zeros(rois.shape[0], 2, *pooled)
    grad_mask = torch.zeros_like(mask) if mask is not None else input.new_zeros(1, 2, 1, 1)
    common = (a.batch, a.geo, a.grid, a.offset, a.has_offset, gamma, a.mask, a.has_mask,
              grad_out.numpy())
    with threads_for(a.work):
        if need_input:
            blocks = max(1, min(input.shape[1], 4 * numba.get_num_threads()))
            _input_grad(*common, grad_input.numpy(), blocks)
        if need_offset_mask:
            _offset_mask_grad(input.numpy(), *common, grad_offset.numpy(), grad_mask.numpy())
    return (grad_input, grad_offset if offset is not None else input.new_empty(0),
            grad_mask if mask is not None else input.new_empty(0))
