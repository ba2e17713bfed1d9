"""Numba kernels of deform_conv2d: sampling into columns, and the fused backward pass.

Layouts (one tile = ``nb`` images × ``rows`` output rows; G offset groups of Cg channels):
    x        (nb, H, W, G, Cg)                  channels-last input of the tile's images
    offset   (nb, 2*G*kk, rows, Wout)
    mask     (nb, G*kk, rows, Wout)             (a (1, 1, 1, 1) dummy without a mask)
    columns  (nb, rows, Wout, kk, G, Cg)        sample of kernel point k of output pixel
                                                (r, col) at [n, r, col, k, g, :]
Channels are innermost everywhere, so each sample's four corner reads and its column
write are contiguous runs that LLVM vectorises. The offset group is an axis of its own
(views of the channels-last tensors) because a whole last axis vectorises better than a
channel range sliced out of it. Loops run per kernel row and column: no division per
sample. The kernels are serial over a range of independent tasks; ``threads.run_tasks``
spreads the ranges over threads.
"""

from __future__ import annotations

import numba
import numpy as np

from .channel_runs import (
    blend,
    block_task,
    locate,
    row_positions,
    scatter_corners,
    slopes,
    store_slopes,
    value_weights,
)
from .noalias import kernel


@numba.njit(inline="always", cache=True)
def _tile_dims(x, offset, columns):
    """``(offset groups, channels per group, rows, Wout, kernel rows)`` of a tile."""
    rows, wout, kk = offset.shape[2], offset.shape[3], columns.shape[3]
    return x.shape[3], x.shape[4], rows, wout, kk


def sample_tasks(x_shape: tuple[int, ...], rows: int) -> int:
    """The number of ``sample_columns`` tasks of a tile: offset groups × images × rows."""
    return x_shape[3] * x_shape[0] * rows


def row_scratch(kk: int, wout: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """A ``sample_columns`` chunk's own buffers for one output row's samples: corner rows
    and columns ``(h0, h1, w0, w1)`` and weights ``(a00, a01, a10, a11)``, (4, kk, Wout)."""
    return np.empty((4, kk, wout), np.int64), np.empty((4, kk, wout), dtype)


# contract: fused multiply-adds.
@kernel(fastmath={"contract"})
def sample_columns(x, offset, mask, has_mask, columns, y0, kw, stride, pad, dil, corner,
                   corner_weight, first, last):
    """Fill ``columns`` with ``mask * bilinear(x[n, :, :, g, c], position of (pixel, k))``
    for tasks ``first:last`` of ``sample_tasks`` (offset group, image, output row).

    Two passes per task: the row's sample positions into ``corner`` / ``corner_weight``
    (``row_scratch``), then the channel blends. Apart, both loops stay tight: at 8-64
    channels the kernel takes 30-50 % less time than with each blend beside its position
    arithmetic (benchmarks/README.md).
    """
    nb, height, width = x.shape[:3]
    offset_groups, cin_og, rows, wout, kk = _tile_dims(x, offset, columns)
    cast = columns.dtype.type
    for task in range(first, last):
        g = task // (nb * rows)
        n = task // rows - g * nb
        r = task % rows
        row_positions(offset, mask, has_mask, n, g, r, y0 + r, kw, stride, pad, dil, height,
                      width, cast, corner, corner_weight)
        for col in range(wout):
            for k in range(kk):
                h0, h1 = corner[0, k, col], corner[1, k, col]
                w0, w1 = corner[2, k, col], corner[3, k, col]
                a00, a01 = corner_weight[0, k, col], corner_weight[1, k, col]
                a10, a11 = corner_weight[2, k, col], corner_weight[3, k, col]
                blend(columns[n, r, col, k, g], a00, a01, a10, a11, x[n, h0, w0, g],
                      x[n, h0, w1, g], x[n, h1, w0, g], x[n, h1, w1, g])


# reassoc lets LLVM vectorise the channel sums; no flag changes NaN/inf semantics.
@kernel(fastmath={"reassoc", "contract"})
def backward_tile(x, offset, mask, has_mask, columns, grad_offset, grad_mask, grad_x,
                  channel_blocks, need_offset_mask, need_input, y0, kw, stride, pad, dil,
                  first, last):
    """One pass over a tile's samples for every gradient the GEMMs do not give (tasks
    ``first:last`` of ``nb * channel_blocks``).

    On entry ``columns`` holds the gradient of the columns; each sample's run is read for
    the offset/mask gradients (``need_offset_mask``) and scattered into ``grad_x`` (laid
    out like x, accumulated; ``need_input``), and then overwritten by the sampled columns
    (for the weight gradient's GEMM). The last two happen whatever the flags say, with the
    scatter's weights zeroed (each corner loop skips a zero weight): a branch around these
    loops made them twice as slow.

    Tasks are (image, channel block) pairs, a block being the same share of every offset
    group's channels: their ``grad_x`` and ``columns`` entries are disjoint, so the
    scatter needs no atomics. A block sums the offset/mask gradients over its channels
    only: ``grad_offset`` (channel_blocks, nb, 2*G*kk, rows, Wout) and ``grad_mask``
    (channel_blocks, nb, G*kk, rows, Wout) get one part per block for the caller to add up
    (``grad_mask`` is a dummy without a mask).

    The position derivative's support includes the lines -1 (``SLOPE_LOWER``): there
    the value weights are 0, so values, mask gradient and scatter are unaffected.
    """
    nb, height, width = x.shape[:3]
    offset_groups, cin_og, rows, wout, kk = _tile_dims(x, offset, columns)
    kh = kk // kw
    cast = x.dtype.type
    zero = cast(0.0)
    input_scale = cast(1.0 if need_input else 0.0)
    for task in range(first, last):
        n, b, c, end = block_task(task, channel_blocks, cin_og)
        for r in range(rows):
            for col in range(wout):
                for g in range(offset_groups):
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            q = g * kk + k
                            inside, h0, h1, w0, w1, lh, lw, k00, k01, k10, k11 = locate(
                                offset, n, q, r, col, y0 + r, i, j, stride, pad, dil, height,
                                width, True)
                            run = columns[n, r, col, k, g, c:end]
                            if not inside:
                                if need_offset_mask:
                                    store_slopes(grad_offset, grad_mask, has_mask, b, n, q, r, col,
                                                 0.0, 0.0, 0.0, 0.0)
                                run[:] = 0.0
                                continue
                            m = mask[n, q, r, col] if has_mask else 1.0
                            x00, x01 = x[n, h0, w0, g, c:end], x[n, h0, w1, g, c:end]
                            x10, x11 = x[n, h1, w0, g, c:end], x[n, h1, w1, g, c:end]
                            if need_offset_mask:
                                slope_h, slope_w, value = slopes(
                                    run, x00, x01, x10, x11, lh, lw, k00, k01, k10, k11, zero)
                                store_slopes(grad_offset, grad_mask, has_mask, b, n, q, r, col,
                                             m, slope_h, slope_w, value)
                            a00, a01, a10, a11 = value_weights(lh, lw, k00, k01, k10, k11, m, cast)
                            scatter_corners(grad_x, n, g, c, end, h0, h1, w0, w1, a00, a01, a10,
                                            a11, input_scale, run)
                            blend(run, a00, a01, a10, a11, x00, x01, x10, x11)
