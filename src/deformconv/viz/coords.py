"""Feature-map <-> image pixel coordinates.

Convention (pixel-index coordinates: pixel ``i`` has its centre at ``i``): a feature map of
cumulative stride ``s`` has cell ``f`` covering image pixels ``[f*s, (f+1)*s)``, so its centre
is ``image = (f + 0.5) * s - 0.5``. RoIAlign's ``aligned=True`` uses the same convention
(``feature = box * spatial_scale - 0.5`` for box edges), so RoIs and sampling points share it.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["feature_to_image", "image_to_feature"]


def feature_to_image(coord: Tensor, stride: Tensor | float) -> Tensor:
    """``(..., 2)`` (y, x) feature coordinates -> image pixel coordinates, ``stride`` ``(2,)``
    (stride_y, stride_x) or a number."""
    return (coord + 0.5) * stride - 0.5


def image_to_feature(coord: Tensor, stride: Tensor | float) -> Tensor:
    """Inverse of :func:`feature_to_image`."""
    return (coord + 0.5) / stride - 0.5
