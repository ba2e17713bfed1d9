"""Deformable RoI pooling ops as decompositions into standard ONNX ops (Gather + arithmetic).

ONNX has no deformable RoI pooling operator, so each op becomes a small graph: the sample
positions of every (RoI, bin, sample) are computed with elementwise ops, the four bilinear
corners are read with ``Gather`` from the flattened feature map, and the samples are averaged
with ``ReduceSum``. The RoI count K, the batch size and the map size (H, W) may be dynamic;
channels and the pooling geometry are static. float16 inputs are pooled in float32 and
the results cast back, as the ops' kernels do. RoIs the ops would refuse (batch index not
an integer in [0, N), a non-finite coordinate, an adaptive grid beyond
``MAX_SAMPLES_PER_BIN``) give NaN rows; NaN offsets, which the ops
refuse too, give NaN where the modules give it. No input makes a ``Gather`` index leave
its tensor. Semantics: docs/OPS.md.
"""

from __future__ import annotations

import numpy as np
from onnxscript import ir
from onnxscript import opset19 as op

from ..ops._checks import MAX_SAMPLES_PER_BIN, check_samples_per_side
from ..ops.geometry import part_cells
from .deform_conv import TFloat, check_type, static_dim


def floats(values, dtype: ir.DataType) -> ir.Value:
    """Constant of ``values`` with element type ``dtype`` (the input's)."""
    return op.Constant(value=ir.tensor(np.asarray(values, dtype=dtype.numpy())))


def ints(values) -> ir.Value:
    return op.Constant(value=ir.tensor(np.asarray(values, dtype=np.int64)))


def upcast(
    input: ir.Value, *others: ir.Value | None,
) -> tuple[ir.DataType, list[ir.Value | None]]:
    """The dtype the ops compute in for ``input`` (float32 for float16, as the kernels and
    ``ops._checks.compute_dtype``) and ``input``, ``others`` cast to it where they differ.

    The ops take float16 RoIs in float32, so computing in the input's dtype would mix float16
    and float32 in one node (an invalid graph) and round differently from PyTorch.
    """
    dtype = ir.DataType.FLOAT if input.dtype == ir.DataType.FLOAT16 else input.dtype
    return dtype, [v if v is None or v.dtype == dtype else op.Cast(v, to=dtype)
                   for v in (input, *others)]


def downcast(value: ir.Value, dtype: ir.DataType, compute: ir.DataType) -> ir.Value:
    """``value`` computed in ``compute`` back in the input's ``dtype``."""
    return value if dtype == compute else op.Cast(value, to=dtype)


class MapSize:
    """(H, W) of a feature map read from its shape at run time: int64 and float scalars."""

    def __init__(self, input: ir.Value, dtype: ir.DataType) -> None:
        shape = op.Shape(input)
        self.height, self.width = op.Gather(shape, ints(2)), op.Gather(shape, ints(3))
        self.height_f = op.Cast(self.height, to=dtype)
        self.width_f = op.Cast(self.width, to=dtype)
        self.pixels = op.Mul(self.height, self.width)


