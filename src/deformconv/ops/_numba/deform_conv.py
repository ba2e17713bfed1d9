"""deform_conv2d on the CPU: Numba sampling into bounded column tiles + one GEMM per tile.

Per tile of images × output rows, the kernel samples the channels-last input into
``columns (groups, P, kh*kw, Cin/groups)`` and torch's BLAS multiplies it with the weight.
The column buffer never exceeds ``WORKSPACE_BYTES`` (two buffers in the backward).
"""

from __future__ import annotations

import numba
import torch
from torch import Tensor

from .._utils import Tile, tiles
from . import deform_conv_kernels as kernels

Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # stride, padding, dilation


class _TileData:
    """The tensors a kernel call needs for one tile, as contiguous slices."""

    def __init__(self, tile: Tile, x_cl: Tensor, offset: Tensor, mask: Tensor | None) -> None:
        rows = slice(tile.y0, tile.y1)
        self.x = x_cl.numpy()
        self.offset = offset[tile.n0 : tile.n1, :, rows].contiguous()
        self.has_mask = mask is not None
        if mask is None:
            self.mask = offset.new_ones(1, 1, 1, 1)
        else:
            self.mask = mask[tile.n0 : tile.n1, :, rows].contiguous()
        self.pixels = (tile.n1 - tile.n0) * (tile.y1 - tile.y0) * offset.shape[3]


def _channels_last(input: Tensor, tile: Tile, cache: dict) -> Tensor:
    """``input[n0:n1]`` as (nb, H, W, C), reused across the row bands of one image."""
    key = (tile.n0, tile.n1)
    if cache.get("key") != key:
        cache["key"] = key
        cache["value"] = input[tile.n0 : tile.n1].permute(0, 2, 3, 1).contiguous()
    return cache["value"]


def _weight_matrix(weight: Tensor, groups: int) -> Tensor:
    """(Cout, Cin/groups, kh, kw) -> (groups, Cout/groups, kh*kw*Cin/groups), columns' order."""
    cout, cin_g, kh, kw = weight.shape
    return weight.permute(0, 2, 3, 1).reshape(groups, cout // groups, kh * kw * cin_g)


def _sample(data: _TileData, tile: Tile, groups: int, cin_g: int, kh: int, kw: int,
            geometry: Geometry) -> Tensor:
    columns = data.offset.new_empty(groups, data.pixels, kh * kw, cin_g)
    kernels.sample_columns(
        data.x, data.offset.numpy(), data.mask.numpy(), data.has_mask, columns.numpy(),
        tile.y0, kw, *geometry,
    )
    return columns


def forward(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
            mask: Tensor | None, geometry: Geometry) -> Tensor:
    """(N, Cin, H, W) -> (N, Cout, Hout, Wout); arguments already checked."""
    n, cin = input.shape[:2]
    cout, cin_g, kh, kw = weight.shape
    groups = cin // cin_g
    hout, wout = offset.shape[2:]
    out = input.new_empty(n, cout, hout, wout)
    w_mat = _weight_matrix(weight, groups)
    row_bytes = wout * kh * kw * cin * input.element_size()
    cache: dict = {}
    for tile in tiles(n, hout, row_bytes):
        data = _TileData(tile, _channels_last(input, tile, cache), offset, mask)
        columns = _sample(data, tile, groups, cin_g, kh, kw, geometry)
        # (groups, Cout/groups, K) @ (groups, K, P) -> (groups, Cout/groups, P)
        result = torch.bmm(w_mat, columns.view(groups, data.pixels, -1).transpose(1, 2))
        nb, rows = tile.n1 - tile.n0, tile.y1 - tile.y0
        out[tile.n0 : tile.n1, :, tile.y0 : tile.y1] = (
            result.view(groups, cout // groups, nb, rows, wout).permute(2, 0, 1, 3, 4).reshape(
                nb, cout, rows, wout)
        )
    if bias is not None:
        out += bias.view(1, cout, 1, 1)
    return out


def backward(grad_out: Tensor, input: Tensor, offset: Tensor, weight: Tensor,
             mask: Tensor | None, geometry: Geometry, need_input: bool, need_offset_mask: bool,
             need_weight: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (input, offset, weight, mask); a gradient not needed comes back as zeros.

    ``grad_mask`` is an empty tensor when ``mask`` is None.
    """
    n, cin, height, width = input.shape
    cout, cin_g, kh, kw = weight.shape
    groups = cin // cin_g
    hout, wout = offset.shape[2:]
    grad_input = torch.zeros_like(input)
    grad_offset = torch.zeros_like(offset)
    grad_mask = torch.zeros_like(mask) if mask is not None else offset.new_empty(0)
    grad_w_mat = weight.new_zeros(groups, cout // groups, kh * kw * cin_g)
    w_mat = _weight_matrix(weight, groups)
    need_columns_grad = need_input or need_offset_mask
    buffers = int(need_weight) + int(need_columns_grad)
    row_bytes = max(1, buffers) * wout * kh * kw * cin * input.element_size()
    cache: dict = {}
    grad_x_cl = None
    for tile in tiles(n, hout, row_bytes):
        x_cl = _channels_last(input, tile, cache)
        data = _TileData(tile, x_cl, offset, mask)
        nb, rows = tile.n1 - tile.n0, tile.y1 - tile.y0
        go = grad_out[tile.n0 : tile.n1, :, tile.y0 : tile.y1]
        # (nb, Cout, rows, Wout) -> (groups, Cout/groups, P) with P ordered (n, row, col)
        go = go.reshape(nb, groups, cout // groups, rows * wout).permute(1, 2, 0, 3)
        go = go.reshape(groups, cout // groups, data.pixels)
        if need_weight:
            columns = _sample(data, tile, groups, cin_g, kh, kw, geometry)
            grad_w_mat.baddbmm_(go, columns.view(groups, data.pixels, -1))
            del columns
        if not need_columns_grad:
            continue
        grad_columns = torch.bmm(go.transpose(1, 2), w_mat).view(
            groups, data.pixels, kh * kw, cin_g)
        args = (tile.y0, kw, *geometry)
        if need_offset_mask:
            grad_off_tile = torch.empty_like(data.offset)
            grad_mask_tile = torch.empty_like(data.mask)
            kernels.offset_mask_grad(
                data.x, data.offset.numpy(), data.mask.numpy(), data.has_mask,
                grad_columns.numpy(), grad_off_tile.numpy(), grad_mask_tile.numpy(), *args,
            )
            grad_offset[tile.n0 : tile.n1, :, tile.y0 : tile.y1] = grad_off_tile
            if mask is not None:
                grad_mask[tile.n0 : tile.n1, :, tile.y0 : tile.y1] = grad_mask_tile
        if need_input:
            if tile.y0 == 0:
                grad_x_cl = torch.zeros_like(x_cl)
            kernels.input_grad(
                tuple(x_cl.shape), data.offset.numpy(), data.mask.numpy(), data.has_mask,
                grad_columns.numpy(), grad_x_cl.numpy(), min(cin, 4 * numba.get_num_threads()),
                *args,
            )
            if tile.y1 == hout:
                grad_input[tile.n0 : tile.n1] = grad_x_cl.permute(0, 3, 1, 2)
    grad_weight = grad_w_mat.view(cout, kh, kw, cin_g).permute(0, 3, 1, 2).contiguous()
    return grad_input, grad_offset, grad_weight, grad_mask
