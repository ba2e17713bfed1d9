"""Feature-map <-> image pixel coordinates of the sampling points of convs.

Convention (pixel-index coordinates: pixel ``i`` has its centre at ``i``): a feature map of
cumulative stride ``s`` made by padded ("same") convs and pools, as in every model of this
library (3×3 stride-2 convs with padding 1, ResNet's 7×7/2 stem with padding 3 and 3×3/2
max-pool with padding 1), has cell ``f`` centred on image pixel ``image = s * f``: the
middle of the window the cell sees. RoIAlign's boxes use another convention (see
``deformconv.viz.roi``).
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["feature_to_image", "image_to_feature"]


def feature_to_image(coord: Tensor, stride: Tensor | float) -> Tensor:
    """``(..., 2)`` (y, x) feature coordinates -> image pixel coordinates, ``stride`` ``(2,)``
    (stride_y, stride_x) or a number."""
    return coord * stride


def image_to_feature(coord: Tensor, stride: Tensor | float) -> Tensor:
    """Inverse of :func:`feature_to_image`."""
    return coord / stride
