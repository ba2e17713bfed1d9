"""What the host side of both deform_conv2d paths (columns, depthwise) does per tile.

A tile is ``nb`` images × ``rows`` output rows (``_workspace.tiles``). Its kernels take the
channels-last input with the offset groups as an axis, ``(nb, H, W, G, Cin/G)``, the
tile's offset and mask rows, and write per-channel-block parts of the offset and mask
gradients that ``store_parts`` adds up.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .._workspace import Tile, workspace
from .threads import task_threads

Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # stride, padding, dilation


def grouped(channels_last: Tensor, offset_groups: int) -> np.ndarray:
    """A channels-last tensor (..., C) as the array (..., G, C/G) the kernels take."""
    return channels_last.view(*channels_last.shape[:-1], offset_groups, -1).numpy()


# Images of at least this many elements go from channels-last to NCHW as one 2-D transposed
# copy each: torch's blocked 2-D transpose is several times faster there than the strided 4-D
# copy, which wins on small images (benchmarks/README.md).
TRANSPOSE_PER_IMAGE = 1 << 16


def store_channels_first(dst: Tensor, src: Tensor) -> None:
    """Copy channels-last images ``src`` (nb, H, W, C) into ``dst`` (nb, C, H, W)."""
    channels = dst.shape[1]
    if math.prod(dst.shape[1:]) < TRANSPOSE_PER_IMAGE or not (
            dst.is_contiguous() and src.is_contiguous()):
        dst.copy_(src.permute(0, 3, 1, 2))
        return
    for image, source in zip(dst, src, strict=True):
        image.view(channels, -1).copy_(source.view(-1, channels).t())


def channels_last(input: Tensor, tile: Tile, cache: dict, slot: str = "x") -> Tensor:
    """``input[n0:n1]`` (nb, C, H, W) as (nb, H, W, C): a view of channels-last images,
    else a copy in a workspace ``slot``, reused across the row bands of the same images
    (``cache`` remembers them)."""
    key = (tile.n0, tile.n1)
    if cache.get("key") != key:
        images = input[tile.n0 : tile.n1]
        view = pixels_last_view(images)
        if view is None:
            pixels_last = images.permute(0, 2, 3, 1)
            view = workspace(tuple(pixels_last.shape), input.dtype, slot=slot).copy_(pixels_last)
        cache["key"] = key
        cache["value"] = view
    return cache["value"]


def pixels_last_view(images: Tensor) -> Tensor | None:
    """(nb, C, H, W) images stored channels-last as the (nb, H, W, C) view the kernels read
    and write in place, else None. The view's strides must be exactly a contiguous
    tensor's, size-1 axes included: a Numba array typed C-contiguous is indexed with them."""
    view = images.permute(0, 2, 3, 1)
    expected = 1
    for size, stride in zip(reversed(view.shape), reversed(view.stride()), strict=True):
        if stride != expected:
            return None
        expected *= size
    return view


class TileData:
    """The arrays a kernel call needs for one tile: the grouped channels-last input and
    contiguous slices of offset and mask (a (1, 1, 1, 1) dummy without a mask)."""

    def __init__(self, tile: Tile, x_cl: Tensor, offset: Tensor, mask: Tensor | None,
                 kk: int) -> None:
        rows = slice(tile.y0, tile.y1)
        self.offset_groups = offset.shape[1] // (2 * kk)
        self.x = grouped(x_cl, self.offset_groups)
        self.offset = offset[tile.n0 : tile.n1, :, rows].contiguous()
        self.has_mask = mask is not None
        if mask is None:
            self.mask = offset.new_ones(1, 1, 1, 1)
        else:
            self.mask = mask[tile.n0 : tile.n1, :, rows].contiguous()

    def columns_shape(self) -> tuple[int, ...]:
        """(nb, rows, Wout, kh*kw, Cin) of the tile's columns."""
        nb, _, rows, wout = self.offset.shape
        kk = self.offset.shape[1] // (2 * self.offset_groups)
        return nb, rows, wout, kk, self.x.shape[3] * self.x.shape[4]


