"""Bilinear corner arithmetic shared by the Numba kernels (SPEC: "Bilinear sampling").

``corners`` turns a real sample position into four clamped corner indices and four
weights, with the weight of every corner outside the plane set to 0. Callers then read
the four corners unconditionally, which keeps their channel loops branch-free.
``slope_corners`` does the same on the support of the position derivative, which also
holds the lines ``h == -1`` and ``w == -1``: the value is 0 there, but the right-hand
derivative (SPEC; torchvision's kernel) moves the sample onto row/column 0.
"""

from __future__ import annotations

import math

import numba

_OUTSIDE = (False, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@numba.njit(inline="always", cache=True)
def _clamped_corners(h, w, height, width):
    """``(True, h0, h1, w0, w1, lh, lw, k00, k01, k10, k11)`` for ``h, w`` in [-1, H) × [-1, W)."""
    fh = math.floor(h)
    fw = math.floor(w)
    lh = h - fh
    lw = w - fw
    h0 = int(fh)
    w0 = int(fw)
    kh0 = 1.0 if h0 >= 0 else 0.0
    kh1 = 1.0 if h0 + 1 < height else 0.0
    kw0 = 1.0 if w0 >= 0 else 0.0
    kw1 = 1.0 if w0 + 1 < width else 0.0
    h1 = min(h0 + 1, height - 1)
    w1 = min(w0 + 1, width - 1)
    h0 = max(h0, 0)
    w0 = max(w0, 0)
    return True, h0, h1, w0, w1, lh, lw, kh0 * kw0, kh0 * kw1, kh1 * kw0, kh1 * kw1


@numba.njit(inline="always", cache=True)
def corners(h, w, height, width):
    """Return ``(inside, h0, h1, w0, w1, lh, lw, k00, k01, k10, k11)`` for sample ``(h, w)``.

    ``inside`` is False for ``h <= -1``, ``h >= height``, ``w <= -1``, ``w >= width`` and for
    NaN coordinates; then every weight is 0. ``h0, h1, w0, w1`` are clamped into the plane;
    ``k00 .. k11`` are 0 or 1 and say which corners lie inside it.
    """
    if not (h > -1.0 and h < height and w > -1.0 and w < width):
        return _OUTSIDE
    return _clamped_corners(h, w, height, width)


@numba.njit(inline="always", cache=True)
def slope_corners(h, w, height, width):
    """``corners`` for the derivatives w.r.t. ``h`` and ``w``: ``inside`` also at -1.

    At ``h == -1`` (``w == -1``) the corners are rows -1 and 0 (columns) with ``lh == 0``:
    the value weights stay 0 and the ``h`` slope reads row 0, the right-hand derivative.
    """
    if not (h >= -1.0 and h < height and w >= -1.0 and w < width):
        return _OUTSIDE
    return _clamped_corners(h, w, height, width)
