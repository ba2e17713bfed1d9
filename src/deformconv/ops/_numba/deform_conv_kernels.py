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
sample.
"""

from __future__ import annotations

import numba

from .bilinear import corners, slope_corners


@numba.njit(inline="always", cache=True)
def _tile_dims(x, offset, columns):
    """``(offset groups, channels per group, rows, Wout, kernel rows)`` of a tile."""
    rows, wout, kk = offset.shape[2], offset.shape[3], columns.shape[3]
    return x.shape[3], x.shape[4], rows, wout, kk


@numba.njit(inline="always", cache=True)
def _value_weights(lh, lw, k00, k01, k10, k11, scale, cast):
    """The four corner weights of a sample times ``scale`` (the mask), as ``cast``."""
    return (cast(scale * (1 - lh) * (1 - lw) * k00), cast(scale * (1 - lh) * lw * k01),
            cast(scale * lh * (1 - lw) * k10), cast(scale * lh * lw * k11))


@numba.njit(inline="always", cache=True)
def _blend(dst, a00, a01, a10, a11, x00, x01, x10, x11):
    """``dst = a00 * x00 + a01 * x01 + a10 * x10 + a11 * x11`` over a channel run."""
    for t in range(dst.shape[0]):
        dst[t] = a00 * x00[t] + a01 * x01[t] + a10 * x10[t] + a11 * x11[t]


@numba.njit(parallel=True, cache=True, nogil=True)
def sample_columns(x, offset, mask, has_mask, columns, y0, kw, stride, pad, dil):
    """Fill ``columns`` with ``mask * bilinear(x[n, :, :, g, c], position of (pixel, k))``.

    One parallel task per offset group, image and output row of the tile.
    """
    nb, height, width = x.shape[:3]
    offset_groups, cin_og, rows, wout, kk = _tile_dims(x, offset, columns)
    kh = kk // kw
    cast = columns.dtype.type
    for task in numba.prange(offset_groups * nb * rows):
        g = task // (nb * rows)
        n = task // rows - g * nb
        r = task % rows
        for col in range(wout):
            for i in range(kh):
                top = (y0 + r) * stride[0] - pad[0] + i * dil[0]
                for j in range(kw):
                    left = col * stride[1] - pad[1] + j * dil[1]
                    k = i * kw + j
                    q = g * kk + k
                    h = top + offset[n, 2 * q, r, col]
                    w = left + offset[n, 2 * q + 1, r, col]
                    _, h0, h1, w0, w1, lh, lw, k00, k01, k10, k11 = corners(h, w, height, width)
                    m = mask[n, q, r, col] if has_mask else 1.0
                    a00, a01, a10, a11 = _value_weights(lh, lw, k00, k01, k10, k11, m, cast)
                    _blend(columns[n, r, col, k, g], a00, a01, a10, a11, x[n, h0, w0, g],
                           x[n, h0, w1, g], x[n, h1, w0, g], x[n, h1, w1, g])


# reassoc lets LLVM vectorise the channel sums; no flag changes NaN/inf semantics.
@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def backward_tile(x, offset, mask, has_mask, columns, grad_offset, grad_mask, grad_x,
                  channel_blocks, need_offset_mask, need_input, need_columns,
                  y0, kw, stride, pad, dil):
    """One pass over a tile's samples for every gradient the GEMMs do not give.

    On entry ``columns`` holds the gradient of the columns; each sample's run is read for
    the offset/mask gradients (``need_offset_mask``) and scattered into ``grad_x`` (laid
    out like x, accumulated; ``need_input``), and then, with ``need_columns``, overwritten
    by the sampled columns (for the weight gradient's GEMM).

    Parallel tasks are (image, channel block) pairs, a block being the same share of every
    offset group's channels: their ``grad_x`` and ``columns`` entries are disjoint, so the
    scatter needs no atomics. A block sums the offset/mask gradients over its channels
    only: ``grad_offset`` (channel_blocks, nb, 2*G*kk, rows, Wout) and ``grad_mask``
    (channel_blocks, nb, G*kk, rows, Wout) get one part per block for the caller to add up
    (``grad_mask`` is a dummy without a mask).

    The position derivative's support includes the lines -1 (``slope_corners``): there
    the value weights are 0, so values, mask gradient and scatter are unaffected.
    """
    nb, height, width = x.shape[:3]
    offset_groups, cin_og, rows, wout, kk = _tile_dims(x, offset, columns)
    kh = kk // kw
    cast = x.dtype.type
    zero = cast(0.0)
    for task in numba.prange(nb * channel_blocks):
        n = task // channel_blocks
        b = task - n * channel_blocks
        c, end = b * cin_og // channel_blocks, (b + 1) * cin_og // channel_blocks
        for r in range(rows):
            for col in range(wout):
                for g in range(offset_groups):
                    for i in range(kh):
                        top = (y0 + r) * stride[0] - pad[0] + i * dil[0]
                        for j in range(kw):
                            left = col * stride[1] - pad[1] + j * dil[1]
                            k = i * kw + j
                            q = g * kk + k
                            h = top + offset[n, 2 * q, r, col]
                            w = left + offset[n, 2 * q + 1, r, col]
                            inside, h0, h1, w0, w1, lh, lw, k00, k01, k10, k11 = slope_corners(
                                h, w, height, width)
                            run = columns[n, r, col, k, g, c:end]
                            m = mask[n, q, r, col] if has_mask else 1.0
                            if not inside:
                                if need_offset_mask:
                                    grad_offset[b, n, 2 * q, r, col] = 0.0
                                    grad_offset[b, n, 2 * q + 1, r, col] = 0.0
                                    if has_mask:
                                        grad_mask[b, n, q, r, col] = 0.0
                                if need_columns:
                                    run[:] = 0.0
                                continue
                            x00, x01 = x[n, h0, w0, g, c:end], x[n, h0, w1, g, c:end]
                            x10, x11 = x[n, h1, w0, g, c:end], x[n, h1, w1, g, c:end]
                            if need_offset_mask:
                                # The value and its h, w slopes are linear in the four
                                # corner dot products <gradient run, corner run>.
                                d00 = zero
                                d01 = zero
                                d10 = zero
                                d11 = zero
                                for t in range(end - c):
                                    gcol = run[t]
                                    d00 += gcol * x00[t]
                                    d01 += gcol * x01[t]
                                    d10 += gcol * x10[t]
                                    d11 += gcol * x11[t]
                                slope_h = (lw * (k11 * d11 - k01 * d01)
                                           + (1 - lw) * (k10 * d10 - k00 * d00))
                                slope_w = (lh * (k11 * d11 - k10 * d10)
                                           + (1 - lh) * (k01 * d01 - k00 * d00))
                                grad_offset[b, n, 2 * q, r, col] = m * slope_h
                                grad_offset[b, n, 2 * q + 1, r, col] = m * slope_w
                                if has_mask:
                                    grad_mask[b, n, q, r, col] = (
                                        (1 - lh) * ((1 - lw) * k00 * d00 + lw * k01 * d01)
                                        + lh * ((1 - lw) * k10 * d10 + lw * k11 * d11))
                            a00, a01, a10, a11 = _value_weights(lh, lw, k00, k01, k10, k11, m,
                                                                cast)
                            if need_input:
                                # One loop per corner: clamped corners may share a cell.
                                _scatter(grad_x[n, h0, w0, g, c:end], a00, run)
                                _scatter(grad_x[n, h0, w1, g, c:end], a01, run)
                                _scatter(grad_x[n, h1, w0, g, c:end], a10, run)
                                _scatter(grad_x[n, h1, w1, g, c:end], a11, run)
                            if need_columns:
                                _blend(run, a00, a01, a10, a11, x00, x01, x10, x11)


@numba.njit(inline="always", cache=True)
def _scatter(target, weight, run):
    """``target += weight * run`` (nothing for a corner outside the image)."""
    if weight != 0:
        for t in range(run.shape[0]):
            target[t] += weight * run[t]
