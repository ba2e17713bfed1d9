"""Tiny DeformConv2d stacks and hand-made offset records shared by the viz tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deformconv.nn import DeformConv2d
from deformconv.viz import LayerGeometry, OffsetRecord


def record(geometry: LayerGeometry, offset: Tensor, input_size: tuple[int, int],
           image_size: tuple[int, int] | None = None, name: str = "layer",
           mask: Tensor | None = None) -> OffsetRecord:
    """An OffsetRecord for ``offset`` (n, 2*G*kk, Hout, Wout) as a capture would make it."""
    images = tuple(range(offset.shape[0]))
    return OffsetRecord(name, geometry, input_size, offset.float(), mask, images,
                        image_size or input_size)


def scaling_offset(geometry: LayerGeometry, size: tuple[int, int], factor_h: float,
                   factor_w: float, n: int = 1) -> Tensor:
    """Offsets that stretch a centred kernel by ``factor`` along each axis, the same at every
    output pixel: point (i, j) moves by ((factor - 1) * (i - c) * dil) on each axis."""
    kh, kw = geometry.kernel_size
    kk = kh * kw
    offset = torch.zeros(n, geometry.offset_groups, kk, 2, *size)
    for k in range(kk):
        i, j = divmod(k, kw)
        offset[:, :, k, 0] = (factor_h - 1) * (i - (kh - 1) / 2) * geometry.dilation[0]
        offset[:, :, k, 1] = (factor_w - 1) * (j - (kw - 1) / 2) * geometry.dilation[1]
    return offset.flatten(1, 3)


class Stack(nn.Module):
    """Two deformable 3x3 convs with a plain conv and a ReLU between, nested in a block."""

    def __init__(self, modulated: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = nn.Sequential(
            DeformConv2d(4, 4, 3, padding=1, stride=2),
            nn.ReLU(),
            DeformConv2d(4, 4, 3, padding=2, dilation=2, offset_groups=2,
                         modulated=modulated),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(self.stem(x))


def randomize_offsets(model: nn.Module, scale: float = 0.2) -> None:
    """Give every offset branch small random weights, so offsets are not all zero."""
    for module in model.modules():
        if isinstance(module, DeformConv2d):
            with torch.no_grad():
                module.conv_offset.weight.normal_(0, scale)
                module.conv_offset.bias.normal_(0, scale)
