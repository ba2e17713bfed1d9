"""Bilinear sampling arithmetic shared by the Triton kernels (docs/OPS.md, "Bilinear sampling").

``corners`` gives the ``floor`` corners of a block of samples and which of them lie in the
plane; callers load the corners with those masks (a corner outside reads 0). There is no
separate "inside" test: a sample at ``h <= -1`` or ``h >= H`` has no corner inside, and
at ``h == -1`` the derivative is the right-hand one (row 0 is the lower corner), as torchvision's.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def far_clamp(coord, size):
    """Move coordinates beyond ``[-2, size + 1]`` (and NaN) to those bounds.

    Every corner there is outside the plane either way; this keeps ``floor`` and the
    integer conversion finite.
    """
    coord = tl.where(coord > -2.0, coord, -2.0)
    return tl.where(coord < size + 1.0, coord, size + 1.0)


@triton.jit
def corners(h, w, height, width):
    """``(h0, w0, lh, lw, ok00, ok01, ok10, ok11)`` of float32 samples ``(h, w)``.

    ``h0, w0`` (int32) is the top-left corner, ``lh, lw`` the fractions, ``okYX`` whether
    corner ``(h0 + Y, w0 + X)`` lies in the ``height × width`` plane.
    """
    h = far_clamp(h, height)
    w = far_clamp(w, width)
    h_floor = tl.floor(h)
    w_floor = tl.floor(w)
    h0 = h_floor.to(tl.int32)
    w0 = w_floor.to(tl.int32)
    top = (h0 >= 0) & (h0 < height)
    bottom = (h0 >= -1) & (h0 + 1 < height)
    left = (w0 >= 0) & (w0 < width)
    right = (w0 >= -1) & (w0 + 1 < width)
    return (h0, w0, h - h_floor, w - w_floor,
            top & left, top & right, bottom & left, bottom & right)


@triton.jit
def corner_offsets(h0, w0, stride_h, stride_w):
    """Element offsets (int64) of the four corners in a plane with these strides."""
    top_left = h0.to(tl.int64) * stride_h + w0.to(tl.int64) * stride_w
    return top_left, top_left + stride_w, top_left + stride_h, top_left + stride_h + stride_w


@triton.jit
def load_corner(rows, offset, ok, channels, channels_ok):
    """``[BLOCK, BLOCK_C]`` float32 values at corner ``offset`` of each row's image.

    ``rows`` are per-sample base pointers, ``channels`` channel offsets (elements).
    """
    return tl.load(rows[:, None] + (offset[:, None] + channels[None, :]),
                   mask=ok[:, None] & channels_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def clamp_into_plane(coord, size):
    """RoI pooling's clamp into ``[0, size - 1]``, and whether the value moves with
    ``coord`` there (1 inside ``[0, size - 1)``, right-hand derivative, else 0)."""
    moves = (coord >= 0.0) & (coord < size - 1.0)
    return tl.minimum(tl.maximum(coord, 0.0), size - 1.0), moves


@triton.jit
def interpolate(v00, v01, v10, v11, lh, lw):
    """Bilinear value from the corner values (``lh``, ``lw`` broadcast to their shape)."""
    return (1.0 - lh) * ((1.0 - lw) * v00 + lw * v01) + lh * ((1.0 - lw) * v10 + lw * v11)


@triton.jit
def slopes(v00, v01, v10, v11, lh, lw):
    """``(d value / d h, d value / d w)`` with the same ``floor`` corners."""
    return (1.0 - lw) * (v10 - v00) + lw * (v11 - v01), (1.0 - lh) * (v01 - v00) + lh * (v11 - v10)


@triton.jit
def scatter_corners(ptrs, o00, o01, o10, o11, ok00, ok01, ok10, ok11, value, lh, lw):
    """Atomically add ``value`` times each corner's weight at ``ptrs + oYX`` (float32).

    All arguments broadcast to ``value``'s shape; ``okYX`` masks corners outside the plane.
    """
    tl.atomic_add(ptrs + o00, value * ((1.0 - lh) * (1.0 - lw)), mask=ok00, sem="relaxed")
    tl.atomic_add(ptrs + o01, value * ((1.0 - lh) * lw), mask=ok01, sem="relaxed")
    tl.atomic_add(ptrs + o10, value * (lh * (1.0 - lw)), mask=ok10, sem="relaxed")
    tl.atomic_add(ptrs + o11, value * (lh * lw), mask=ok11, sem="relaxed")
