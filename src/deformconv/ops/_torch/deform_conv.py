"""deform_conv2d on any device: the reference op applied to bounded tiles.

A band of output rows ``y0:y1`` is the reference op on the offset rows ``y0:y1`` with
the row padding shifted by ``y0 * stride_h``, so tiling needs no extra sampling code.
The backward differentiates each tile's recomputed forward (``autodiff.vjp``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from .._utils import Tile, tiles
from .autodiff import vjp

Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

# The reference holds about this many column-sized temporaries per tile.
_TEMPORARIES = 6


def _tile_forward(tile: Tile, input: Tensor, offset: Tensor, weight: Tensor,
                  mask: Tensor | None, geometry: Geometry) -> Tensor:
    stride, padding, dilation = geometry
    rows = slice(tile.y0, tile.y1)
    shifted = (padding[0] - tile.y0 * stride[0], padding[1])
    return reference.deform_conv2d(
        input, offset[:, :, rows], weight, None, stride, shifted, dilation,
        None if mask is None else mask[:, :, rows],
    )


def _row_bytes(input: Tensor, offset: Tensor, weight: Tensor) -> int:
    kh, kw = weight.shape[2:]
    return _TEMPORARIES * offset.shape[3] * kh * kw * input.shape[1] * input.element_size()


def forward(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
            mask: Tensor | None, geometry: Geometry) -> Tensor:
    """(N, Cin, H, W) -> (N, Cout, Hout, Wout); arguments already checked."""
    n, cout = input.shape[0], weight.shape[0]
    hout, wout = offset.shape[2:]
    out = input.new_empty(n, cout, hout, wout)
    for tile in tiles(n, hout, _row_bytes(input, offset, weight)):
        images = slice(tile.n0, tile.n1)
        out[images, :, tile.y0 : tile.y1] = _tile_forward(
            tile, input[images], offset[images], weight,
            None if mask is None else mask[images], geometry,
        )
    if bias is not None:
        out += bias.view(1, cout, 1, 1)
    return out


def backward(grad_out: Tensor, input: Tensor, offset: Tensor, weight: Tensor,
             mask: Tensor | None, geometry: Geometry, need_input: bool, need_offset_mask: bool,
             need_weight: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (input, offset, weight, mask), like the Numba backward."""
    del need_input, need_offset_mask, need_weight  # one vjp computes all of them at once
    n, hout = input.shape[0], offset.shape[2]
    grad_input = torch.zeros_like(input)
    grad_offset = torch.zeros_like(offset)
    grad_weight = torch.zeros_like(weight)
    grad_mask = torch.zeros_like(mask) if mask is not None else offset.new_empty(0)
    for tile in tiles(n, hout, 2 * _row_bytes(input, offset, weight)):
        images, rows = slice(tile.n0, tile.n1), slice(tile.y0, tile.y1)
        primals = (input[images], offset[images], weight)
        if mask is not None:
            primals += (mask[images],)

        def tile_forward(x, off, w, m=None, tile=tile):
            return _tile_forward(tile, x, off, w, m, geometry)

        grads = vjp(tile_forward, primals, grad_out[images, :, rows])
        grad_input[images] += grads[0]
        grad_offset[images, :, rows] = grads[1][:, :, rows]
        grad_weight += grads[2]
        if mask is not None:
            grad_mask[images, :, rows] = grads[3][:, :, rows]
    return grad_input, grad_offset, grad_weight, grad_mask
