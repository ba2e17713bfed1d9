"""deform_psroi_pool on the CPU: Numba kernels over NCHW planes.

Bin ``(ctop, i, j)`` of a RoI reads one input channel ``(ctop*G + gh)*G + gw``. The kernels
are serial over a range of independent tasks, spread over threads by ``threads.run_tasks``:
the forward's tasks are RoIs × output channels; the input gradient's are input channels
(each owns whole planes of ``grad_input``: no races); the offset gradient's are
RoIs × classes (each owns its class's offset cells, shared by several bins).
"""

from __future__ import annotations

import numba
import torch
from torch import Tensor

from ..geometry import psroi_grid
from .noalias import kernel
from .roi_sampling import clamped_corners, slope_weights, value_weights
from .threads import run_tasks

# Columns of the per-RoI table ``geo`` (K, 4) of ``psroi_grid``: the RoI's top-left corner
# and its size (bins are 1/P of it; offsets are fractions of it, times ``trans_std``).
_START_H, _START_W, _ROI_H, _ROI_W = range(4)


@numba.njit(inline="always", cache=True)
def _group(index, size, group_size):
    return min(max(index * group_size // size, 0), group_size - 1)


@numba.njit(inline="always", cache=True)
def _bin_origin(geo, k, ctop, i, j, size, offset, has_offset, trans_std, part_size, per_class):
    """``(hstart, wstart, part_h, part_w, cls)`` of bin ``(ctop, i, j)`` of RoI ``k``.

    In ``geo``'s dtype (the input's compute dtype), as the original kernel computes in its
    ``T`` (see ``_sub_bins``): Numba would widen ``float32 / int`` to float64.
    """
    real = geo.dtype.type
    hstart = real(i) * (geo[k, _ROI_H] / real(size)) + geo[k, _START_H]
    wstart = real(j) * (geo[k, _ROI_W] / real(size)) + geo[k, _START_W]
    part_h = i * part_size // size  # floor(i / P * part_size), exactly
    part_w = j * part_size // size
    cls = ctop // per_class
    if has_offset:
        wstart += offset[k, 2 * cls, part_h, part_w] * real(trans_std) * geo[k, _ROI_W]
        hstart += offset[k, 2 * cls + 1, part_h, part_w] * real(trans_std) * geo[k, _ROI_H]
    return hstart, wstart, part_h, part_w, cls


@numba.njit(inline="always", cache=True)
def _sub_bins(geo, k, size, samples):
    """``(sub_h, sub_w)``: the step between RoI ``k``'s samples in a bin, ``roi / P / S`` in
    ``geo``'s dtype. Sample ``ih`` of a bin is at ``hstart + ih * sub_h``, in that dtype too:
    a sample that lands exactly on ``-0.5`` (kept) in float32 can land just below it (skipped)
    in float64."""
    real = geo.dtype.type
    return (geo[k, _ROI_H] / real(size) / real(samples),
            geo[k, _ROI_W] / real(size) / real(samples))


@numba.njit(inline="always", cache=True)
def _skipped(h, w, height, width):
    """The original kernel drops such a sample from the bin's average."""
    return w < -0.5 or w > width - 0.5 or h < -0.5 or h > height - 0.5


@kernel(fastmath=set())
def _forward(x, batch, geo, offset, has_offset, trans_std, group_size, part_size, samples,
             per_class, out, count, first, last):
    """``out`` and ``count`` (K, output_dim, P, P) for tasks ``first:last`` of RoI × output
    channel."""
    output_dim, size = out.shape[1], out.shape[2]
    height, width = x.shape[2], x.shape[3]
    for task in range(first, last):
        k = task // output_dim
        ctop = task % output_dim
        b = batch[k]
        sub_h, sub_w = _sub_bins(geo, k, size, samples)
        for i in range(size):
            for j in range(size):
                hstart, wstart, _, _, _ = _bin_origin(
                    geo, k, ctop, i, j, size, offset, has_offset, trans_std, part_size, per_class)
                c = (ctop * group_size + _group(i, size, group_size)) * group_size + _group(
                    j, size, group_size)
                total = 0.0
                taken = 0
                for ih in range(samples):
                    h = hstart + geo.dtype.type(ih) * sub_h
                    for iw in range(samples):
                        w = wstart + geo.dtype.type(iw) * sub_w
                        if _skipped(h, w, height, width):
                            continue
                        h0, h1, w0, w1, lh, lw, k00, k01, k10, k11, _, _ = clamped_corners(
                            h, w, height, width)
                        a00, a01, a10, a11 = value_weights(lh, lw, k00, k01, k10, k11)
                        total += (a00 * x[b, c, h0, w0] + a01 * x[b, c, h0, w1]
                                  + a10 * x[b, c, h1, w0] + a11 * x[b, c, h1, w1])
                        taken += 1
                out[k, ctop, i, j] = total / taken if taken > 0 else 0.0
                count[k, ctop, i, j] = taken


@kernel(fastmath=set())
def _input_grad(batch, geo, offset, has_offset, trans_std, group_size, part_size, samples,
                per_class, count, grad_out, grad_x, first, last):
    """Scatter ``grad_out`` into ``grad_x`` (zeroed) for input channels ``first:last``
    (task ``c`` owns input channel ``c``)."""
    nrois, size = grad_out.shape[0], grad_out.shape[2]
    height, width = grad_x.shape[2], grad_x.shape[3]
    for c in range(first, last):
        ctop = c // (group_size * group_size)
        gh = (c // group_size) % group_size
        gw = c % group_size
        for k in range(nrois):
            b = batch[k]
            sub_h, sub_w = _sub_bins(geo, k, size, samples)
            for i in range(size):
                if _group(i, size, group_size) != gh:
                    continue
                for j in range(size):
                    if _group(j, size, group_size) != gw or count[k, ctop, i, j] == 0:
                        continue
                    g = grad_out[k, ctop, i, j] / count[k, ctop, i, j]
                    hstart, wstart, _, _, _ = _bin_origin(
                        geo, k, ctop, i, j, size, offset, has_offset, trans_std, part_size,
                        per_class)
                    for ih in range(samples):
                        h = hstart + geo.dtype.type(ih) * sub_h
                        for iw in range(samples):
                            w = wstart + geo.dtype.type(iw) * sub_w
                            if _skipped(h, w, height, width):
                                continue
                            h0, h1, w0, w1, lh, lw, k00, k01, k10, k11, _, _ = clamped_corners(
                                h, w, height, width)
                            a00, a01, a10, a11 = value_weights(lh, lw, k00, k01, k10, k11)
                            grad_x[b, c, h0, w0] += a00 * g
                            grad_x[b, c, h0, w1] += a01 * g
                            grad_x[b, c, h1, w0] += a10 * g
                            grad_x[b, c, h1, w1] += a11 * g


@kernel(fastmath=set())
def _offset_grad(x, batch, geo, offset, trans_std, group_size, part_size, samples, per_class,
                 count, grad_out, grad_offset, first, last):
    """Accumulate into ``grad_offset`` (zeroed, offset's shape) for tasks ``first:last`` of
    (RoI, class)."""
    size = grad_out.shape[2]
    height, width = x.shape[2], x.shape[3]
    classes = grad_offset.shape[1] // 2
    for task in range(first, last):
        k = task // classes
        cls = task % classes
        b = batch[k]
        sub_h, sub_w = _sub_bins(geo, k, size, samples)
        for ctop in range(cls * per_class, (cls + 1) * per_class):
            for i in range(size):
                for j in range(size):
                    if count[k, ctop, i, j] == 0:
                        continue
                    g = grad_out[k, ctop, i, j] / count[k, ctop, i, j]
                    hstart, wstart, part_h, part_w, _ = _bin_origin(
                        geo, k, ctop, i, j, size, offset, True, trans_std, part_size, per_class)
                    c = (ctop * group_size + _group(i, size, group_size)) * group_size + _group(
                        j, size, group_size)
                    acc_h = 0.0
                    acc_w = 0.0
                    for ih in range(samples):
                        h = hstart + geo.dtype.type(ih) * sub_h
                        for iw in range(samples):
                            w = wstart + geo.dtype.type(iw) * sub_w
                            if _skipped(h, w, height, width):
                                continue
                            h0, h1, w0, w1, lh, lw, k00, k01, k10, k11, dh, dw = clamped_corners(
                                h, w, height, width)
                            s00, s01, s10, s11, t00, t01, t10, t11 = slope_weights(
                                lh, lw, k00, k01, k10, k11, dh, dw)
                            x00, x01 = x[b, c, h0, w0], x[b, c, h0, w1]
                            x10, x11 = x[b, c, h1, w0], x[b, c, h1, w1]
                            acc_h += s00 * x00 + s01 * x01 + s10 * x10 + s11 * x11
                            acc_w += t00 * x00 + t01 * x01 + t10 * x10 + t11 * x11
                    grad_offset[k, 2 * cls, part_h, part_w] += (
                        g * acc_w * trans_std * geo[k, _ROI_W])
                    grad_offset[k, 2 * cls + 1, part_h, part_w] += (
                        g * acc_h * trans_std * geo[k, _ROI_H])


class _Args:
    """Numpy views of one call's per-RoI data; a dummy stands in for a missing offset."""

    def __init__(self, input: Tensor, rois: Tensor, offset: Tensor | None,
                 spatial_scale: float) -> None:
        g = psroi_grid(rois, spatial_scale)
        columns = {_START_H: g.start_h, _START_W: g.start_w, _ROI_H: g.roi_h, _ROI_W: g.roi_w}
        self.geo = torch.stack([columns[c] for c in sorted(columns)], dim=1).numpy()
        self.batch = rois[:, 0].long().numpy()
        self.has_offset = offset is not None
        self.offset = (offset if offset is not None else input.new_zeros(1, 2, 1, 1)).numpy()


def forward(input: Tensor, rois: Tensor, offset: Tensor | None, spatial_scale: float,
            output_dim: int, group_size: int, pooled_size: int, part_size: int,
            sample_per_part: int, trans_std: float) -> tuple[Tensor, Tensor]:
    """(N, output_dim*G*G, H, W) -> output and sample count, both (K, output_dim, P, P)."""
    a = _Args(input, rois, offset, spatial_scale)
    classes = 1 if offset is None else offset.shape[1] // 2
    out = input.new_empty(rois.shape[0], output_dim, pooled_size, pooled_size)
    count = torch.empty_like(out)
    run_tasks(_forward, rois.shape[0] * output_dim, out.numel() * sample_per_part**2,
              input.numpy(), a.batch, a.geo, a.offset, a.has_offset, trans_std, group_size,
              part_size, sample_per_part, output_dim // classes, out.numpy(), count.numpy())
    return out, count


def backward(grad_out: Tensor, input: Tensor, rois: Tensor, offset: Tensor | None,
             count: Tensor, spatial_scale: float, group_size: int, part_size: int,
             sample_per_part: int, trans_std: float, need_input: bool,
             need_offset: bool) -> tuple[Tensor, Tensor]:
    """Gradients (input, offset); an empty tensor stands for a missing offset."""
    a = _Args(input, rois, offset, spatial_scale)
    output_dim = grad_out.shape[1]
    classes = 1 if offset is None else offset.shape[1] // 2
    grad_input = torch.zeros_like(input)
    grad_offset = torch.zeros_like(offset) if offset is not None else input.new_empty(0)
    work = grad_out.numel() * sample_per_part**2
    per_class = output_dim // classes
    if need_input:
        run_tasks(_input_grad, input.shape[1], work, a.batch, a.geo, a.offset, a.has_offset,
                  trans_std, group_size, part_size, sample_per_part, per_class, count.numpy(),
                  grad_out.numpy(), grad_input.numpy())
    if need_offset and offset is not None:
        run_tasks(_offset_grad, rois.shape[0] * classes, work, input.numpy(), a.batch, a.geo,
                  a.offset, trans_std, group_size, part_size, sample_per_part, per_class,
                  count.numpy(), grad_out.numpy(), grad_offset.numpy())
    return grad_input, grad_offset
