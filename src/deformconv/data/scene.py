"""Random cluttered scenes for the synthetic datasets, a pure function of ``(seed, index)``.

A scene is a textured background with distractors (lines, squiggles, arcs, dots that belong
to no class) and then 1..K class objects at widely varying scale (``min_object_size`` px to
``max_object_size`` of the image side, log-uniform), aspect ratio and rotation, painted one
over the other with bounded occlusion. Scale, shape and rotation vary far more than a
fixed square receptive field can cover, which is what deformable convolution is for.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import numpy as np

from ..ops.arguments import is_integer
from .catalog import CLASSES, DEFAULT_CLASSES, ShapeClass
from .render import (
    Placement,
    ellipse_inside,
    polygon_inside,
    polyline_segments,
    radial_inside,
    stroke_mask,
    upsample,
)

__all__ = ["Scene", "SceneConfig", "SceneGenerator", "boxes_from_masks"]

_MIN_PIXELS = 4  # an object must keep at least this many visible pixels
_MIN_CONTRAST = 0.35  # Euclidean RGB distance between an object and what is under it
_TRIES = 12  # placements tried per object before giving up on it
_MAX_CLUTTER = 1e6  # far past saturation (~10); huge values overflow float32 (inf, NaN)

_INT_FIELDS = ("min_objects", "max_objects", "max_distractors")
_REAL_FIELDS = ("min_object_size", "max_object_size", "max_aspect", "max_rotation",
                "outline_prob", "max_occlusion", "clutter")


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Sizes are in pixels unless noted."""

    image_size: int | tuple[int, int] = 128  # (H, W) or a square side
    classes: tuple[str, ...] = DEFAULT_CLASSES  # names from catalog.CLASSES
    min_objects: int = 1
    max_objects: int = 4
    min_object_size: float = 8.0  # longer side of the unrotated object
    max_object_size: float = 0.7  # fraction of the shorter image side
    max_aspect: float = 2.5  # aspect ratio drawn log-uniformly in [1/max, max]
    max_rotation: float = 180.0  # degrees, uniform in [-max, max]
    outline_prob: float = 0.3  # polygons and ellipses drawn as outlines this often
    max_occlusion: float = 0.5  # largest fraction of an object later ones may cover
    max_distractors: int = 8  # class-free clutter strokes, uniform in [0, max]
    clutter: float = 1.0  # strength of the background texture (0 = smooth gradient only)

    def __post_init__(self) -> None:
        size = self.image_size
        if isinstance(size, (tuple, list)) and len(size) == 2 and all(map(is_integer, size)):
            object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))
        elif is_integer(size):
            object.__setattr__(self, "image_size", (int(size), int(size)))  # type: ignore
        else:
            raise ValueError(f"image_size must be an int or (H, W) of ints, got {size!r}")
        object.__setattr__(self, "classes", tuple(self.classes))
        self.validate()

    @property
    def height(self) -> int:
        return self.image_size[0]  # type: ignore[index]

    @property
    def width(self) -> int:
        return self.image_size[1]  # type: ignore[index]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field: counts must be ints, the other
        numbers finite (NaN passes every comparison, and inf breaks the random draws)."""
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        for name in _INT_FIELDS:
            if not is_integer(getattr(self, name)):
                raise bad(name, "an int")
        for name in _REAL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) \
                    or not math.isfinite(value):
                raise bad(name, "a finite number")
        if min(self.image_size) < 16:  # type: ignore[arg-type]
            raise bad("image_size", "at least 16 px on each side")
        if not self.classes:
            raise bad("classes", "a non-empty sequence of class names")
        unknown = [c for c in self.classes if c not in CLASSES]
        if unknown:
            raise ValueError(f"classes has unknown names {unknown}; known: {sorted(CLASSES)}")
        if len(set(self.classes)) != len(self.classes):
            raise bad("classes", "free of duplicates")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if self.min_object_size < 3:
            raise bad("min_object_size", ">= 3 px")
        if not 0 < self.max_object_size <= 1:
            raise bad("max_object_size", "a fraction of the image side in (0, 1]")
        if self.max_object_size * min(self.image_size) < self.min_object_size:  # type: ignore
            raise ValueError(
                f"max_object_size * min(image_size) = "
                f"{self.max_object_size * min(self.image_size):.1f} px is smaller than "  # type: ignore
                f"min_object_size = {self.min_object_size} px"
            )
        if self.max_aspect < 1:
            raise bad("max_aspect", ">= 1")
        if not 0 <= self.max_rotation <= 180:
            raise bad("max_rotation", "in [0, 180] degrees")
        for name in ("outline_prob", "max_occlusion"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(name, "in [0, 1]")
        if self.max_distractors < 0:
            raise bad("max_distractors", ">= 0")
        if not 0 <= self.clutter <= _MAX_CLUTTER:
            raise bad("clutter", f"in [0, {_MAX_CLUTTER:g}]")

    def replace(self, **changes: object) -> SceneConfig:
        """A copy with some fields changed; unknown names raise ``TypeError`` listing the fields."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise TypeError(f"unknown scene option(s) {unknown}; valid: {sorted(fields)}")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass
