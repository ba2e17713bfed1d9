"""Sampling rule shared by the RoI pooling kernels: clamp into the plane, then bilinear.

Both RoI pooling ops clamp a sample that passed their own "inside" test into
``[0, H-1] × [0, W-1]`` and interpolate there (RoIAlign and the original
DeformablePSROIPooling). The derivative of the clamp is 0 where it holds the coordinate
still (below 0, and at or above the last row/column, where the interpolation is flat).
"""

from __future__ import annotations

import numba

from .bilinear import corners


@numba.njit(inline="always", cache=True)
def clamped_corners(h, w, height, width):
    """Return ``(h0, h1, w0, w1, lh, lw, k00, k01, k10, k11, dh, dw)`` for sample ``(h, w)``.

    The first ten are ``corners`` of the clamped position; ``dh``/``dw`` are 0 or 1: whether
    the value moves with ``h``/``w`` (right-hand derivative, so 1 at exactly 0).
    """
    dh = 1.0 if (h >= 0.0 and h < height - 1) else 0.0
    dw = 1.0 if (w >= 0.0 and w < width - 1) else 0.0
    h = min(max(h, 0.0), height - 1.0)
    w = min(max(w, 0.0), width - 1.0)
    _, h0, h1, w0, w1, lh, lw, k00, k01, k10, k11 = corners(h, w, height, width)
    return h0, h1, w0, w1, lh, lw, k00, k01, k10, k11, dh, dw


@numba.njit(inline="always", cache=True)
def value_weights(lh, lw, k00, k01, k10, k11):
    """Weights of the four corners in the interpolated value."""
    return (
        (1.0 - lh) * (1.0 - lw) * k00, (1.0 - lh) * lw * k01,
        lh * (1.0 - lw) * k10, lh * lw * k11,
    )


@numba.njit(inline="always", cache=True)
def slope_weights(lh, lw, k00, k01, k10, k11, dh, dw):
    """Weights of the four corners in d value / d h (first four) and d value / d w."""
    return (
        -dh * (1.0 - lw) * k00, -dh * lw * k01, dh * (1.0 - lw) * k10, dh * lw * k11,
        -dw * (1.0 - lh) * k00, dw * (1.0 - lh) * k01, -dw * lh * k10, dw * lh * k11,
    )