def bilinear_gather(
    flat: ir.Value, base: ir.Value, y: ir.Value, x: ir.Value, size: MapSize,
    dtype: ir.DataType, per_channel: bool,
) -> ir.Value:
    """Bilinear samples of ``flat`` at (y, x) clamped into the map (RoIAlign's border rule).

    ``flat`` is the feature map flattened so that ``flat[base + row * W + col]`` is the pixel
    (``Gather`` on axis 0); with ``per_channel``, ``flat`` is (pixels, C) and the result gets
    a trailing channel axis. Positions are clamped to [0, H-1] x [0, W-1]; the upper corner
    is clamped too, where its weight is zero anyway. A NaN position (from a NaN offset) reads
    pixel (0, 0): cast to int64 it would be an index out of range, which makes onnxruntime
    refuse the whole batch; the callers drop such samples as not inside the map.
    """
    one, one_i, zero = floats(1, dtype), ints(1), floats(0, dtype)
    y = op.Clip(op.Where(op.IsNaN(y), zero, y), zero, op.Sub(size.height_f, one))
    x = op.Clip(op.Where(op.IsNaN(x), zero, x), zero, op.Sub(size.width_f, one))
    y0f, x0f = op.Floor(y), op.Floor(x)
    ly, lx = op.Sub(y, y0f), op.Sub(x, x0f)
    hy, hx = op.Sub(one, ly), op.Sub(one, lx)
    y0, x0 = op.Cast(y0f, to=ir.DataType.INT64), op.Cast(x0f, to=ir.DataType.INT64)
    y1 = op.Min(op.Add(y0, one_i), op.Sub(size.height, one_i))
    x1 = op.Min(op.Add(x0, one_i), op.Sub(size.width, one_i))
    if per_channel:  # one value per channel: the weights broadcast over channels
        hy, ly, hx, lx = (op.Unsqueeze(w, ints([-1])) for w in (hy, ly, hx, lx))

    def row(y_index: ir.Value) -> ir.Value:
        """Interpolate along x on one row: (1 - lx) * left + lx * right."""
        start = op.Add(base, op.Mul(y_index, size.width))
        left = op.Gather(flat, op.Add(start, x0), axis=0)
        right = op.Gather(flat, op.Add(start, x1), axis=0)
        return op.Add(op.Mul(left, hx), op.Mul(right, lx))

    return op.Add(op.Mul(row(y0), hy), op.Mul(row(y1), ly))


def split_rois(
    rois: ir.Value, input: ir.Value, dtype: ir.DataType,
) -> tuple[ir.Value, list[ir.Value], ir.Value]:
    """(K, 5) rois -> batch index (K,) int64, [x1, y1, x2, y2] each (K, 1), valid (K,) bool.

    A graph cannot raise as the ops do for a bad RoI, so a row is valid when its batch index
    is an integer in [0, N) and its coordinates are finite; invalid rows are read as image 0,
    box 0 (``Gather`` would wrap a negative index) and :func:`invalidate` makes them NaN.
    """
    # x - x is 0 for finite x and NaN for inf or NaN: one ReduceSum tests the whole row.
    finite = op.Equal(op.ReduceSum(op.Sub(rois, rois), ints([1]), keepdims=0), floats(0, dtype))
    index = op.Gather(rois, ints(0), axis=1)
    images = op.Cast(op.Gather(op.Shape(input), ints(0)), to=dtype)
    valid = op.And(op.And(finite, op.Equal(index, op.Floor(index))),
                   op.And(op.GreaterOrEqual(index, floats(0, dtype)), op.Less(index, images)))
    rois = op.Where(op.Unsqueeze(valid, ints([1])), rois, floats(0, dtype))
    batch = op.Cast(op.Gather(rois, ints(0), axis=1), to=ir.DataType.INT64)
    coords = op.Split(op.Slice(rois, ints([1]), ints([5]), ints([1])), num_outputs=4, axis=1)
    return batch, list(coords), valid


def invalidate(out: ir.Value, valid: ir.Value, dtype: ir.DataType) -> ir.Value:
    """(K, ...) ``out`` with NaN in the rows of invalid RoIs."""
    return op.Where(op.Unsqueeze(valid, ints([1, 2, 3])), out, floats(np.nan, dtype))


def nan_offsets(offset: ir.Value, dtype: ir.DataType, per_position: bool) -> ir.Value:
    """Where (K, *, h, w) ``offset`` holds a NaN: (K, 1, h, w) bool, or (K, 1, 1, 1) (any in
    the row) without ``per_position``.

    The ops refuse NaN offsets and a graph cannot raise; the modules give NaN at the output
    positions of a NaN offset (all of the row where the offset grid is not the output's), so
    the graphs do the same. (A module's graph adds NaN where its offsets are not finite itself:
    ``nn._offset.nan_offsets_propagate``.)
    """
    bad = op.Cast(op.IsNaN(offset), to=dtype)
    axes = [1] if per_position else [1, 2, 3]
    return op.Greater(op.ReduceMax(bad, ints(axes), keepdims=1), floats(0, dtype))


