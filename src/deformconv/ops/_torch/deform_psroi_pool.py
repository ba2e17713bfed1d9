"""deform_psroi_pool on any device: every bin of a block of RoIs at once, in bounded tiles.

Each bin reads its own input channel, so the planes are gathered per bin
(``(M, 1, H, W)``) and ``bilinear`` samples each with its bin's positions of all
the tile's RoIs of one image. The backward differentiates the recomputed forward
(``autodiff.vjp``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._workspace import Tile, tiles
from ..geometry import PSRoIBins, PSRoIGrid, psroi_bins, psroi_grid
from .autodiff import differentiating, vjp
from .bilinear import bilinear, clamp_into_plane

# Sampled values and the intermediates of ``bilinear`` held per tile, roughly.
_TEMPORARIES = 12


def _tile_forward(input: Tensor, batch: Tensor, grid: PSRoIGrid, bins: PSRoIBins, tile: Tile,
                  offset: Tensor | None, pooled_size: int, samples: int,
                  trans_std: float) -> tuple[Tensor, Tensor]:
    """Output and sample count of RoIs ``tile.n0:tile.n1``, both ``(Kt, M)``."""
    n_images, _, height, width = input.shape
    rois = slice(tile.n0, tile.n1)
    roi_h, roi_w = grid.roi_h[rois, None], grid.roi_w[rois, None]  # (Kt, 1)
    hstart = bins.row * (roi_h / pooled_size) + grid.start_h[rois, None]  # (Kt, M)
    wstart = bins.col * (roi_w / pooled_size) + grid.start_w[rois, None]
    if offset is not None:
        trans = offset[rois][:, :, bins.part_h, bins.part_w]  # (Kt, 2*classes, M)
        index = (2 * bins.cls).expand(trans.shape[0], 1, -1)
        wstart = wstart + trans.gather(1, index)[:, 0] * trans_std * roi_w
        hstart = hstart + trans.gather(1, index + 1)[:, 0] * trans_std * roi_h
    steps = torch.arange(samples, dtype=input.dtype, device=input.device)
    sub_h = (roi_h / pooled_size / samples).view(-1, 1, 1, 1)
    sub_w = (roi_w / pooled_size / samples).view(-1, 1, 1, 1)
    h = hstart[:, :, None, None] + steps[:, None] * sub_h
    w = wstart[:, :, None, None] + steps * sub_w
    h, w = torch.broadcast_tensors(h, w)  # (Kt, M, ih, iw)
    taken = (w >= -0.5) & (w <= width - 0.5) & (h >= -0.5) & (h <= height - 0.5)
    h = clamp_into_plane(h, height)
    w = clamp_into_plane(w, width)
    total = input.new_zeros(h.shape[:2])
    for n in range(n_images):
        index = (batch[rois] == n).nonzero()[:, 0]
        if index.numel() == 0:
            continue
        planes = input[n, bins.channel].unsqueeze(1)  # (M, 1, H, W)
        values = bilinear(planes, h[index].transpose(0, 1), w[index].transpose(0, 1))
        values = torch.where(taken[index], values[:, 0].transpose(0, 1), 0.0)
        total = total.index_put((index,), values.sum(dim=(-2, -1)))
    count = taken.sum(dim=(-2, -1)).to(input.dtype)
    return total / count.clamp(min=1), count


def _setup(input: Tensor, rois: Tensor, offset: Tensor | None, spatial_scale: float,
           output_dim: int, group_size: int, pooled_size: int, part_size: int, samples: int,
           factor: int):
    classes = 1 if offset is None else offset.shape[1] // 2
    bins = psroi_bins(output_dim, group_size, pooled_size, part_size, classes, input.device)
    roi_bytes = factor * _TEMPORARIES * bins.channel.numel() * samples**2 * input.element_size()
    return psroi_grid(rois, spatial_scale), bins, tiles(rois.shape[0], 1, roi_bytes)


def forward(input: Tensor, rois: Tensor, offset: Tensor | None, spatial_scale: float,
            output_dim: int, group_size: int, pooled_size: int, part_size: int,
            sample_per_part: int, trans_std: float) -> tuple[Tensor, Tensor]:
    """(N, output_dim*G*G, H, W) -> output and sample count, both (K, output_dim, P, P)."""
    grid, bins, tile_list = _setup(input, rois, offset, spatial_scale, output_dim, group_size,
                                   pooled_size, part_size, sample_per_part, 1)
    shape = (rois.shape[0], output_dim, pooled_size, pooled_size)
    out, count = input.new_zeros(shape), input.new_zeros(shape)
    batch = rois[:, 0].long()
    for tile in tile_list:
        out_t, count_t = _tile_forward(input, batch, grid, bins, tile, offset, pooled_size,
                                       sample_per_part, trans_std)
        out[tile.n0 : tile.n1] = out_t.view(-1, *shape[1:])
        count[tile.n0 : tile.n1] = count_t.view(-1, *shape[1:])
    return out, count


@differentiating
def backward(grad_out: Tensor, input: Tensor, rois: Tensor, offset: Tensor | None,
             count: Tensor, spatial_scale: float, group_size: int, part_size: int,
             sample_per_part: int, trans_std: float, need_input: bool,
             need_offset: bool) -> tuple[Tensor, Tensor]:
    """Gradients (input, offset), like the Numba backward."""
    del count, need_input, need_offset  # recomputed; the vjp computes both at once
    output_dim, pooled_size = grad_out.shape[1], grad_out.shape[2]
    grid, bins, tile_list = _setup(input, rois, offset, spatial_scale, output_dim, group_size,
                                   pooled_size, part_size, sample_per_part, 2)
    batch = rois[:, 0].long()
    grad_input = torch.zeros_like(input)
    grad_offset = torch.zeros_like(offset) if offset is not None else input.new_empty(0)
    primals = (input,) if offset is None else (input, offset)
    for tile in tile_list:
        def tile_out(x: Tensor, offset: Tensor | None = None, tile: Tile = tile) -> Tensor:
            return _tile_forward(x, batch, grid, bins, tile, offset, pooled_size,
                                 sample_per_part, trans_std)[0]

        grads = vjp(tile_out, primals,
                    grad_out[tile.n0 : tile.n1].reshape(tile.n1 - tile.n0, -1))
        grad_input += grads[0]
        if offset is not None:
            grad_offset += grads[1]
    return grad_input, grad_offset
