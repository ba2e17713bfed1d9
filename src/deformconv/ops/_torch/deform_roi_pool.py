"""deform_roi_pool on any device: all RoIs' sample grids at once, in bounded tiles.

A tile is a block of RoIs × a band of sample rows (``iy``), padded to the largest grid of
the call; samples beyond a RoI's own grid are masked out. The backward differentiates
each tile's recomputed forward (``autodiff.vjp``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._workspace import Tile, tiles
from ..geometry import RoIAlignGrid, roi_align_grid
from .autodiff import differentiating, vjp
from .bilinear import bilinear, clamp_into_plane

# Sampled values and the intermediates of ``bilinear`` held per tile, roughly.
_TEMPORARIES = 12


def _sample_positions(grid: RoIAlignGrid, tile: Tile, cols: int, pooled: tuple[int, int],
                      offset: Tensor | None, gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """``y, x`` of the tile's samples and whether each is inside its RoI's grid.

    All three are ``(Kt, ph, pw, rows, cols)``, ``rows = tile.y1 - tile.y0``.
    """
    rois = slice(tile.n0, tile.n1)
    start_h, start_w = grid.start_h[rois], grid.start_w[rois]
    bin_h, bin_w = grid.bin_h[rois], grid.bin_w[rois]
    grid_h, grid_w = grid.grid_h[rois], grid.grid_w[rois]
    factory = {"dtype": start_h.dtype, "device": start_h.device}
    iy = torch.arange(tile.y0, tile.y1, **factory)
    ix = torch.arange(cols, **factory)
    bins_y = torch.arange(pooled[0], **factory)
    bins_x = torch.arange(pooled[1], **factory)
    # (Kt, ph, rows) and (Kt, pw, cols): bin start + sample position within the bin, in
    # torchvision's order (start + i * bin) + (iy + 0.5) * bin / grid, so that samples on the
    # map's edge round as RoIAlign's do (not (iy + 0.5) * (bin / grid))
    within_h = (iy + 0.5) * bin_h[:, None] / grid_h.clamp(min=1)[:, None]
    within_w = (ix + 0.5) * bin_w[:, None] / grid_w.clamp(min=1)[:, None]
    y = (start_h[:, None] + bins_y * bin_h[:, None])[..., None] + within_h[:, None]
    x = (start_w[:, None] + bins_x * bin_w[:, None])[..., None] + within_w[:, None]
    y = y[:, :, None, :, None]  # (Kt, ph, 1, rows, 1)
    x = x[:, None, :, None, :]  # (Kt, 1, pw, 1, cols)
    if offset is not None:
        y = y + (gamma * grid.roi_h[rois]).view(-1, 1, 1, 1, 1) * offset[rois, 1, :, :, None, None]
        x = x + (gamma * grid.roi_w[rois]).view(-1, 1, 1, 1, 1) * offset[rois, 0, :, :, None, None]
    in_grid = ((iy[:, None] < grid_h.view(-1, 1, 1)) & (ix < grid_w.view(-1, 1, 1)))[:, None, None]
    y, x, in_grid = torch.broadcast_tensors(y, x, in_grid)
    return y, x, in_grid


def _tile_forward(input: Tensor, batch: Tensor, grid: RoIAlignGrid, tile: Tile, cols: int,
                  offset: Tensor | None, mask: Tensor | None, pooled: tuple[int, int],
                  gamma: float) -> Tensor:
    """The tile's share of the output ``(Kt, C, ph, pw)``: its samples' sum / count."""
    n_images, channels, height, width = input.shape
    y, x, in_grid = _sample_positions(grid, tile, cols, pooled, offset, gamma)
    taken = in_grid & (y >= -1) & (y <= height) & (x >= -1) & (x <= width)
    y = clamp_into_plane(y, height)
    x = clamp_into_plane(x, width)
    rois = slice(tile.n0, tile.n1)
    out = input.new_zeros(tile.n1 - tile.n0, channels, *pooled)
    for n in range(n_images):
        index = (batch[rois] == n).nonzero()[:, 0]
        if index.numel() == 0:
            continue
        values = bilinear(input[n : n + 1], y[index][None], x[index][None])[0]
        values = torch.where(taken[index], values, torch.zeros_like(values))
        out = out.index_put((index,), values.sum(dim=(-2, -1)).transpose(0, 1))
    count = (grid.grid_h[rois] * grid.grid_w[rois]).clamp(min=1).to(input.dtype)
    out = out / count.view(-1, 1, 1, 1)
    return out if mask is None else out * mask[rois]


def _tiling(input: Tensor, grid: RoIAlignGrid, pooled: tuple[int, int], factor: int):
    """Tiles of RoIs × sample rows, and the padded number of sample columns."""
    rows = max(int(grid.grid_h.max()), 0) if grid.grid_h.numel() else 0
    cols = max(int(grid.grid_w.max()), 0) if grid.grid_w.numel() else 0
    row_bytes = factor * _TEMPORARIES * input.shape[1] * pooled[0] * pooled[1] * max(cols, 1)
    return tiles(grid.grid_h.numel(), rows, row_bytes * input.element_size()), cols


def forward(input: Tensor, rois: Tensor, offset: Tensor | None, mask: Tensor | None,
            pooled: tuple[int, int], spatial_scale: float, sampling_ratio: int, gamma: float,
            aligned: bool) -> Tensor:
    """(N, C, H, W) -> (K, C, ph, pw); arguments already checked."""
    grid = roi_align_grid(rois, pooled, spatial_scale, sampling_ratio, aligned)
    batch = rois[:, 0].long()
    out = input.new_zeros(rois.shape[0], input.shape[1], *pooled)
    tile_list, cols = _tiling(input, grid, pooled, 1)
    for tile in tile_list:
        out[tile.n0 : tile.n1] += _tile_forward(input, batch, grid, tile, cols, offset, mask,
                                                pooled, gamma)
    return out


@differentiating
def backward(grad_out: Tensor, input: Tensor, rois: Tensor, offset: Tensor | None,
             mask: Tensor | None, pooled: tuple[int, int], spatial_scale: float,
             sampling_ratio: int, gamma: float, aligned: bool, need_input: bool,
             need_offset_mask: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (input, offset, mask), like the Numba backward."""
    del need_input, need_offset_mask  # the vjp computes all of them at once
    grid = roi_align_grid(rois, pooled, spatial_scale, sampling_ratio, aligned)
    batch = rois[:, 0].long()
    grad_input = torch.zeros_like(input)
    grad_offset = torch.zeros_like(offset) if offset is not None else input.new_empty(0)
    grad_mask = torch.zeros_like(mask) if mask is not None else input.new_empty(0)
    tile_list, cols = _tiling(input, grid, pooled, 2)
    grads_out = (grad_input, grad_offset if offset is not None else None,
                 grad_mask if mask is not None else None)
    present = [i for i, t in enumerate((input, offset, mask)) if t is not None]
    primals = tuple((input, offset, mask)[i] for i in present)
    for tile in tile_list:
        def tile_out(x: Tensor, *optional: Tensor, tile: Tile = tile) -> Tensor:
            named = dict(zip(present[1:], optional, strict=True))
            return _tile_forward(x, batch, grid, tile, cols, named.get(1), named.get(2), pooled,
                                 gamma)

        grads = vjp(tile_out, primals, grad_out[tile.n0 : tile.n1].contiguous())
        for i, grad in zip(present, grads, strict=True):
            grads_out[i].add_(grad)
    return grad_input, grad_offset, grad_mask
