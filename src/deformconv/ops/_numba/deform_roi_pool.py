"""deform_roi_pool on the CPU: Numba kernels over NCHW planes.

The RoI geometry (start, bin size, samples per bin) comes from ``roi_align_grid``, computed
once per call in torch. The kernels are serial over a range of independent tasks, spread
over threads by ``threads.run_tasks``: the forward's tasks are RoIs × channel blocks; the
input gradient's are channel blocks (each owns whole channel planes of ``grad_input``, so
the scatter has no races); the offset and mask gradients' are RoIs (each RoI owns its bins).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor

from ..geometry import roi_align_grid
from .noalias import kernel
from .roi_sampling import clamped_corners, slope_weights, value_weights
from .threads import run_tasks

# Channels handled together by one forward task: they share the bin's table of samples.
_CHANNEL_BLOCK = 32
# Rows of a thread's table of samples: a bin with more samples (a huge RoI with adaptive
# sampling) is tabulated in parts, so the table stays small whatever the RoI.
_TABLE_ROWS = 1024

# Columns of the per-RoI table ``geo`` (K, 6) of ``roi_align_grid``: the RoI's top-left
# corner, its bin size and its size (offsets are fractions of the RoI size).
_START_H, _START_W, _BIN_H, _BIN_W, _ROI_H, _ROI_W = range(6)


@numba.njit(inline="always", cache=True)
def _bin_origin(geo, k, i, j, offset, has_offset, gamma):
    """Top-left ``(y, x)`` of bin ``(i, j)`` of RoI ``k``, moved by its offset.

    In ``geo``'s dtype, as RoIAlign computes it (see ``_fill_table``): Numba would widen
    ``int * float32`` and ``float * float32`` to float64.
    """
    real = geo.dtype.type
    y = geo[k, _START_H] + real(i) * geo[k, _BIN_H]
    x = geo[k, _START_W] + real(j) * geo[k, _BIN_W]
    if has_offset:
        y += real(gamma) * geo[k, _ROI_H] * offset[k, 1, i, j]
        x += real(gamma) * geo[k, _ROI_W] * offset[k, 0, i, j]
    return y, x


@numba.njit(inline="always", cache=True)
def _outside(y, x, height, width):
    """RoIAlign's rule: such a sample is 0 (it still counts in the bin's average)."""
    return y < -1.0 or y > height or x < -1.0 or x > width


@numba.njit(inline="always", cache=True)
def _parts(grid, k, table_rows):
    """``(parts, divisor, rows, cols)`` of RoI ``k``'s bins: a bin's ``gh × gw`` samples go
    into ``parts`` tables of ``rows × cols`` of them (whole rows, or part of a row longer
    than the table), none for a grid with a side <= 0 (a RoI of negative size); RoIAlign
    divides the samples' sum by ``max(gh·gw, 1)``."""
    gh, gw = grid[k, 0], grid[k, 1]
    if gh <= 0 or gw <= 0:
        return 0, max(gh * gw, 1), 1, 1
    cols = min(gw, table_rows)
    rows = max(1, table_rows // gw)
    return -(-gh // rows) * -(-gw // cols), gh * gw, rows, cols


@numba.njit(inline="always", cache=True)
def _fill_table(geo, grid, k, y_bin, x_bin, height, width, index, weight, slope_h, slope_w,
                slopes, part, rows, cols):
    """Tabulate part ``part`` (see ``_parts``: ``rows × cols`` samples) of one bin's samples:
    flat corner indices into an ``H*W`` plane and weights; returns how many samples.

    Row ``s`` of ``index``/``weight`` (and with ``slopes``, of ``slope_h``/``slope_w``: the
    corner weights of d value / d y and d value / d x) describes the part's sample ``s``; a
    sample outside the map gets weight 0. Every channel of the RoI's image then reuses the
    table.

    Sample positions are computed in ``geo``'s dtype (the input's compute dtype) in
    torchvision's order, ``y_bin + (iy + 0.5) * bin_h / gh``: in float64 a float32 RoI's
    sample can land a rounding step past the map's edge (dropped) where RoIAlign's float32
    lands exactly on it (clamped and kept).
    """
    real = geo.dtype.type
    gh, gw = grid[k, 0], grid[k, 1]
    y0 = x0 = 0
    if part > 0:  # a bin that needs several tables: rare, so the divisions are left here
        col_parts = -(-gw // cols)
        y0 = (part // col_parts) * rows
        x0 = (part % col_parts) * cols
    s = 0
    for iy in range(y0, min(gh, y0 + rows)):
        y = y_bin + real(iy + 0.5) * geo[k, _BIN_H] / real(gh)
        for ix in range(x0, min(gw, x0 + cols)):
            xx = x_bin + real(ix + 0.5) * geo[k, _BIN_W] / real(gw)
            if _outside(y, xx, height, width):
                for q in range(4):
                    index[s, q] = 0
                    weight[s, q] = 0.0
                    if slopes:
                        slope_h[s, q] = 0.0
                        slope_w[s, q] = 0.0
                s += 1
                continue
            h0, h1, w0, w1, lh, lw, k00, k01, k10, k11, dh, dw = clamped_corners(
                y, xx, height, width)
            index[s, 0] = h0 * width + w0
            index[s, 1] = h0 * width + w1
            index[s, 2] = h1 * width + w0
            index[s, 3] = h1 * width + w1
            weight[s, 0], weight[s, 1], weight[s, 2], weight[s, 3] = value_weights(
                lh, lw, k00, k01, k10, k11)
            if slopes:
                (slope_h[s, 0], slope_h[s, 1], slope_h[s, 2], slope_h[s, 3],
                 slope_w[s, 0], slope_w[s, 1], slope_w[s, 2], slope_w[s, 3]) = slope_weights(
                    lh, lw, k00, k01, k10, k11, dh, dw)
            s += 1
    return s


@numba.njit(inline="always", cache=True)
def _dot(plane, index, weight, samples):
    """Sum over a bin's tabulated samples of ``weight · plane[index]``."""
    acc = weight.dtype.type(0.0)
    for s in range(samples):
        acc += (weight[s, 0] * plane[index[s, 0]] + weight[s, 1] * plane[index[s, 1]]
                + weight[s, 2] * plane[index[s, 2]] + weight[s, 3] * plane[index[s, 3]])
    return acc


@numba.njit(inline="always", cache=True)
def _dot3(plane, index, weight, slope_h, slope_w, samples):
    """``_dot`` of the value, d/dy and d/dx weights in one pass over the corners."""
    v = weight.dtype.type(0.0)
    dy = weight.dtype.type(0.0)
    dx = weight.dtype.type(0.0)
    for s in range(samples):
        for q in range(4):
            corner = plane[index[s, q]]
            v += weight[s, q] * corner
            dy += slope_h[s, q] * corner
            dx += slope_w[s, q] * corner
    return v, dy, dx


@kernel(fastmath=set())
def _forward(x, height, width, batch, geo, grid, offset, has_offset, gamma, mask, has_mask,
             out, cblock, blocks, table_size, first, last):
    """``x`` is (N, C, H*W); ``out`` (K, C, ph, pw). Tasks ``first:last`` of one RoI × one of
    ``blocks`` blocks of ``cblock`` channels."""
    channels, ph, pw = out.shape[1:]
    index = np.empty((table_size, 4), np.int64)
    weight = np.empty((table_size, 4), x.dtype)
    for task in range(first, last):
        k = task // blocks
        c0 = (task % blocks) * cblock
        c1 = min(channels, c0 + cblock)
        parts, count, rows, cols = _parts(grid, k, table_size)
        for i in range(ph):
            for j in range(pw):
                y_bin, x_bin = _bin_origin(geo, k, i, j, offset, has_offset, gamma)
                scale = (mask[k, 0, i, j] if has_mask else 1.0) / count
                # part 0 (no samples for an empty grid) is written, any further ones added
                samples = _fill_table(geo, grid, k, y_bin, x_bin, height, width, index,
                                      weight, weight, weight, False, 0, rows, cols)
                for c in range(c0, c1):
                    out[k, c, i, j] = scale * _dot(x[batch[k], c], index, weight, samples)
                for part in range(1, parts):
                    samples = _fill_table(geo, grid, k, y_bin, x_bin, height, width, index,
                                          weight, weight, weight, False, part, rows, cols)
                    for c in range(c0, c1):
                        out[k, c, i, j] += scale * _dot(x[batch[k], c], index, weight, samples)


@kernel(fastmath=set())
def _input_grad(height, width, batch, geo, grid, offset, has_offset, gamma, mask, has_mask,
                grad_out, grad_x, blocks, table_size, first, last):
    """Scatter ``grad_out`` into ``grad_x`` (zeroed, (N, C, H*W)); tasks ``first:last`` of
    ``blocks`` channel blocks.

    Each task owns whole channel planes of ``grad_x``: no two threads write the same entry.
    """
    nrois, channels, ph, pw = grad_out.shape
    index = np.empty((table_size, 4), np.int64)
    weight = np.empty((table_size, 4), grad_x.dtype)
    for blk in range(first, last):
        c0 = blk * channels // blocks
        c1 = (blk + 1) * channels // blocks
        for k in range(nrois):
            parts, count, rows, cols = _parts(grid, k, table_size)
            for i in range(ph):
                for j in range(pw):
                    y_bin, x_bin = _bin_origin(geo, k, i, j, offset, has_offset, gamma)
                    scale = (mask[k, 0, i, j] if has_mask else 1.0) / count
                    for part in range(parts):
                        samples = _fill_table(geo, grid, k, y_bin, x_bin, height, width, index,
                                              weight, weight, weight, False, part, rows, cols)
                        for c in range(c0, c1):
                            g = grad_out[k, c, i, j] * scale
                            plane = grad_x[batch[k], c]
                            for s in range(samples):
                                for q in range(4):
                                    plane[index[s, q]] += weight[s, q] * g


@kernel(fastmath=set())
def _offset_mask_grad(x, height, width, batch, geo, grid, offset, has_offset, gamma, mask,
                      has_mask, grad_out, grad_offset, grad_mask, table_size, first, last):
    """Fill ``grad_offset (K, 2, ph, pw)`` and, with a mask, ``grad_mask (K, 1, ph, pw)``
    for RoIs ``first:last``."""
    channels, ph, pw = grad_out.shape[1:]
    index = np.empty((table_size, 4), np.int64)
    weight = np.empty((table_size, 4), x.dtype)
    slope_h = np.empty((table_size, 4), x.dtype)
    slope_w = np.empty((table_size, 4), x.dtype)
    for k in range(first, last):
        parts, count, rows, cols = _parts(grid, k, table_size)
        for i in range(ph):
            for j in range(pw):
                y_bin, x_bin = _bin_origin(geo, k, i, j, offset, has_offset, gamma)
                acc_h = 0.0
                acc_w = 0.0
                acc_v = 0.0
                for part in range(parts):
                    samples = _fill_table(geo, grid, k, y_bin, x_bin, height, width, index,
                                          weight, slope_h, slope_w, True, part, rows,
                                          cols)
                    for c in range(channels):
                        g = grad_out[k, c, i, j]
                        v, dy, dx = _dot3(x[batch[k], c], index, weight, slope_h, slope_w,
                                          samples)
                        acc_v += g * v
                        acc_h += g * dy
                        acc_w += g * dx
                m = mask[k, 0, i, j] if has_mask else 1.0
                grad_offset[k, 0, i, j] = gamma * geo[k, _ROI_W] * m * acc_w / count
                grad_offset[k, 1, i, j] = gamma * geo[k, _ROI_H] * m * acc_h / count
                if has_mask:
                    grad_mask[k, 0, i, j] = acc_v / count


class _Args:
    """Numpy views of one call's tensors, with dummies standing in for a missing offset/mask."""

    def __init__(self, input: Tensor, rois: Tensor, offset: Tensor | None, mask: Tensor | None,
                 pooled: tuple[int, int], spatial_scale: float, sampling_ratio: int,
                 aligned: bool) -> None:
        g = roi_align_grid(rois, pooled, spatial_scale, sampling_ratio, aligned)
        columns = {_START_H: g.start_h, _START_W: g.start_w, _BIN_H: g.bin_h, _BIN_W: g.bin_w,
                   _ROI_H: g.roi_h, _ROI_W: g.roi_w}
        self.geo = torch.stack([columns[c] for c in sorted(columns)], dim=1).numpy()
        self.grid = torch.stack([g.grid_h, g.grid_w], dim=1).numpy()
        per_bin = g.grid_h.clamp(min=0) * g.grid_w.clamp(min=0)
        most = int(per_bin.max()) if per_bin.numel() else 1
        self.table_size = min(max(1, most), _TABLE_ROWS)
        self.work = int(per_bin.sum()) * pooled[0] * pooled[1] * input.shape[1]
        self.batch = rois[:, 0].long().numpy()
        dummy = input.new_zeros(1, 2, 1, 1)
        self.has_offset = offset is not None
        self.offset = (offset if offset is not None else dummy).numpy()
        self.has_mask = mask is not None
        self.mask = (mask if mask is not None else dummy).numpy()
        self.size = input.shape[2], input.shape[3]

    def rois(self, gamma: float) -> tuple:
        """The arguments every kernel takes, in order: the map size and the per-RoI tables."""
        height, width = self.size
        return (height, width, self.batch, self.geo, self.grid, self.offset, self.has_offset,
                gamma, self.mask, self.has_mask)


def _planes(t: Tensor):
    """(N, C, H, W) tensor -> (N, C, H*W) numpy view."""
    return t.view(t.shape[0], t.shape[1], -1).numpy()


def forward(input: Tensor, rois: Tensor, offset: Tensor | None, mask: Tensor | None,
            pooled: tuple[int, int], spatial_scale: float, sampling_ratio: int, gamma: float,
            aligned: bool) -> Tensor:
    """(N, C, H, W) -> (K, C, ph, pw); arguments already checked."""
    input = input.contiguous()  # the kernels read (N, C, H*W) views
    a = _Args(input, rois, offset, mask, pooled, spatial_scale, sampling_ratio, aligned)
    out = input.new_empty(rois.shape[0], input.shape[1], *pooled)
    blocks = -(-input.shape[1] // _CHANNEL_BLOCK)
    run_tasks(_forward, rois.shape[0] * blocks, a.work, _planes(input), *a.rois(gamma),
              out.numpy(), _CHANNEL_BLOCK, blocks, a.table_size)
    return out


def backward(grad_out: Tensor, input: Tensor, rois: Tensor, offset: Tensor | None,
             mask: Tensor | None, pooled: tuple[int, int], spatial_scale: float,
             sampling_ratio: int, gamma: float, aligned: bool, need_input: bool,
             need_offset_mask: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (input, offset, mask); empty tensors stand for a missing offset / mask."""
    input, grad_out = input.contiguous(), grad_out.contiguous()
    a = _Args(input, rois, offset, mask, pooled, spatial_scale, sampling_ratio, aligned)
    grad_input = torch.zeros_like(input)
    grad_offset = input.new_zeros(rois.shape[0], 2, *pooled)
    grad_mask = torch.zeros_like(mask) if mask is not None else input.new_zeros(1, 2, 1, 1)
    if need_input:
        blocks = max(1, min(input.shape[1], 4 * torch.get_num_threads()))
        run_tasks(_input_grad, blocks, a.work, *a.rois(gamma), grad_out.numpy(),
                  _planes(grad_input), blocks, a.table_size)
    if need_offset_mask:
        run_tasks(_offset_mask_grad, rois.shape[0], a.work, _planes(input), *a.rois(gamma),
                  grad_out.numpy(), grad_offset.numpy(), grad_mask.numpy(), a.table_size)
    return (grad_input, grad_offset if offset is not None else input.new_empty(0),
            grad_mask if mask is not None else input.new_empty(0))
