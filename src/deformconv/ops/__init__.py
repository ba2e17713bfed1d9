"""Functional ops, registered with ``torch.library`` under the ``deformconv`` namespace."""

from ._checks import NaNOffsetError
from ._flops import register_with_flop_counter
from .deform_conv import deform_conv2d
from .deform_psroi_pool import deform_psroi_pool
from .deform_roi_pool import deform_roi_pool

register_with_flop_counter()

__all__ = ["NaNOffsetError", "deform_conv2d", "deform_psroi_pool", "deform_roi_pool"]
