"""deform_conv2d on the CPU: Numba sampling into bounded column tiles + one GEMM per tile.

Per tile of images × output rows, the kernel samples the channels-last input into
``columns (P, groups, kh*kw, Cin/groups)``. Read as a channels-last image
``(nb, groups*kh*kw*Cin/groups, rows, Wout)`` the columns turn the GEMM with the weight into
a grouped 1×1 convolution, which torch runs with oneDNN (as fast as its dense conv2d on
any x86 vendor, where MKL's GEMM is not). The column buffer never exceeds
``WORKSPACE_BYTES`` (two buffers in the backward).
"""

from __future__ import annotations

import numba
import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import Tile, tiles, workspace
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


def _weight_1x1(weight: Tensor) -> Tensor:
    """(Cout, Cin/groups, kh, kw) -> (Cout, kh*kw*Cin/groups, 1, 1), in the columns' order."""
    cout, cin_g, kh, kw = weight.shape
    return weight.permute(0, 2, 3, 1).reshape(cout, kh * kw * cin_g, 1, 1)


def _as_image(columns: Tensor, tile: Tile) -> Tensor:
    """(P, groups, kk, Cin/groups) -> channels-last view (nb, groups*kk*Cin/groups, rows, Wout)."""
    nb, rows = tile.n1 - tile.n0, tile.y1 - tile.y0
    return columns.view(nb, rows, -1, columns[0].numel()).permute(0, 3, 1, 2)


def _sample(data: _TileData, tile: Tile, groups: int, cin_g: int, kh: int, kw: int,
            geometry: Geometry) -> Tensor:
    columns = workspace((data.pixels, groups, kh * kw, cin_g), data.offset.dtype)
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
    w_1x1 = _weight_1x1(weight)
    row_bytes = wout * kh * kw * cin * input.element_size()
    cache: dict = {}
    for tile in tiles(n, hout, row_bytes):
        data = _TileData(tile, _channels_last(input, tile, cache), offset, mask)
        columns = _sample(data, tile, groups, cin_g, kh, kw, geometry)
        out[tile.n0 : tile.n1, :, tile.y0 : tile.y1] = F.conv2d(
            _as_image(columns, tile), w_1x1, bias, groups=groups)
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
    w_1x1 = _weight_1x1(weight)
    grad_w_1x1 = torch.zeros_like(w_1x1)
    need_columns_grad = need_input or need_offset_mask
    if not (need_columns_grad or need_weight):
        return grad_input, grad_offset, torch.zeros_like(weight), grad_mask
    buffers = int(need_weight) + int(need_columns_grad)
    row_bytes = buffers * wout * kh * kw * cin * input.element_size()
    cache: dict = {}
    grad_x_cl = None
    for tile in tiles(n, hout, row_bytes):
        x_cl = _channels_last(input, tile, cache)
        data = _TileData(tile, x_cl, offset, mask)
        go = grad_out[tile.n0 : tile.n1, :, tile.y0 : tile.y1].contiguous(
            memory_format=torch.channels_last)
        if need_weight:
            columns = _sample(data, tile, groups, cin_g, kh, kw, geometry)
        else:  # the 1x1 conv backward reads only the shape of its input for grad_input
            columns = data.offset.new_empty(data.pixels, groups, kh * kw, cin_g)
        grad_columns, grad_w_tile, _ = torch.ops.aten.convolution_backward(
            go, _as_image(columns, tile), w_1x1, None, [1, 1], [0, 0], [1, 1], False, [0, 0],
            groups, [need_columns_grad, need_weight, False],
        )
        del columns
        if need_weight:
            grad_w_1x1 += grad_w_tile
        if not need_columns_grad:
            continue
        grad_columns = grad_columns.permute(0, 2, 3, 1).contiguous().view(
            data.pixels, groups, kh * kw, cin_g)
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
                grad_columns.numpy(), grad_x_cl.numpy(), min(cin, numba.get_num_threads()),
                *args,
            )
            if tile.y1 == hout:
                grad_input[tile.n0 : tile.n1] = grad_x_cl.permute(0, 3, 1, 2)
    grad_weight = grad_w_1x1.view(cout, kh, kw, cin_g).permute(0, 3, 1, 2).contiguous()
    return grad_input, grad_offset, grad_weight, grad_mask
