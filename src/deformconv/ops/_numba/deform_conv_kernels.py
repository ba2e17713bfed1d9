"""Numba kernels of deform_conv2d: sampling into columns and the two backward scatters.

Layouts (one tile = ``nb`` images × ``rows`` output rows, ``P = nb*rows*Wout`` pixels):
    x        (nb, H, W, Cin)                    channels-last input of the tile's images
    offset   (nb, 2*G*kk, rows, Wout)
    mask     (nb, G*kk, rows, Wout)             (a (1, 1, 1, 1) dummy without a mask)
    columns  (nb, rows, Wout, kk, Cin)          sample of kernel point k of output pixel
                                                (r, col) at [n, r, col, k, :]
Channels are innermost everywhere, so each sample's four corner reads and its column
write are contiguous runs that LLVM vectorises.
"""

from __future__ import annotations

import numba

from .bilinear import corners, slope_corners


@numba.njit(inline="always", cache=True)
def _sample_position(offset, n, g, k, kk, kw, r, col, y, stride, pad, dil):
    """Real input position ``(h, w)`` of kernel point ``k`` of output pixel ``(y, col)``."""
    i = k // kw
    j = k - i * kw
    h = y * stride[0] - pad[0] + i * dil[0] + offset[n, 2 * (g * kk + k), r, col]
    w = col * stride[1] - pad[1] + j * dil[1] + offset[n, 2 * (g * kk + k) + 1, r, col]
    return h, w


@numba.njit(inline="always", cache=True)
def _tile_dims(x_shape, offset, columns):
    """``(channels, rows, Wout, kk, offset groups, channels per offset group)`` of a tile."""
    rows, wout, kk = offset.shape[2], offset.shape[3], columns.shape[3]
    offset_groups = offset.shape[1] // (2 * kk)
    return x_shape[3], rows, wout, kk, offset_groups, x_shape[3] // offset_groups


@numba.njit(inline="always", cache=True)
def _pixel(p, rows, wout):
    """Tile pixel index ``p`` -> (image in tile, row in tile, column)."""
    return p // (rows * wout), (p // wout) % rows, p % wout


@numba.njit(parallel=True, cache=True, nogil=True)
def sample_columns(x, offset, mask, has_mask, columns, y0, kw, stride, pad, dil):
    """Fill ``columns`` with ``mask * bilinear(x[n, :, :, c], position of (p, k))``."""
    nb, height, width = x.shape[:3]
    _, rows, wout, kk, offset_groups, cin_og = _tile_dims(x.shape, offset, columns)
    one = columns.dtype.type(1.0)
    for p in numba.prange(nb * rows * wout):
        n, r, col = _pixel(p, rows, wout)
        for k in range(kk):
            for g in range(offset_groups):
                h, w = _sample_position(offset, n, g, k, kk, kw, r, col, y0 + r, stride, pad, dil)
                _, h0, h1, w0, w1, lh, lw, k00, k01, k10, k11 = corners(h, w, height, width)
                m = mask[n, g * kk + k, r, col] if has_mask else one
                a00 = columns.dtype.type(m * (1 - lh) * (1 - lw) * k00)
                a01 = columns.dtype.type(m * (1 - lh) * lw * k01)
                a10 = columns.dtype.type(m * lh * (1 - lw) * k10)
                a11 = columns.dtype.type(m * lh * lw * k11)
                c, end = g * cin_og, (g + 1) * cin_og
                dst = columns[n, r, col, k, c:end]
                x00, x01 = x[n, h0, w0, c:end], x[n, h0, w1, c:end]
                x10, x11 = x[n, h1, w0, c:end], x[n, h1, w1, c:end]
                for t in range(cin_og):
                    dst[t] = a00 * x00[t] + a01 * x01[t] + a10 * x10[t] + a11 * x11[t]


