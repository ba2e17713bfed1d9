"""Functional ops, registered with ``torch.library`` under the ``deformconv`` namespace."""

from ._checks import NaNOffsetError
from .deform_conv import deform_conv2d
from .deform_psroi_pool import deform_psroi_pool
from .deform_roi_pool import deform_roi_pool

__all__ = ["NaNOffsetError", "deform_conv2d", "deform_psroi_pool", "deform_roi_pool"]
