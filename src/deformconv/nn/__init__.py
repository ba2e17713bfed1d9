"""Modules with their own offset branches, and helpers to train and convert models."""

from ._offset import OffsetBranchMixin, offset_state_keys
from .convert import convert_to_deformable
from .deform_conv import DeformConv2d, DeformConv2dBase, DeformConv2dExternal
from .modes import eval_mode
from .param_groups import offset_lr_multipliers, offset_param_groups
from .psroi_pool import DeformPSRoIPool, PSRoIPool
from .roi_pool import DeformRoIPool

__all__ = [
    "DeformConv2d",
    "DeformConv2dBase",
    "DeformConv2dExternal",
    "DeformPSRoIPool",
    "DeformRoIPool",
    "OffsetBranchMixin",
    "PSRoIPool",
    "convert_to_deformable",
    "eval_mode",
    "offset_lr_multipliers",
    "offset_param_groups",
    "offset_state_keys",
]
