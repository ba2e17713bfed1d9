"""deform_conv2d on any device with torch ops: gathered column tiles and one batched GEMM.

Per tile of images × output rows, every sample of every kernel point and offset group is
gathered at once (``bilinear`` over ``nb·G`` planes of ``Cin/G`` channels) into columns
``(nb, groups, Cin/groups·kh·kw, rows·Wout)``, which one ``matmul`` with the weight turns
into output rows. Tiles keep the columns within ``WORKSPACE_BYTES``. The backward
differentiates each tile's recomputed forward (``autodiff.vjp``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._workspace import Tile, tiles
from .autodiff import differentiating, vjp
from .bilinear import bilinear

Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

# Column-sized temporaries of one tile: four gathered corners, their weights, the columns.
_TEMPORARIES = 10


def _sample_positions(tile: Tile, offset: Tensor, kernel: tuple[int, int],
                      geometry: Geometry) -> tuple[Tensor, Tensor]:
    """``h, w (nb, G, kh*kw, rows, Wout)`` of the tile's samples; ``offset`` is the tile's."""
    (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w) = geometry
    kh, kw = kernel
    nb, _, rows, wout = offset.shape
    # The integer parts in int64, as the other backends form them: a float sum rounds
    # y*stride - pad above 2**53 (2**24 in float32) before i*dil brings it back.
    factory = {"dtype": torch.int64, "device": offset.device}
    offset = offset.view(nb, -1, kh * kw, 2, rows, wout)
    y = torch.arange(tile.y0, tile.y1, **factory) * stride_h - pad_h  # (rows,)
    x = torch.arange(wout, **factory) * stride_w - pad_w  # (Wout,)
    ki = torch.arange(kh, **factory).repeat_interleave(kw) * dil_h  # (kh*kw,)
    kj = torch.arange(kw, **factory).repeat(kh) * dil_w
    h = (ki.view(-1, 1, 1) + y.view(1, -1, 1)).to(offset.dtype) + offset[:, :, :, 0]
    w = (kj.view(-1, 1, 1) + x.view(1, 1, -1)).to(offset.dtype) + offset[:, :, :, 1]
    return h, w


def _tile_forward(tile: Tile, input: Tensor, offset: Tensor, weight: Tensor,
                  mask: Tensor | None, geometry: Geometry) -> Tensor:
    """Output rows ``(nb, Cout, rows, Wout)`` of the tile's images ``input``, offset rows
    ``offset`` and mask rows ``mask``."""
    nb, cin, height, width = input.shape
    cout, cin_g, kh, kw = weight.shape
    groups = cin // cin_g
    rows, wout = offset.shape[2:]
    h, w = _sample_positions(tile, offset, (kh, kw), geometry)
    offset_groups = h.shape[1]
    planes = input.reshape(nb * offset_groups, cin // offset_groups, height, width)
    columns = bilinear(planes, h.reshape(nb * offset_groups, -1),
                       w.reshape(nb * offset_groups, -1))  # (nb*G, Cin/G, kh*kw*rows*Wout)
    if mask is not None:
        columns = columns * mask.reshape(nb * offset_groups, 1, -1)
    columns = columns.reshape(nb, groups, cin_g * kh * kw, rows * wout)
    out = torch.matmul(weight.reshape(groups, cout // groups, cin_g * kh * kw), columns)
    return out.reshape(nb, cout, rows, wout)


def _row_bytes(input: Tensor, offset: Tensor, weight: Tensor) -> int:
    kh, kw = weight.shape[2:]
    return _TEMPORARIES * offset.shape[3] * kh * kw * input.shape[1] * input.element_size()


def _tile_tensors(tile: Tile, offset: Tensor, mask: Tensor | None
                  ) -> tuple[slice, Tensor, Tensor | None]:
    images, rows = slice(tile.n0, tile.n1), slice(tile.y0, tile.y1)
    return images, offset[images, :, rows], None if mask is None else mask[images, :, rows]


def forward(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
            mask: Tensor | None, geometry: Geometry) -> Tensor:
    """(N, Cin, H, W) -> (N, Cout, Hout, Wout); arguments already checked."""
    n, cout = input.shape[0], weight.shape[0]
    hout, wout = offset.shape[2:]
    out = input.new_empty(n, cout, hout, wout)
    for tile in tiles(n, hout, _row_bytes(input, offset, weight)):
        images, offset_t, mask_t = _tile_tensors(tile, offset, mask)
        out[images, :, tile.y0 : tile.y1] = _tile_forward(tile, input[images], offset_t, weight,
                                                          mask_t, geometry)
    if bias is not None:
        out += bias.view(1, cout, 1, 1)
    return out


@differentiating
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
        images, offset_t, mask_t = _tile_tensors(tile, offset, mask)
        rows = slice(tile.y0, tile.y1)
        primals = (input[images], offset_t, weight) + (() if mask_t is None else (mask_t,))

        def tile_forward(x, off, w, m=None, tile=tile):
            return _tile_forward(tile, x, off, w, m, geometry)

        grads = vjp(tile_forward, primals, grad_out[images, :, rows])
        grad_input[images] += grads[0]
        grad_offset[images, :, rows] = grads[1]
        grad_weight += grads[2]
        if mask is not None:
            grad_mask[images, :, rows] = grads[3]
    return grad_input, grad_offset, grad_weight, grad_mask
