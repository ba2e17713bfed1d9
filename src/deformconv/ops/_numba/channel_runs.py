"""Per-sample arithmetic shared by the deform_conv2d kernels (inlined): where a sample
reads (``locate``), how a backward task splits channels (``block_task``), and what a sample
does with channel runs.

A sample's four corner runs ``x00, x01, x10, x11`` (its channels at the four corners,
contiguous) combine with the corner weights from ``bilinear.corners``; a "run" is a
sample's channels in the columns or their gradient.
"""

from __future__ import annotations

import numba

from .bilinear import SLOPE_LOWER, corners


@numba.njit(inline="always", cache=True)
def block_task(task, channel_blocks, channels):
    """``(n, b, c, end)`` of a backward task: image ``n``, channel block ``b`` and that
    block's share ``c:end`` of an offset group's ``channels``."""
    n = task // channel_blocks
    b = task - n * channel_blocks
    return n, b, b * channels // channel_blocks, (b + 1) * channels // channel_blocks


@numba.njit(inline="always", cache=True)
def locate(offset, n, q, r, col, y, i, j, stride, pad, dil, height, width, slope_support):
    """``bilinear.corners`` (on the slopes' support with ``slope_support``) of sample ``q``
    (offset group × kernel point ``(i, j)``) of the tile's output pixel ``(r, col)``, which
    is row ``y`` of its image: the kernel point's grid position moved by the offset."""
    h = y * stride[0] - pad[0] + i * dil[0] + offset[n, 2 * q, r, col]
    w = col * stride[1] - pad[1] + j * dil[1] + offset[n, 2 * q + 1, r, col]
    return corners(h, w, height, width, SLOPE_LOWER if slope_support else -1.0)


@numba.njit(inline="always", cache=True)
def row_positions(offset, mask, has_mask, n, g, r, y, kw, stride, pad, dil, height, width, cast,
                  corner, corner_weight):
    """Where the samples of offset group ``g`` in the tile's output row ``r`` (row ``y`` of
    image ``n``) read, into ``row_scratch``-shaped buffers: ``corner[:, k, col]`` the corner
    rows and columns ``(h0, h1, w0, w1)``, ``corner_weight[:, k, col]`` the value weights
    times the mask, as ``cast``. A sample outside the plane reads corner (0, 0) with zero
    weights. The loop over columns is branch-free, so LLVM vectorises it."""
    kk, wout = corner.shape[1], corner.shape[2]
    for i in range(kk // kw):
        for j in range(kw):
            k = i * kw + j
            q = g * kk + k
            for col in range(wout):
                _, h0, h1, w0, w1, lh, lw, k00, k01, k10, k11 = locate(
                    offset, n, q, r, col, y, i, j, stride, pad, dil, height, width, False)
                m = mask[n, q, r, col] if has_mask else 1.0
                a00, a01, a10, a11 = value_weights(lh, lw, k00, k01, k10, k11, m, cast)
                corner[0, k, col], corner[1, k, col] = h0, h1
                corner[2, k, col], corner[3, k, col] = w0, w1
                corner_weight[0, k, col], corner_weight[1, k, col] = a00, a01
                corner_weight[2, k, col], corner_weight[3, k, col] = a10, a11


@numba.njit(inline="always", cache=True)
def value_weights(lh, lw, k00, k01, k10, k11, scale, cast):
    """The four corner weights of a sample times ``scale`` (the mask), as ``cast``."""
    return (cast(scale * (1 - lh) * (1 - lw) * k00), cast(scale * (1 - lh) * lw * k01),
            cast(scale * lh * (1 - lw) * k10), cast(scale * lh * lw * k11))


@numba.njit(inline="always", cache=True)
def blend(dst, a00, a01, a10, a11, x00, x01, x10, x11):
    """``dst = a00 * x00 + a01 * x01 + a10 * x10 + a11 * x11`` over a channel run."""
    for t in range(dst.shape[0]):
        dst[t] = a00 * x00[t] + a01 * x01[t] + a10 * x10[t] + a11 * x11[t]


@numba.njit(inline="always", cache=True)
def slopes(run, x00, x01, x10, x11, lh, lw, k00, k01, k10, k11, zero):
    """``dot_slopes`` of one sample (no mask) from its gradient ``run`` and corner runs."""
    d00 = zero
    d01 = zero
    d10 = zero
    d11 = zero
    for t in range(run.shape[0]):
        gcol = run[t]
        d00 += gcol * x00[t]
        d01 += gcol * x01[t]
        d10 += gcol * x10[t]
        d11 += gcol * x11[t]
    return dot_slopes(d00, d01, d10, d11, lh, lw, k00, k01, k10, k11)


@numba.njit(inline="always", cache=True)
def dot_slopes(d00, d01, d10, d11, lh, lw, k00, k01, k10, k11):
    """``<run, d sample / d h>``, ``<run, d sample / d w>`` and ``<run, sample>`` of one
    sample (no mask) from the four corner dot products ``d00 .. d11 = <run, corner run>``."""
    slope_h = lw * (k11 * d11 - k01 * d01) + (1 - lw) * (k10 * d10 - k00 * d00)
    slope_w = lh * (k11 * d11 - k10 * d10) + (1 - lh) * (k01 * d01 - k00 * d00)
    value = (1 - lh) * ((1 - lw) * k00 * d00 + lw * k01 * d01) + lh * (
        (1 - lw) * k10 * d10 + lw * k11 * d11)
    return slope_h, slope_w, value


@numba.njit(inline="always", cache=True)
def scatter(target, weight, run):
    """``target += weight * run``; nothing for a zero weight (a corner outside the image,
    a zero mask, or no input gradient wanted)."""
    if weight != 0:
        for t in range(run.shape[0]):
            target[t] += weight * run[t]


@numba.njit(inline="always", cache=True)
def store_slopes(grad_offset, grad_mask, has_mask, b, n, q, r, col, m, slope_h, slope_w,
                 value):
    """Write one sample's offset gradient (``m`` times the slopes) and, with a mask, its
    mask gradient (the value) into part ``b``."""
    grad_offset[b, n, 2 * q, r, col] = m * slope_h
    grad_offset[b, n, 2 * q + 1, r, col] = m * slope_w
    if has_mask:
        grad_mask[b, n, q, r, col] = value


@numba.njit(inline="always", cache=True)
def scatter_corners(grad_x, n, g, c, end, h0, h1, w0, w1, a00, a01, a10, a11, scale, run):
    """Scatter a sample's gradient ``run`` times ``scale`` (1, or 0 for no input gradient)
    into its four corners of ``grad_x`` (channels ``c:end`` of group ``g``) with the value
    weights ``a00 .. a11``, one loop per corner: clamped corners may share a cell."""
    scatter(grad_x[n, h0, w0, g, c:end], a00 * scale, run)
    scatter(grad_x[n, h0, w1, g, c:end], a01 * scale, run)
    scatter(grad_x[n, h1, w0, g, c:end], a10 * scale, run)
    scatter(grad_x[n, h1, w1, g, c:end], a11 * scale, run)