def channel_blocks(images: int, channels: int, work: int) -> int:
    """Channel blocks per image for a backward kernel (each a share of every offset
    group's ``channels``): enough (image, block) tasks to give each of the threads that
    ``work`` gets an equal share (1 when the images divide evenly among them)."""
    threads = task_threads(work)
    return max(1, min(channels, threads // math.gcd(images, threads)))


def gradient_parts(full: Tensor, tile: Tile, blocks: int) -> Tensor:
    """Where a backward kernel writes its per-channel-block parts of a tile of ``full``
    (offset or mask gradient): the tile itself when it is one contiguous block."""
    region = full[tile.n0 : tile.n1, :, tile.y0 : tile.y1]
    if blocks == 1 and region.is_contiguous():
        return region.unsqueeze(0)
    return full.new_empty(blocks, *region.shape)


def store_parts(full: Tensor, tile: Tile, parts: Tensor) -> None:
    """Sum the kernel's parts into the tile of ``full`` (nothing to do if written there)."""
    region = full[tile.n0 : tile.n1, :, tile.y0 : tile.y1]
    if parts.data_ptr() != region.data_ptr():
        region.copy_(parts.sum(0))


def gradient_outputs(input: Tensor, offset: Tensor, mask: Tensor | None, need_input: bool,
                     need_offset_mask: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``grad_input, grad_offset, grad_mask`` to return: uninitialised where the tiles will
    write them whole, zeros where no gradient is wanted; ``grad_mask`` is empty without a
    mask."""
    grad_input = torch.empty_like(input) if need_input else torch.zeros_like(input)
    grad_offset = torch.empty_like(offset) if need_offset_mask else torch.zeros_like(offset)
    grad_mask = offset.new_empty(0)
    if mask is not None:
        grad_mask = torch.empty_like(mask) if need_offset_mask else torch.zeros_like(mask)
    return grad_input, grad_offset, grad_mask


def input_gradient_target(grad_input: Tensor, x_cl: Tensor, need_input: bool) -> Tensor:
    """Where a backward kernel scatters the input gradient of images whose ``grad_input``
    (nb, C, H, W) is given, as (nb, H, W, C), zeroed if ``need_input``: ``grad_input``
    itself when it is channels-last (no copy afterwards), else a workspace slot."""
    view = pixels_last_view(grad_input)
    if need_input and view is not None:
        return view.zero_()
    target = workspace(tuple(x_cl.shape), x_cl.dtype, slot="grad_x")
    if need_input:
        target.zero_()
    return target


class TileGradients:
    """Where a backward tile's kernel writes: the offset/mask gradient parts
    (``gradient_parts``) and the channels-last input gradient of the tile's images
    (``input_gradient_target``, set up on their first band and kept for the next bands)."""

    def __init__(self, tile: Tile, x_cl: Tensor, previous_grad_x: Tensor, grad_input: Tensor,
                 grad_offset: Tensor, grad_mask: Tensor | None, blocks: int,
                 need_input: bool) -> None:
        self.tile = tile
        self.grad_input = grad_input[tile.n0 : tile.n1]
        self.grad_offset = grad_offset
        self.grad_mask = grad_mask
        self.grad_x = previous_grad_x
        if tile.y0 == 0:
            self.grad_x = input_gradient_target(self.grad_input, x_cl, need_input)
        self.offset_parts = gradient_parts(grad_offset, tile, blocks)
        self.mask_parts = (grad_offset.new_empty(1, 1, 1, 1, 1) if grad_mask is None
                           else gradient_parts(grad_mask, tile, blocks))

    def store(self, rows: int, need_input: bool, need_offset_mask: bool) -> None:
        """Add up the parts; after the last of ``rows`` output rows, write the images' input
        gradient into ``grad_input`` (unless the kernel wrote it there)."""
        if need_offset_mask:
            store_parts(self.grad_offset, self.tile, self.offset_parts)
            if self.grad_mask is not None:
                store_parts(self.grad_mask, self.tile, self.mask_parts)
        if (need_input and self.tile.y1 == rows
                and self.grad_x.data_ptr() != self.grad_input.data_ptr()):
            store_channels_first(self.grad_input, self.grad_x)
