"""Feature-map <-> image pixel coordinates of the sampling points of convs.

Convention (pixel-index coordinates: pixel ``i`` has its centre at ``i``): a feature map of
cumulative stride ``s`` made by padded ("same") convs and pools, as in every model of this
library (3×3 stride-2 convs with padding 1, ResNet's 7×7/2 stem with padding 3 and 3×3/2
max-pool with padding 1), has cell ``f`` centred on image pixel ``image = s * f``: the
middle of the window the cell sees. Such layers make ``ceil(H / s)`` cells from ``H``
pixels, so an image side that is not a multiple of ``s`` does not give ``s`` as the size
ratio (100 px at stride 16: 7 cells, a ratio of 14.3): :func:`cumulative_stride` finds ``s``.
RoIAlign's boxes use another convention (see ``deformconv.viz.roi``).
"""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["cumulative_stride", "feature_to_image", "image_to_feature"]


def cumulative_stride(image_size: int, feature_size: int) -> float:
    """The stride ``s`` of a feature map of ``feature_size`` cells made from ``image_size``
    pixels by padded layers: ``ceil(image_size / s) == feature_size``.

    The integers that fit lie in ``[image / feature, image / (feature - 1))``, which holds at
    most one power of two: that one (the strides of this library's models), else the
    smallest integer; else (not made by padded layers) the size ratio. A 1-cell map fits
    any stride from the image side on: the size ratio, the image side, stands for it.
    """
    low = image_size / feature_size
    if feature_size <= 1:
        return low
    high = image_size / (feature_size - 1)
    power = 2 ** math.ceil(math.log2(low)) if low > 0 else 0
    if 1 <= power < high:
        return float(power)
    smallest = math.ceil(low)
    return float(smallest) if smallest < high else low


def feature_to_image(coord: Tensor, stride: Tensor | float) -> Tensor:
    """``(..., 2)`` (y, x) feature coordinates -> image pixel coordinates, ``stride`` ``(2,)``
    (stride_y, stride_x) or a number."""
    return coord * stride


def image_to_feature(coord: Tensor, stride: Tensor | float) -> Tensor:
    """Inverse of :func:`feature_to_image`."""
    return coord / stride