class Scene:
    """One drawn scene. ``K`` objects in painting order (later ones on top).

    image   (H, W, 3) float32 in [0, 1]
    labels  (K,) int64 class index 0..C-1 into ``config.classes``
    masks   (K, H, W) bool, the visible pixels of each object (disjoint)
    boxes   (K, 4) float32 x1y1x2y2 tight around the visible pixels (x2, y2 exclusive)
    scales  (K,) float32 longer side of the unrotated object, pixels
    aspects (K,) float32 width / height before rotation
    angles  (K,) float32 rotation in degrees
    """

    image: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    scales: np.ndarray
    aspects: np.ndarray
    angles: np.ndarray


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(K, H, W) bool -> (K, 4) float32 x1y1x2y2 with exclusive x2, y2 (pixel edges)."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for k, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if len(rows):
            boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


@dataclass
class _Drawn:
    """An object's full-image mask, its bounding window and local ``(u, v)`` over the window."""

    mask: np.ndarray
    rows: slice
    cols: slice
    u: np.ndarray
    v: np.ndarray
    texture: str | None


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


class SceneGenerator:
    """Draws :class:`Scene` ``index`` of the stream ``seed``; any index, any order, same result."""

    def __init__(self, config: SceneConfig | None = None, seed: int = 0) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.config = config or SceneConfig()
        self.seed = seed
        self._classes = [CLASSES[name] for name in self.config.classes]
        h, w = self.config.height, self.config.width
        self._y, self._x = np.mgrid[0:h, 0:w].astype(np.float32)  # pixel grids, reused

    def __call__(self, index: int) -> Scene:
        if index < 0:
            raise IndexError(f"scene index must be >= 0, got {index}")
        cfg = self.config
        rng = np.random.default_rng([self.seed, int(index)])
        image = self._background(rng)
        for _ in range(rng.integers(0, cfg.max_distractors + 1)):
            self._distractor(rng, image)

        count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        labels: list[int] = []
        masks: list[np.ndarray] = []  # visible pixels, updated as later objects cover them
        areas: list[int] = []  # full (unoccluded) pixel counts
        params: list[tuple[float, float, float]] = []
        attempts = 0
        while len(labels) < count and attempts < _TRIES * max(count, 1):
            attempts += 1
            label = int(rng.integers(len(self._classes)))
            shape = self._classes[label]
            place, scale, aspect = self._placement(rng)
            drawn = self._rasterise(rng, shape, place)
            mask = drawn.mask
            area = int(mask.sum())
            if area < _MIN_PIXELS or not all(
                (m & ~mask).sum() >= max(_MIN_PIXELS, (1 - cfg.max_occlusion) * full)
                for m, full in zip(masks, areas, strict=True)
            ):
                continue
            self._paint(rng, image, drawn)
            for m in masks:
                m &= ~mask
            labels.append(label)
            masks.append(mask)
            areas.append(area)
            params.append((scale, aspect, math.degrees(place.angle)))
        if len(labels) < cfg.min_objects:
            raise RuntimeError(
                f"could not place {cfg.min_objects} objects in scene {index} (seed {self.seed}); "
                "lower min_objects or max_object_size, or raise max_occlusion"
            )

        h, w = cfg.height, cfg.width
        mask_array = np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)
        p = np.asarray(params, dtype=np.float32).reshape(-1, 3)
        return Scene(
            image=np.clip(image, 0.0, 1.0).astype(np.float32, copy=False),
            labels=np.asarray(labels, dtype=np.int64),
            masks=mask_array,
            boxes=boxes_from_masks(mask_array),
            scales=p[:, 0].copy(),
            aspects=p[:, 1].copy(),
            angles=p[:, 2].copy(),
        )

    # -- background and clutter -------------------------------------------------------------

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        cfg, h, w = self.config, self.config.height, self.config.width
        grid = rng.uniform(0.1, 0.9, size=(rng.integers(2, 6), rng.integers(2, 6), 3))
        image = upsample(grid.astype(np.float32), h, w)
        if cfg.clutter > 0:
            y, x = self._y, self._x
            kind = rng.integers(3)
            theta = rng.uniform(0, np.pi)
            periods = rng.uniform(3, 14)
            phase = (x * np.cos(theta) + y * np.sin(theta)) * (2 * np.pi * periods / max(h, w))
            if kind == 0:  # stripes
                pattern = np.sin(phase + rng.uniform(0, 2 * np.pi))
            elif kind == 1:  # checker / grid
                other = (-x * np.sin(theta) + y * np.cos(theta)) * (2 * np.pi * periods / max(h, w))
                pattern = np.sign(np.sin(phase) * np.sin(other))
            else:  # blotchy noise
                coarse = rng.standard_normal((h // 8 + 1, w // 8 + 1, 1), dtype=np.float32)
                pattern = upsample(coarse, h, w)[..., 0]
            tint = rng.uniform(-1, 1, size=3).astype(np.float32)
            image += cfg.clutter * rng.uniform(0.04, 0.14) * pattern[..., None] * tint
            image += (0.03 * cfg.clutter) * rng.standard_normal(image.shape, dtype=np.float32)
        return image

    def _distractor(self, rng: np.random.Generator, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        side = min(h, w)
        start = rng.uniform((0, 0), (w, h))
        kind = rng.integers(4)
        if kind == 0:  # straight line
            length, angle = rng.uniform(0.1, 0.6) * side, rng.uniform(0, 2 * np.pi)
            points = np.stack([start, start + length * np.array([np.cos(angle), np.sin(angle)])])
            pen = rng.uniform(1.0, 2.5)
        elif kind == 1:  # squiggle
            points = start + np.cumsum(rng.normal(0, 0.06 * side, size=(rng.integers(3, 7), 2)), 0)
            pen = rng.uniform(1.0, 2.0)
        elif kind == 2:  # open arc
            r = rng.uniform(3, max(3.0, 0.15 * side))  # images under 20 px: 3
            t = np.linspace(0, rng.uniform(1.0, 3.5), 8) + rng.uniform(0, 2 * np.pi)
            points = start + r * np.stack([np.cos(t), np.sin(t)], axis=1)
            pen = rng.uniform(1.0, 2.0)
        else:  # dot
            points = np.stack([start, start])
            pen = rng.uniform(2.0, 5.0)
        segments = polyline_segments(points)
        lo = np.floor(points.min(0) - pen).astype(int)
        hi = np.ceil(points.max(0) + pen).astype(int)
        rows = slice(max(0, lo[1]), max(0, min(h, hi[1])))
        cols = slice(max(0, lo[0]), max(0, min(w, hi[0])))
        if rows.stop <= rows.start or cols.stop <= cols.start:
            return
        y, x = np.mgrid[rows, cols].astype(np.float32) + 0.5
        hit = stroke_mask(x, y, segments, pen)
        image[rows, cols][hit] = rng.uniform(0, 1, size=3)

    # -- objects ---------------------------------------------------------------------------

    def _placement(self, rng: np.random.Generator) -> tuple[Placement, float, float]:
        cfg, h, w = self.config, self.config.height, self.config.width
        scale = _log_uniform(rng, cfg.min_object_size, cfg.max_object_size * min(h, w))
        aspect = _log_uniform(rng, 1 / cfg.max_aspect, cfg.max_aspect)
        a = b = scale / 2
        if aspect >= 1:
            b = a / aspect
        else:
            a = b * aspect
        angle = math.radians(rng.uniform(-cfg.max_rotation, cfg.max_rotation))
        c, s = abs(math.cos(angle)), abs(math.sin(angle))
        hx, hy = a * c + b * s, a * s + b * c
        # Keep the rotated extent inside the image where it fits; otherwise centre it loosely.
        cx = rng.uniform(*sorted((hx, w - hx)))
        cy = rng.uniform(*sorted((hy, h - hy)))
        return Placement(cx, cy, a, b, angle), scale, aspect

    def _rasterise(self, rng: np.random.Generator, shape: ShapeClass, place: Placement) -> _Drawn:
        """Where the object lands: full-image mask plus the window and local coordinates."""
        h, w = self.config.height, self.config.width
        rows, cols = place.window(h, w)
        x, y = place.pixel_centres(rows, cols)
        u, v = place.to_local(x, y)
        texture = None
        if shape.kind == "glyph":  # pen strokes with a hand-drawn wobble
            pen = max(1.2, 0.16 * max(place.a, place.b))
            segments = [
                polyline_segments(place.to_image(s + rng.normal(0, 0.05, size=s.shape)))
                for s in shape.strokes
            ]
            inside = stroke_mask(x, y, np.concatenate(segments), pen)
        elif shape.kind == "blob":
            harmonics = np.stack([rng.uniform(0, 0.25, 4), rng.uniform(0, 2 * np.pi, 4)], 1)
            inside = radial_inside(u, v, harmonics)
            texture = shape.texture
        else:
            def test(uu: np.ndarray, vv: np.ndarray) -> np.ndarray:
                if shape.kind == "ellipse":
                    return ellipse_inside(uu, vv)
                return polygon_inside(uu, vv, shape.vertices)

            inside = test(u, v)
            pen = max(1.2, 0.15 * min(place.a, place.b))
            if rng.uniform() < self.config.outline_prob and pen < min(place.a, place.b):
                # outline: remove the same shape shrunk by about ``pen`` pixels
                inside &= ~test(u / (1 - pen / place.a), v / (1 - pen / place.b))
        mask = np.zeros((h, w), dtype=bool)
        mask[rows, cols] = inside
        return _Drawn(mask, rows, cols, u, v, texture)

    @staticmethod
    def _paint(rng: np.random.Generator, image: np.ndarray, drawn: _Drawn) -> None:
        """Colour the object's pixels so they stand out from what lies under them."""
        window = image[drawn.rows, drawn.cols]  # a view: writes go to ``image``
        sel = drawn.mask[drawn.rows, drawn.cols]
        u, v = drawn.u[sel], drawn.v[sel]
        first = _contrasting(rng, window[sel].mean(0))
        if drawn.texture is None:  # solid colour with a soft linear shading
            psi = rng.uniform(0, 2 * np.pi)
            ramp = (np.cos(psi) * u + np.sin(psi) * v) * rng.uniform(0, 0.12)
            window[sel] = first + ramp[:, None]
            return
        second = _contrasting(rng, first)
        if drawn.texture == "stripes":
            psi, freq = rng.uniform(0, np.pi), rng.uniform(2.0, 3.5)
            on = np.sin(np.pi * freq * (np.cos(psi) * u + np.sin(psi) * v)) > 0
        else:  # spots on a grid in the object's frame
            k = rng.uniform(2.0, 3.0)
            on = ((u * k) % 1 - 0.5) ** 2 + ((v * k) % 1 - 0.5) ** 2 < 0.3**2
        window[sel] = np.where(on[:, None], second, first)


def _contrasting(rng: np.random.Generator, reference: np.ndarray) -> np.ndarray:
    """A random colour at least ``_MIN_CONTRAST`` away from ``reference`` (3,)."""
    for _ in range(8):
        colour = rng.uniform(0, 1, size=3).astype(np.float32)
        if np.linalg.norm(colour - reference) >= _MIN_CONTRAST:
            return colour
    return np.where(reference > 0.5, reference - 0.5, reference + 0.5).astype(np.float32)