# reassoc lets LLVM vectorise the channel sums; no flag changes NaN/inf semantics.
@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def offset_mask_grad(
    x, offset, mask, has_mask, grad_columns, grad_offset, grad_mask, y0, kw, stride, pad, dil
):
    """Gradients of offset and mask from ``grad_columns`` (same layout as columns).

    ``grad_offset`` and ``grad_mask`` have the tile's offset / mask shapes. Each (p, k, g)
    entry is owned by one iteration, so the pixel loop runs in parallel without races.
    """
    nb, height, width = x.shape[:3]
    _, rows, wout, kk, offset_groups, cin_og = _tile_dims(x.shape, offset, grad_columns)
    zero = x.dtype.type(0.0)
    for p in numba.prange(nb * rows * wout):
        n, r, col = _pixel(p, rows, wout)
        for k in range(kk):
            for g in range(offset_groups):
                h, w = _sample_position(offset, n, g, k, kk, kw, r, col, y0 + r, stride, pad, dil)
                inside, h0, h1, w0, w1, lh, lw, k00, k01, k10, k11 = slope_corners(
                    h, w, height, width
                )
                if not inside:
                    grad_offset[n, 2 * (g * kk + k), r, col] = 0.0
                    grad_offset[n, 2 * (g * kk + k) + 1, r, col] = 0.0
                    if has_mask:
                        grad_mask[n, g * kk + k, r, col] = 0.0
                    continue
                # d value / d h and d value / d w weights of each corner, and the value weights.
                cast = x.dtype.type
                dh00, dh01 = cast(-(1 - lw) * k00), cast(-lw * k01)
                dh10, dh11 = cast((1 - lw) * k10), cast(lw * k11)
                dw00, dw01 = cast(-(1 - lh) * k00), cast((1 - lh) * k01)
                dw10, dw11 = cast(-lh * k10), cast(lh * k11)
                v00, v01 = cast((1 - lh) * (1 - lw) * k00), cast((1 - lh) * lw * k01)
                v10, v11 = cast(lh * (1 - lw) * k10), cast(lh * lw * k11)
                acc_h = zero
                acc_w = zero
                acc_v = zero
                c, end = g * cin_og, (g + 1) * cin_og
                src = grad_columns[n, r, col, k, c:end]
                x00, x01 = x[n, h0, w0, c:end], x[n, h0, w1, c:end]
                x10, x11 = x[n, h1, w0, c:end], x[n, h1, w1, c:end]
                for t in range(cin_og):
                    gcol = src[t]
                    acc_h += gcol * (dh00 * x00[t] + dh01 * x01[t] + dh10 * x10[t] + dh11 * x11[t])
                    acc_w += gcol * (dw00 * x00[t] + dw01 * x01[t] + dw10 * x10[t] + dw11 * x11[t])
                    acc_v += gcol * (v00 * x00[t] + v01 * x01[t] + v10 * x10[t] + v11 * x11[t])
                m = mask[n, g * kk + k, r, col] if has_mask else 1.0
                grad_offset[n, 2 * (g * kk + k), r, col] = m * acc_h
                grad_offset[n, 2 * (g * kk + k) + 1, r, col] = m * acc_w
                if has_mask:
                    grad_mask[n, g * kk + k, r, col] = acc_v


@numba.njit(parallel=True, cache=True, nogil=True)
def input_grad(
    x_shape, offset, mask, has_mask, grad_columns, grad_x, blocks, y0, kw, stride, pad, dil
):
    """Scatter ``grad_columns`` into ``grad_x`` (channels-last, like x), accumulating.

    Samples of different pixels hit the same input location, so the parallel loop runs
    over ``blocks`` disjoint channel blocks instead of pixels: no two threads write the
    same entry. Every block recomputes all sample positions, so one block per thread is
    fastest (4 per thread cost 4x the CPU time at 64 channels).
    """
    nb, height, width = x_shape[:3]
    cin, rows, wout, kk, offset_groups, cin_og = _tile_dims(x_shape, offset, grad_columns)
    one = grad_x.dtype.type(1.0)
    for b in numba.prange(blocks):
        c_lo = b * cin // blocks
        c_hi = (b + 1) * cin // blocks
        g_lo = c_lo // cin_og
        g_hi = (c_hi - 1) // cin_og + 1
        for p in range(nb * rows * wout):
            n, r, col = _pixel(p, rows, wout)
            for k in range(kk):
                for g in range(g_lo, g_hi):
                    h, w = _sample_position(
                        offset, n, g, k, kk, kw, r, col, y0 + r, stride, pad, dil
                    )
                    inside, h0, h1, w0, w1, lh, lw, k00, k01, k10, k11 = corners(
                        h, w, height, width
                    )
                    if not inside:
                        continue
                    m = mask[n, g * kk + k, r, col] if has_mask else one
                    a00 = grad_x.dtype.type(m * (1 - lh) * (1 - lw) * k00)
                    a01 = grad_x.dtype.type(m * (1 - lh) * lw * k01)
                    a10 = grad_x.dtype.type(m * lh * (1 - lw) * k10)
                    a11 = grad_x.dtype.type(m * lh * lw * k11)
                    c, end = max(c_lo, g * cin_og), min(c_hi, (g + 1) * cin_og)
                    src = grad_columns[n, r, col, k, c:end]
                    g00, g01 = grad_x[n, h0, w0, c:end], grad_x[n, h0, w1, c:end]
                    g10, g11 = grad_x[n, h1, w0, c:end], grad_x[n, h1, w1, c:end]
                    for t in range(end - c):
                        gcol = src[t]
                        g00[t] += a00 * gcol
                        g01[t] += a01 * gcol
                        g10[t] += a10 * gcol
                        g11[t] += a11 * gcol

