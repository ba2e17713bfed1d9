"""Rasteriser primitives against closed-form answers."""

from __future__ import annotations

import math

import numpy as np

from deformconv.data.render import (
    Placement,
    ellipse_inside,
    polygon_inside,
    radial_inside,
    stroke_mask,
    upsample,
)


def _grid(n: int = 41) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(-1.5, 1.5, n)
    return np.meshgrid(t, t)


def test_polygon_inside_square_and_concave_star() -> None:
    u, v = _grid()
    square = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=float)
    inside = polygon_inside(u, v, square)
    expected = (np.abs(u) < 1) & (np.abs(v) < 1)
    assert np.array_equal(inside, expected)
    # a concave "L": the notch must be outside
    ell = np.array([(0, 0), (1, 0), (1, 0.4), (0.4, 0.4), (0.4, 1), (0, 1)], dtype=float)
    pts = np.array([0.2, 0.7, 0.7]), np.array([0.7, 0.2, 0.7])
    assert polygon_inside(*pts, ell).tolist() == [True, True, False]


def test_ellipse_and_stroke_distance() -> None:
    u, v = _grid()
    assert np.array_equal(ellipse_inside(u, v), u * u + v * v <= 1)
    x, y = np.meshgrid(np.arange(20) + 0.5, np.arange(10) + 0.5)
    seg = np.array([[[2.0, 5.0], [17.0, 5.0]]])
    hit = stroke_mask(x, y, seg, thickness=3.0)
    dx = np.maximum(np.maximum(2.0 - x, x - 17.0), 0)
    assert np.array_equal(hit, dx**2 + (y - 5) ** 2 <= 1.5**2)
    assert not stroke_mask(x, y, seg[:0], 3.0).any()


def test_placement_round_trip_and_window() -> None:
    place = Placement(cx=30.0, cy=20.0, a=10.0, b=4.0, angle=math.radians(30))
    local = np.array([[1.0, 0.0], [0.0, -1.0], [0.3, 0.7]])
    img = place.to_image(local)
    u, v = place.to_local(img[:, 0], img[:, 1])
    assert np.allclose(np.stack([u, v], 1), local)
    rows, cols = place.window(40, 64)
    assert rows.start <= img[:, 1].min() and img[:, 1].max() <= rows.stop
    assert cols.start <= img[:, 0].min() and img[:, 0].max() <= cols.stop


def test_upsample_constant_and_linear() -> None:
    grid = np.full((3, 4, 2), 0.25, dtype=np.float32)
    assert np.allclose(upsample(grid, 12, 16), 0.25)
    ramp = np.arange(4, dtype=np.float32)[None, :, None].repeat(2, 0)
    out = upsample(ramp, 2, 8)[0, :, 0]
    assert np.all(np.diff(out) >= 0) and out[0] == 0 and out[-1] == 3


def test_radial_blob_reaches_the_unit_circle() -> None:
    u, v = _grid(81)
    flat = np.array([[0.0, 0.3], [0.0, 1.0]])
    assert np.array_equal(radial_inside(u, v, flat), u * u + v * v <= 1)
    bumpy = np.array([[0.2, 0.0], [0.1, 1.0], [0.15, 2.0]])
    phi = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    inside_at = [radial_inside(rr * np.cos(phi), rr * np.sin(phi), bumpy) for rr in (0.98, 1.02)]
    assert inside_at[0].any() and not inside_at[1].any()  # touches radius 1, never beyond
    assert not inside_at[0].all()  # and is not a disk
