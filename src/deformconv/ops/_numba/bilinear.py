"""Bilinear corner arithmetic shared by the Numba kernels (docs/OPS.md, "Bilinear sampling").

``corners`` turns a real sample position into four clamped corner indices and four
weights, with the weight of every corner outside the plane set to 0. Callers then read
the four corners unconditionally, which keeps their channel loops branch-free.
With ``lower=SLOPE_LOWER`` it does the same on the support of the position derivative,
which also holds the lines ``h == -1`` and ``w == -1``: the value is 0 there, but the
right-hand derivative (docs/OPS.md; torchvision's kernel) moves the sample onto row/column 0.
One function for both keeps the kernels' inlined code, and so their compile time, small.
"""

from __future__ import annotations

import math

import numba

_OUTSIDE = (False, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
# Below -1 by one float64 step: ``h > SLOPE_LOWER`` is ``h >= -1`` (the slopes' support).
SLOPE_LOWER = math.nextafter(-1.0, -2.0)


@numba.njit(inline="always", cache=True)
def corners(h, w, height, width, lower=-1.0):
    """Return ``(inside, h0, h1, w0, w1, lh, lw, k00, k01, k10, k11)`` for sample ``(h, w)``.

    ``inside`` is False for ``h <= lower``, ``h >= height``, ``w <= lower``, ``w >= width``
    and for NaN coordinates; then every weight is 0. ``lower`` is -1 for values and
    ``SLOPE_LOWER`` for the derivatives w.r.t. ``h`` and ``w``, whose support also holds
    the lines -1: there the corners are rows -1 and 0 (columns) with ``lh == 0``, so the
    value weights stay 0 and the ``h`` slope reads row 0, the right-hand derivative.
    ``h0, h1, w0, w1`` are clamped into the plane; ``k00 .. k11`` are 0 or 1 and say which
    corners lie inside it.
    """
    if not (h > lower and h < height and w > lower and w < width):
        return _OUTSIDE
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
