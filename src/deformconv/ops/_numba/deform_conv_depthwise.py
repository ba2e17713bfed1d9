"""Depthwise deform_conv2d on the CPU (groups = Cin = Cout): a direct kernel, no columns.

Per tile of images × output rows the forward kernel finds an output row's sample positions,
then samples the channels-last input and applies each channel's own kernel weights in one
pass over the channels, writing a channels-last output in place and an NCHW one row by row
(through a small channels-last row buffer); the backward reads the output gradient the
same way and does every gradient in one pass over the same samples. A GEMM per channel
would multiply 1 × kk by kk × pixels: columns cost more than they save there.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import Tensor

from .._workspace import tiles
from ..arguments import memory_format
from . import deform_conv_tiles as tile_ops
from . import depthwise_kernels as kernels
from .deform_conv_kernels import row_scratch, sample_tasks
from .deform_conv_tiles import Geometry, TileData, grouped
from .threads import run_tasks


def applies(input: Tensor, weight: Tensor) -> bool:
    """Whether the depthwise kernels run: one input and one output channel per group."""
    return weight.shape[1] == 1 and weight.shape[0] == input.shape[1] > 1


def _weight_by_kernel_point(weight: Tensor) -> Tensor:
    """(C, 1, kh, kw) -> (kh*kw, C), contiguous."""
    return weight.reshape(weight.shape[0], -1).t().contiguous()


def _images_array(images: Tensor, offset_groups: int) -> tuple[np.ndarray, bool]:
    """(nb, C, H, W) images (the output or its gradient) as the kernels' array and their
    ``channels_last`` flag: a view of channels-last images, else an NCHW copy if needed."""
    view = tile_ops.pixels_last_view(images)
    if view is not None:
        return grouped(view, offset_groups), True
    nb, channels, height, width = images.shape
    return images.contiguous().view(nb, offset_groups, -1, height, width).numpy(), False


def forward(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
            mask: Tensor | None, geometry: Geometry) -> Tensor:
    """(N, C, H, W) -> (N, C, Hout, Wout)."""
    n, channels = input.shape[:2]
    kh, kw = weight.shape[2:]
    hout, wout = offset.shape[2:]
    layout = memory_format(input)
    out = torch.empty((n, channels, hout, wout), dtype=input.dtype, memory_format=layout)
    weight_k = _weight_by_kernel_point(weight)
    bias_g = input.new_zeros(channels) if bias is None else bias.contiguous()
    # Each tile holds its images' channels-last input.
    row_bytes = wout * channels * input.element_size()
    cache: dict = {}
    for tile in tiles(n, hout, row_bytes):
        data = TileData(tile, tile_ops.channels_last(input, tile, cache), offset, mask, kh * kw)
        groups = data.offset_groups
        out_images = out[tile.n0 : tile.n1]
        run_tasks(kernels.forward, sample_tasks(data.x.shape, tile.y1 - tile.y0),
                  out_images[:, :, tile.y0 : tile.y1].numel() * kh * kw, data.x,
                  data.offset.numpy(),
                  data.mask.numpy(), data.has_mask, grouped(weight_k, groups),
                  grouped(bias_g, groups), *_images_array(out_images, groups), tile.y0, kw,
                  *geometry, scratch=partial(row_scratch, kh * kw, wout, data.x.dtype))
    return out


def backward(grad_out: Tensor, input: Tensor, offset: Tensor, weight: Tensor,
             mask: Tensor | None, geometry: Geometry, need_input: bool, need_offset_mask: bool,
             need_weight: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (input, offset, weight, mask), as ``deform_conv.backward`` returns them."""
    n, channels = input.shape[:2]
    kh, kw = weight.shape[2:]
    hout, wout = offset.shape[2:]
    grad_input, grad_offset, grad_mask = tile_ops.gradient_outputs(
        input, offset, mask, need_input, need_offset_mask)
    if not (need_input or need_offset_mask or need_weight):
        return grad_input, grad_offset, torch.zeros_like(weight), grad_mask
    grad_weight = torch.zeros(kh * kw, channels, dtype=weight.dtype)
    weight_k = _weight_by_kernel_point(weight)
    row_bytes = wout * channels * input.element_size()
    cache: dict = {}
    grad_x = input.new_empty(0)
    for tile in tiles(n, hout, row_bytes):
        x_cl = tile_ops.channels_last(input, tile, cache)
        data = TileData(tile, x_cl, offset, mask, kh * kw)
        groups = data.offset_groups
        nb = tile.n1 - tile.n0
        grad_out_images = grad_out[tile.n0 : tile.n1]
        work = grad_out_images[:, :, tile.y0 : tile.y1].numel() * kh * kw
        blocks = tile_ops.channel_blocks(nb, data.x.shape[4], work)
        grads = tile_ops.TileGradients(tile, x_cl, grad_x, grad_input, grad_offset,
                                       None if mask is None else grad_mask, blocks, need_input)
        grad_weight_parts = weight.new_zeros(nb * blocks, kh * kw, channels)
        run_tasks(
            kernels.backward, nb * blocks, work, data.x, data.offset.numpy(), data.mask.numpy(),
            data.has_mask, grouped(weight_k, groups), *_images_array(grad_out_images, groups),
            grads.offset_parts.numpy(), grads.mask_parts.numpy(), grouped(grads.grad_x, groups),
            grouped(grad_weight_parts, groups), blocks, need_offset_mask, need_input, tile.y0,
            kw, *geometry,
        )
        grad_weight += grad_weight_parts.sum(0)
        grads.store(hout, need_input, need_offset_mask)
        grad_x = grads.grad_x
    if not need_weight:
        return grad_input, grad_offset, torch.zeros_like(weight), grad_mask
    return grad_input, grad_offset, grad_weight.t().reshape(weight.shape).contiguous(), grad_mask
