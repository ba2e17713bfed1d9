"""Numba kernels of the depthwise deform_conv2d (groups = Cin = Cout): no columns.

Each output channel reads only its own input channel, so a pixel's output is, channel by
channel, ``Σ_k weight[k, c] * sample_k[c]``: the kernels sample and weight in one pass.
Layouts as in ``deform_conv_kernels`` (G offset groups of Cg channels):
    x, grad_x           (nb, H, W, G, Cg)       channels-last input of the tile's images
    offset / mask       (nb, 2*G*kk | G*kk, rows, Wout)
    weight              (kk, G, Cg)             weight[c, 0, i, j] at [i*kw + j, c]
    bias                (G, Cg)                 (zeros without a bias)
    out, grad_out       (nb, G, Cg, Hout, Wout) the output (gradient) of the tile's images,
                        or (nb, Hout, Wout, G, Cg) with ``channels_last``
"""

from __future__ import annotations

import numpy as np

from .channel_runs import (
    block_task,
    dot_slopes,
    locate,
    row_positions,
    scatter_corners,
    store_slopes,
    value_weights,
)
from .noalias import kernel


# contract: fused multiply-adds.
@kernel(fastmath={"contract"})
def forward(x, offset, mask, has_mask, weight, bias, out, channels_last, y0, kw, stride, pad,
            dil, corner, corner_weight, first, last):
    """``out`` (the output of the tile's images) for tasks ``first:last`` of (offset group,
    image, output row), like ``deform_conv_kernels.sample_tasks``.

    Two passes per task, as in ``sample_columns``: the row's sample positions into
    ``corner`` / ``corner_weight`` (``row_scratch``), then per pixel the channel sums
    (vectorised), in place in a ``channels_last`` output; for an NCHW one, in a small row
    buffer that the task then writes transposed: no separate transpose pass.
    """
    nb, height, width, offset_groups, cin_og = x.shape
    rows, wout, kk = offset.shape[2], offset.shape[3], weight.shape[0]
    cast = x.dtype.type
    row = np.empty((wout, cin_og), x.dtype)
    for task in range(first, last):
        g = task // (nb * rows)
        n = task // rows - g * nb
        r = task % rows
        row_positions(offset, mask, has_mask, n, g, r, y0 + r, kw, stride, pad, dil, height,
                      width, cast, corner, corner_weight)
        for col in range(wout):
            dst = out[n, y0 + r, col, g] if channels_last else row[col]
            dst[:] = bias[g]
            for k in range(kk):
                h0, h1 = corner[0, k, col], corner[1, k, col]
                w0, w1 = corner[2, k, col], corner[3, k, col]
                a00, a01 = corner_weight[0, k, col], corner_weight[1, k, col]
                a10, a11 = corner_weight[2, k, col], corner_weight[3, k, col]
                wk = weight[k, g]
                x00, x01 = x[n, h0, w0, g], x[n, h0, w1, g]
                x10, x11 = x[n, h1, w0, g], x[n, h1, w1, g]
                for t in range(cin_og):
                    dst[t] += wk[t] * (a00 * x00[t] + a01 * x01[t] + a10 * x10[t]
                                       + a11 * x11[t])
        if channels_last:
            continue
        for t in range(cin_og):
            out_row = out[n, g, t, y0 + r]
            for col in range(wout):
                out_row[col] = row[col, t]


# reassoc lets LLVM vectorise the channel sums; no flag changes NaN/inf semantics.
@kernel(fastmath={"reassoc", "contract"})
def backward(x, offset, mask, has_mask, weight, grad_out, channels_last, grad_offset, grad_mask,
             grad_x, grad_weight, channel_blocks, need_offset_mask, need_input, y0, kw, stride,
             pad, dil, first, last):
    """Every gradient for tasks ``first:last`` of (image, channel block), as in
    ``deform_conv_kernels.backward_tile``.

    ``grad_out`` is the output gradient of the tile's images; a task reads a
    ``channels_last`` one in place and copies each row of an NCHW one channels-last into a
    small buffer first. A sample's gradient run is ``grad_out[pixel] * weight[k]``; it
    gives the offset/mask gradients (``need_offset_mask``) and is scattered into ``grad_x``
    (zero weights when not ``need_input``). ``grad_weight`` (tasks, kk, G, Cg) gets one
    part per task (the caller zeroes and sums them): ``Σ_pixels grad_out * sample`` over
    the task's channels.
    """
    nb, height, width, offset_groups, cin_og = x.shape
    rows, wout, kk = offset.shape[2], offset.shape[3], weight.shape[0]
    kh = kk // kw
    cast = x.dtype.type
    zero = cast(0.0)
    input_scale = cast(1.0 if need_input else 0.0)
    for task in range(first, last):
        n, b, c, end = block_task(task, channel_blocks, cin_og)
        run = np.empty(end - c, x.dtype)
        row = np.empty((offset_groups, wout, end - c), x.dtype)
        for r in range(rows):
            if not channels_last:
                for g in range(offset_groups):
                    for t in range(end - c):
                        out_row = grad_out[n, g, c + t, y0 + r]
                        for col in range(wout):
                            row[g, col, t] = out_row[col]
            for col in range(wout):
                for g in range(offset_groups):
                    go = grad_out[n, y0 + r, col, g, c:end] if channels_last else row[g, col]
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            q = g * kk + k
                            inside, h0, h1, w0, w1, lh, lw, k00, k01, k10, k11 = locate(
                                offset, n, q, r, col, y0 + r, i, j, stride, pad, dil, height,
                                width, True)
                            if not inside:
                                if need_offset_mask:
                                    store_slopes(grad_offset, grad_mask, has_mask, b, n, q, r, col,
                                                 0.0, 0.0, 0.0, 0.0)
                                continue
                            m = mask[n, q, r, col] if has_mask else 1.0
                            a00, a01, a10, a11 = value_weights(lh, lw, k00, k01, k10, k11, m, cast)
                            wk = weight[k, g, c:end]
                            x00, x01 = x[n, h0, w0, g, c:end], x[n, h0, w1, g, c:end]
                            x10, x11 = x[n, h1, w0, g, c:end], x[n, h1, w1, g, c:end]
                            gw = grad_weight[task, k, g, c:end]
                            # One loop reads each corner once for the slopes' dot products
                            # and the weight gradient (3-20 % faster than two).
                            d00 = zero
                            d01 = zero
                            d10 = zero
                            d11 = zero
                            for t in range(end - c):
                                gcol = go[t] * wk[t]
                                run[t] = gcol
                                d00 += gcol * x00[t]
                                d01 += gcol * x01[t]
                                d10 += gcol * x10[t]
                                d11 += gcol * x11[t]
                                gw[t] += go[t] * (a00 * x00[t] + a01 * x01[t] + a10 * x10[t]
                                                  + a11 * x11[t])
                            if need_offset_mask:
                                slope_h, slope_w, value = dot_slopes(
                                    d00, d01, d10, d11, lh, lw, k00, k01, k10, k11)
                                store_slopes(grad_offset, grad_mask, has_mask, b, n, q, r, col,
                                             m, slope_h, slope_w, value)
                            scatter_corners(grad_x, n, g, c, end, h0, h1, w0, w1, a00, a01, a10,
                                            a11, input_scale, run)