def nan_where(out: ir.Value, bad: ir.Value | None, dtype: ir.DataType) -> ir.Value:
    """``out`` with NaN where ``bad`` (broadcast onto it) holds; ``out`` itself for None."""
    return out if bad is None else op.Where(bad, floats(np.nan, dtype), out)


def sample_counts(roi_size: ir.Value, pooled: int, sampling_ratio: int,
                  dtype: ir.DataType) -> ir.Value:
    """Samples per bin along one axis, per RoI (K, 1): ``sampling_ratio`` if positive, else
    ceil(roi_size / pooled) (RoIAlign's adaptive grid; <= 0 for a degenerate RoI)."""
    if sampling_ratio > 0:
        return floats([[sampling_ratio]], dtype)
    return op.Ceil(op.Div(roi_size, floats(pooled, dtype)))


def refuse_large_grids(count_h: ir.Value, count_w: ir.Value, valid: ir.Value,
                       dtype: ir.DataType) -> tuple[ir.Value, ir.Value, ir.Value]:
    """Adaptive counts (K, 1) and ``valid`` (K,) less the RoIs whose bins would take more
    than ``MAX_SAMPLES_PER_BIN`` samples, which the op refuses (a graph cannot raise: they
    become invalid rows, with no samples, so that they do not size the sample grid)."""
    zero = floats(0, dtype)
    samples = op.Mul(op.Max(count_h, zero), op.Max(count_w, zero))
    # Not "samples <= limit": a NaN count (an invalid row's) is not refused here.
    too_many = op.Greater(samples, floats(MAX_SAMPLES_PER_BIN, dtype))
    valid = op.And(valid, op.Not(op.Squeeze(too_many, ints([1]))))
    return op.Where(too_many, zero, count_h), op.Where(too_many, zero, count_w), valid


def sample_steps(count: ir.Value, sampling_ratio: int, dtype: ir.DataType) -> ir.Value:
    """Sample indices (G,) as floats along one axis: up to the largest of the RoIs' ``count``
    (K, 1) when adaptive."""
    if sampling_ratio > 0:
        return floats(np.arange(sampling_ratio), dtype)
    # Max with 1: ReduceMax over zero RoIs gives -inf.
    largest = op.Max(op.ReduceMax(count, keepdims=0), floats(1, dtype))
    return op.Cast(op.Range(ints(0), op.Cast(largest, to=ir.DataType.INT64), ints(1)), to=dtype)


