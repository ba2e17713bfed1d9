"""deformconv: deformable convolution and deformable RoI pooling for PyTorch."""

from . import nn, ops

__version__ = "0.1.0"
__all__ = ["__version__", "nn", "ops"]
