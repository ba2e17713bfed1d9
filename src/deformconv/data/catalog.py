"""The object classes of the synthetic scenes: shapes in a local ``[-1, 1]^2`` frame.

A class is drawn as one of four kinds:
    polygon  filled or outlined polygon (``vertices`` (N, 2))
    ellipse  filled or outlined ellipse
    glyph    digit-like polylines stroked with a pen (``strokes``: list of (N, 2))
    blob     random star-shaped blob filled with a texture (``texture``: stripes or spots)
Local ``v`` points down, as image rows do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["CLASSES", "DEFAULT_CLASSES", "ShapeClass"]


@dataclass(frozen=True)
class ShapeClass:
    name: str
    kind: str  # "polygon" | "ellipse" | "glyph" | "blob"
    vertices: np.ndarray | None = None
    strokes: tuple[np.ndarray, ...] = field(default_factory=tuple)
    texture: str | None = None  # blob fill: "stripes" | "spots"


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float) -> np.ndarray:
    """Polyline along an elliptical arc, angles in degrees (clockwise on screen)."""
    steps = max(3, int(abs(stop - start) / 30) + 1)
    t = np.radians(np.linspace(start, stop, steps))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _line(*points: tuple[float, float]) -> np.ndarray:
    return np.asarray(points, dtype=np.float64)


def _star(points: int, inner: float) -> np.ndarray:
    angles = np.radians(-90 + np.arange(2 * points) * 180 / points)
    radius = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _cross(arm: float) -> np.ndarray:
    w = arm
    return _line((-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1),
                 (-w, w), (-1, w), (-1, -w), (-w, -w))


# Digits as pen strokes, roughly 0.6 wide and 1 tall in half-extent units.
_DIGITS: dict[str, tuple[np.ndarray, ...]] = {
    "0": (_arc(0, 0, 0.6, 1.0, 0, 360),),
    "1": (_line((-0.3, -0.65), (0.05, -1.0), (0.05, 1.0)),),
    "2": (np.concatenate([_arc(0, -0.45, 0.55, 0.5, 180, 400),
                          _line((-0.6, 1.0), (0.6, 1.0))]),),
    "3": (_arc(0, -0.5, 0.5, 0.45, 200, 450), _arc(0, 0.45, 0.58, 0.55, -90, 160)),
    "4": (_line((0.3, 1.0), (0.3, -1.0), (-0.6, 0.4), (0.6, 0.4)),),
    "5": (np.concatenate([_line((0.55, -1.0), (-0.45, -1.0), (-0.5, -0.05)),
                          _arc(0, 0.42, 0.58, 0.55, 235, 500)]),),
    "6": (_arc(0, 0.45, 0.55, 0.55, 0, 360), _line((0.4, -1.0), (-0.53, 0.35))),
    "7": (_line((-0.6, -1.0), (0.6, -1.0), (-0.15, 1.0)),),
    "8": (_arc(0, -0.5, 0.45, 0.45, 0, 360), _arc(0, 0.45, 0.58, 0.55, 0, 360)),
    "9": (_arc(0, -0.45, 0.55, 0.55, 0, 360), _line((0.53, -0.35), (-0.4, 1.0))),
}

CLASSES: dict[str, ShapeClass] = {
    "triangle": ShapeClass("triangle", "polygon", _line((0, -1), (1, 1), (-1, 1))),
    "rectangle": ShapeClass("rectangle", "polygon", _line((-1, -1), (1, -1), (1, 1), (-1, 1))),
    "star": ShapeClass("star", "polygon", _star(5, 0.42)),
    "cross": ShapeClass("cross", "polygon", _cross(0.32)),
    "ellipse": ShapeClass("ellipse", "ellipse"),
    **{f"digit_{d}": ShapeClass(f"digit_{d}", "glyph", strokes=s) for d, s in _DIGITS.items()},
    "striped_blob": ShapeClass("striped_blob", "blob", texture="stripes"),
    "spotted_blob": ShapeClass("spotted_blob", "blob", texture="spots"),
}

# Ten classes that stay distinct under any rotation, aspect change and horizontal flip
# (no 6/9, no 2/5 mirror pair, no 0 ~ outlined ellipse, no 1 ~ line distractor).
DEFAULT_CLASSES: tuple[str, ...] = (
    "triangle", "rectangle", "ellipse", "star", "cross",
    "digit_2", "digit_4", "digit_7", "striped_blob", "spotted_blob",
)