def deform_roi_pool(
    input: ir.Value, rois: ir.Value, offset: ir.Value | None, mask: ir.Value | None, *,
    pooled_h: int, pooled_w: int, spatial_scale: float, sampling_ratio: int, gamma: float,
    aligned: bool,
) -> ir.Value:
    """Deformable RoIAlign pooling -> (K, C, pooled_h, pooled_w).

    Shapes: input (N, C, H, W), rois (K, 5), offset (K, 2, ph, pw) normalised (Δx, Δy) or
    None, mask (K, 1, ph, pw) or None. Sample grids are laid out (K, ph, pw, Gh, Gw).
    """
    check_type(input, "input", "deform_roi_pool decomposition")
    if sampling_ratio > 0:  # refused as the op refuses it, before a graph of its grids
        check_samples_per_side(sampling_ratio, "sampling_ratio")
    channels, out_dtype = static_dim(input, 1, "input"), input.dtype
    dtype, (input, rois, offset, mask) = upcast(input, rois, offset, mask)
    size = MapSize(input, dtype)
    flat = op.Reshape(op.Transpose(input, perm=[0, 2, 3, 1]), ints([-1, channels]))
    batch, (x1, y1, x2, y2), valid = split_rois(rois, input, dtype)
    shift = 0.5 if aligned else 0.0
    scale = floats(spatial_scale, dtype)
    start_w = op.Sub(op.Mul(x1, scale), floats(shift, dtype))
    start_h = op.Sub(op.Mul(y1, scale), floats(shift, dtype))
    roi_w = op.Sub(op.Sub(op.Mul(x2, scale), floats(shift, dtype)), start_w)
    roi_h = op.Sub(op.Sub(op.Mul(y2, scale), floats(shift, dtype)), start_h)
    if not aligned:  # legacy RoIAlign: RoIs at least 1x1
        roi_w, roi_h = op.Max(roi_w, floats(1, dtype)), op.Max(roi_h, floats(1, dtype))
    bin_w = op.Div(roi_w, floats(pooled_w, dtype))
    bin_h = op.Div(roi_h, floats(pooled_h, dtype))
    grid_h = sample_counts(roi_h, pooled_h, sampling_ratio, dtype)
    grid_w = sample_counts(roi_w, pooled_w, sampling_ratio, dtype)
    if sampling_ratio <= 0:
        grid_h, grid_w, valid = refuse_large_grids(grid_h, grid_w, valid, dtype)
    steps_h = sample_steps(grid_h, sampling_ratio, dtype)
    steps_w = sample_steps(grid_w, sampling_ratio, dtype)

    def to5d(value: ir.Value, axes: list[int]) -> ir.Value:
        return op.Unsqueeze(value, ints(axes))

    # Bin starts (K, ph, pw, 1, 1): RoI start + bin index * bin size (+ the learned shift).
    rows, cols = np.arange(pooled_h)[:, None, None, None], np.arange(pooled_w)[:, None, None]
    bin_y = op.Add(to5d(start_h, [2, 3, 4]), op.Mul(to5d(bin_h, [2, 3, 4]), floats(rows, dtype)))
    bin_x = op.Add(to5d(start_w, [2, 3, 4]), op.Mul(to5d(bin_w, [2, 3, 4]), floats(cols, dtype)))
    if offset is not None:
        dx, dy = op.Split(op.Mul(offset, floats(gamma, dtype)), num_outputs=2, axis=1)
        bin_x = op.Add(bin_x, op.Mul(to5d(op.Squeeze(dx, ints([1])), [3, 4]),
                                     to5d(roi_w, [2, 3, 4])))
        bin_y = op.Add(bin_y, op.Mul(to5d(op.Squeeze(dy, ints([1])), [3, 4]),
                                     to5d(roi_h, [2, 3, 4])))
    # Sample i of a bin sits at (i + 0.5) * bin / grid (grid >= 1 where any sample exists).
    safe_h = op.Max(grid_h, floats(1, dtype))
    safe_w = op.Max(grid_w, floats(1, dtype))
    step_y = op.Div(to5d(bin_h, [2, 3, 4]), to5d(safe_h, [2, 3, 4]))
    step_x = op.Div(to5d(bin_w, [2, 3, 4]), to5d(safe_w, [2, 3, 4]))
    half = floats(0.5, dtype)
    y = op.Add(bin_y, op.Mul(step_y, op.Reshape(op.Add(steps_h, half), ints([1, 1, 1, -1, 1]))))
    x = op.Add(bin_x, op.Mul(step_x, op.Reshape(op.Add(steps_w, half), ints([1, 1, 1, 1, -1]))))

    taken = op.And(
        op.Less(op.Reshape(steps_h, ints([1, 1, 1, -1, 1])), to5d(grid_h, [2, 3, 4])),
        op.Less(op.Reshape(steps_w, ints([1, 1, 1, 1, -1])), to5d(grid_w, [2, 3, 4])),
    )
    # Written as "inside" so that a NaN position (every comparison false) is not.
    inside = op.And(
        op.And(op.GreaterOrEqual(y, floats(-1, dtype)), op.LessOrEqual(y, size.height_f)),
        op.And(op.GreaterOrEqual(x, floats(-1, dtype)), op.LessOrEqual(x, size.width_f)),
    )
    base = op.Mul(to5d(batch, [1, 2, 3, 4]), size.pixels)
    values = bilinear_gather(flat, base, y, x, size, dtype, per_channel=True)
    keep = op.Unsqueeze(op.And(taken, inside), ints([-1]))
    values = op.Where(keep, values, floats(0, dtype))
    count = op.Max(op.Mul(grid_h, grid_w), floats(1, dtype))  # (K, 1)
    pooled = op.Div(op.ReduceSum(values, ints([3, 4]), keepdims=0), to5d(count, [2, 3]))
    out = op.Transpose(pooled, perm=[0, 3, 1, 2])  # (K, C, ph, pw)
    out = out if mask is None else op.Mul(out, mask)
    if offset is not None:
        out = nan_where(out, nan_offsets(offset, dtype, per_position=True), dtype)
    return downcast(invalidate(out, valid, dtype), out_dtype, dtype)


