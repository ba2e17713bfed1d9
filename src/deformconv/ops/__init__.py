"""Functional ops, registered with ``torch.library`` under the ``deformconv`` namespace."""

from .deform_conv import deform_conv2d

__all__ = ["deform_conv2d"]
