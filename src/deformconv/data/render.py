"""Rasterisers for the synthetic scenes: filled/outlined shapes, stroked glyphs, textures.

Pure numpy. Every shape lives in a local frame ``(u, v) in [-1, 1]^2`` that is scaled by
the object's half extents ``(a, b)`` (pixels), rotated by ``angle`` and moved to its
``center``. Pixel ``(row y, col x)`` is sampled at its centre ``(x + 0.5, y + 0.5)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Placement",
    "ellipse_inside",
    "polygon_inside",
    "polyline_segments",
    "radial_inside",
    "stroke_mask",
    "upsample",
]


@dataclass(frozen=True)
class Placement:
    """Where an object sits: centre ``(cx, cy)``, half extents ``(a, b)`` px, angle (radians)."""

    cx: float
    cy: float
    a: float
    b: float
    angle: float

    def window(self, height: int, width: int, pad: float = 1.0) -> tuple[slice, slice]:
        """Rows and columns of the image that the rotated extent box can touch."""
        c, s = abs(np.cos(self.angle)), abs(np.sin(self.angle))
        hx, hy = self.a * c + self.b * s + pad, self.a * s + self.b * c + pad
        x0, x1 = max(0, int(np.floor(self.cx - hx))), min(width, int(np.ceil(self.cx + hx)))
        y0, y1 = max(0, int(np.floor(self.cy - hy))), min(height, int(np.ceil(self.cy + hy)))
        return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))

    def pixel_centres(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Image coordinates ``(x, y)`` of the pixel centres in a window, each (h, w)."""
        ys = np.arange(rows.start, rows.stop, dtype=np.float32) + 0.5
        xs = np.arange(cols.start, cols.stop, dtype=np.float32) + 0.5
        return np.meshgrid(xs, ys)

    def to_local(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image coordinates -> local ``(u, v)`` (inverse rotation, then divide by extents)."""
        dx, dy = x - self.cx, y - self.cy
        c, s = np.cos(self.angle), np.sin(self.angle)
        return (c * dx + s * dy) / self.a, (-s * dx + c * dy) / self.b

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Local points (..., 2) -> image coordinates (..., 2)."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        u, v = points[..., 0] * self.a, points[..., 1] * self.b
        return np.stack([self.cx + c * u - s * v, self.cy + s * u + c * v], axis=-1)


def polygon_inside(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test; ``vertices`` (N, 2) in order, any simple polygon."""
    inside = np.zeros(u.shape, dtype=bool)
    x1, y1 = vertices[:, 0], vertices[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    for ax, ay, bx, by in zip(x1, y1, x2, y2, strict=True):
        if ay == by:
            continue  # a horizontal edge never crosses a horizontal ray
        crosses = (ay > v) != (by > v)
        x_cross = ax + (v - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (u < x_cross)
    return inside


def ellipse_inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def radial_inside(u: np.ndarray, v: np.ndarray, harmonics: np.ndarray) -> np.ndarray:
    """Star-shaped blob ``rho <= r(phi) / max r``, ``r = 1 + sum_k c_k cos(k phi + p_k)``.

    ``harmonics`` is (K, 2): amplitude and phase of harmonics 2..K+1; the outline touches
    the unit circle where ``r`` peaks.
    """
    def radius(phi: np.ndarray) -> np.ndarray:
        r = np.ones_like(phi)
        for k, (amp, phase) in enumerate(harmonics, start=2):
            r += amp * np.cos(k * phi + phase)
        return r

    peak = radius(np.linspace(0, 2 * np.pi, 256, endpoint=False)).max()
    return u * u + v * v <= (radius(np.arctan2(v, u)) / peak) ** 2


def stroke_mask(
    x: np.ndarray, y: np.ndarray, segments: np.ndarray, thickness: float
) -> np.ndarray:
    """Pixels within ``thickness / 2`` of any segment; ``segments`` (S, 2, 2) image coords."""
    if len(segments) == 0:
        return np.zeros(x.shape, dtype=bool)
    p = np.stack([x.ravel(), y.ravel()], axis=1)[:, None, :]  # (M, 1, 2)
    a, d = segments[None, :, 0], segments[None, :, 1] - segments[None, :, 0]  # (1, S, 2)
    length2 = np.maximum((d * d).sum(-1), 1e-12)
    t = np.clip(((p - a) * d).sum(-1) / length2, 0.0, 1.0)  # (M, S)
    closest = a + t[..., None] * d
    dist2 = ((p - closest) ** 2).sum(-1).min(axis=1)
    return (dist2 <= (thickness / 2) ** 2).reshape(x.shape)


def polyline_segments(points: np.ndarray) -> np.ndarray:
    """(N, 2) polyline -> (N - 1, 2, 2) segments."""
    return np.stack([points[:-1], points[1:]], axis=1)


def upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a coarse (h, w, C) grid to (height, width, C), half-pixel centres."""
    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(pos).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (pos - i0).astype(np.float32)

    y0, y1, fy = axis(height, grid.shape[0])
    x0, x1, fx = axis(width, grid.shape[1])
    rows = grid[y0] * (1 - fy)[:, None, None] + grid[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