def round_half_away(value: ir.Value, dtype: ir.DataType) -> ir.Value:
    """C ``round``: halves away from zero (ONNX Round goes to even)."""
    return op.Mul(op.Sign(value), op.Floor(op.Add(op.Abs(value), floats(0.5, dtype))))


def deform_psroi_pool(
    input: ir.Value, rois: ir.Value, offset: ir.Value | None, *, spatial_scale: float,
    output_dim: int, group_size: int, pooled_size: int, part_size: int,
    sample_per_part: int, trans_std: float,
) -> tuple[ir.Value, ir.Value]:
    """Deformable position-sensitive RoI pooling -> (out, count), both (K, D, p, p).

    Shapes: input (N, D*group_size², H, W), rois (K, 5), offset (K, 2*classes, part, part)
    or None (no offsets). Samples are laid out (K, D, p, p, sh, sw), sh = sw = sample_per_part.
    """
    check_type(input, "input", "deform_psroi_pool decomposition")
    check_samples_per_side(sample_per_part, "sample_per_part")  # as the op refuses it
    channels, out_dtype = static_dim(input, 1, "input"), input.dtype
    classes = 0 if offset is None else static_dim(offset, 1, "offset") // 2
    dtype, (input, rois, offset) = upcast(input, rois, offset)
    size = MapSize(input, dtype)
    flat = op.Reshape(input, ints([-1]))
    batch, coords, valid = split_rois(rois, input, dtype)
    x1, y1, x2, y2 = (round_half_away(c, dtype) for c in coords)
    scale, half, one = floats(spatial_scale, dtype), floats(0.5, dtype), floats(1, dtype)
    start_w = op.Sub(op.Mul(x1, scale), half)
    start_h = op.Sub(op.Mul(y1, scale), half)
    min_size = floats(0.1, dtype)
    roi_w = op.Max(op.Sub(op.Sub(op.Mul(op.Add(x2, one), scale), half), start_w), min_size)
    roi_h = op.Max(op.Sub(op.Sub(op.Mul(op.Add(y2, one), scale), half), start_h), min_size)
    bin_w = op.Div(roi_w, floats(pooled_size, dtype))
    bin_h = op.Div(roi_h, floats(pooled_size, dtype))

    def to6d(value: ir.Value) -> ir.Value:  # (K, 1) -> (K, 1, 1, 1, 1, 1)
        return op.Unsqueeze(value, ints([2, 3, 4, 5]))

    # Static per-output tables over (D, p, p): part cell, class and input channel.
    p = pooled_size
    bins = np.arange(p)
    part = part_cells(p, part_size).numpy()
    cell = np.clip(bins * group_size // p, 0, group_size - 1)
    ctop = np.arange(output_dim)[:, None, None]
    channel = (ctop * group_size + cell[:, None]) * group_size + cell[None, :]  # (D, p, p)
    bin_y = op.Add(to6d(start_h), op.Mul(to6d(bin_h), floats(bins[:, None, None, None], dtype)))
    bin_x = op.Add(to6d(start_w), op.Mul(to6d(bin_w), floats(bins[:, None, None], dtype)))
    if offset is not None:
        per_class = output_dim // classes
        cls = ctop // per_class  # (D, 1, 1)
        cells = (part[:, None] * part_size + part[None, :])  # (p, p): index in part grid
        index_x = (2 * cls) * part_size * part_size + cells  # (D, p, p) into flat offsets
        index_y = (2 * cls + 1) * part_size * part_size + cells
        flat_offset = ints([0, 2 * classes * part_size * part_size])  # 0: keep K (may be 0)
        trans = op.Reshape(op.Mul(offset, floats(trans_std, dtype)), flat_offset)
        tx = op.Gather(trans, ints(index_x), axis=1)  # (K, D, p, p)
        ty = op.Gather(trans, ints(index_y), axis=1)
        bin_x = op.Add(bin_x, op.Unsqueeze(op.Mul(tx, op.Unsqueeze(roi_w, ints([2, 3]))),
                                           ints([4, 5])))
        bin_y = op.Add(bin_y, op.Unsqueeze(op.Mul(ty, op.Unsqueeze(roi_h, ints([2, 3]))),
                                           ints([4, 5])))
    steps = np.arange(sample_per_part, dtype=np.float64)
    y = op.Add(bin_y, op.Mul(op.Div(to6d(bin_h), floats(sample_per_part, dtype)),
                             floats(steps[:, None], dtype)))
    x = op.Add(bin_x, op.Mul(op.Div(to6d(bin_w), floats(sample_per_part, dtype)),
                             floats(steps, dtype)))
    # Written as "inside" so that a NaN position (every comparison false) is skipped.
    inside = op.And(
        op.And(op.GreaterOrEqual(y, floats(-0.5, dtype)),
               op.LessOrEqual(y, op.Sub(size.height_f, half))),
        op.And(op.GreaterOrEqual(x, floats(-0.5, dtype)),
               op.LessOrEqual(x, op.Sub(size.width_f, half))),
    )
    plane = op.Add(op.Mul(op.Unsqueeze(batch, ints([1, 2, 3, 4, 5])), ints(channels)),
                   ints(channel[..., None, None]))
    base = op.Mul(plane, size.pixels)
    values = bilinear_gather(flat, base, y, x, size, dtype, per_channel=False)
    total = op.ReduceSum(op.Where(inside, values, floats(0, dtype)), ints([4, 5]), keepdims=0)
    # Positions (and so counts) are shared by the channels of a class: (K, 1 or D, p, p).
    count = op.ReduceSum(op.Cast(inside, to=dtype), ints([4, 5]), keepdims=0)
    count = op.Expand(count, op.Shape(total))
    out = op.Where(op.Greater(count, floats(0, dtype)),
                   op.Div(total, op.Max(count, one)), floats(0, dtype))
    if offset is not None:  # DeformPSRoIPool's rule: per position where the grids agree
        bad = nan_offsets(offset, dtype, per_position=part_size == pooled_size)
        out, count = nan_where(out, bad, dtype), nan_where(count, bad, dtype)
    out, count = invalidate(out, valid, dtype), invalidate(count, valid, dtype)
    return downcast(out, out_dtype, dtype), count  # the count in the compute dtype, as the op


# Translations of the registered custom ops (their schemas, argument for argument).


def deform_roi_pool_op(
    input: TFloat, rois: TFloat, offset: TFloat | None, mask: TFloat | None,
    pooled_h: int, pooled_w: int, spatial_scale: float, sampling_ratio: int, gamma: float,
    aligned: bool,
) -> TFloat:
    """``torch.ops.deformconv.deform_roi_pool.default`` -> :func:`deform_roi_pool`."""
    return deform_roi_pool(
        input, rois, offset, mask, pooled_h=pooled_h, pooled_w=pooled_w,
        spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, gamma=gamma,
        aligned=aligned,
    )


def deform_psroi_pool_op(
    input: TFloat, rois: TFloat, offset: TFloat | None, spatial_scale: float, output_dim: int,
    group_size: int, pooled_size: int, part_size: int, sample_per_part: int, trans_std: float,
) -> tuple[TFloat, TFloat]:
    """``torch.ops.deformconv.deform_psroi_pool.default`` -> :func:`deform_psroi_pool`."""
    return deform_psroi_pool(
        input, rois, offset, spatial_scale=spatial_scale, output_dim=output_dim,
        group_size=group_size, pooled_size=pooled_size, part_size=part_size,
        sample_per_part=sample_per_part, trans_std=trans_std,
    )
