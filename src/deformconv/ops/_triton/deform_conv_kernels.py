"""Triton kernels of deform_conv2d: implicit GEMM and direct aggregation, both directions.

Notation: a block of ``BLOCK_P`` output pixels ``p`` (flat over N × Hout × Wout), kernel
point ``k`` (row-major, ``KK = kh·kw``), offset group ``g`` of ``cpo`` input channels,
conv group ``gi`` of ``cin_g`` input and ``cout_g`` output channels. The input is read
through its strides (the host passes it channels-last); the weight comes as
``wt[k, ci, o] = weight[o, ci, k]`` ``(KK, cin_g, Cout)``. No column buffer exists in
global memory: each kernel samples its tile of columns in registers, once per
(pixel block, kernel point, offset group) for the corners, reused by every channel.

Each kernel runs on a flat grid (``launch.flat_grid``) and recovers the indices of the
program listed below with ``launch.program_ids``, the first varying fastest.

- ``forward_gemm``: program (pixels, Cout block, conv group); ``tl.dot`` of sampled
  ``[pixels × channels]`` tiles with weight tiles, float32 accumulator, bias epilogue.
- ``forward_direct``: program (pixels, Cout block), for conv groups too small for
  ``tl.dot`` (depthwise): each output channel aggregates its own few input channels.
- ``backward_data``: program (pixels, offset group × kernel point) owns those offset and
  mask gradients (plain stores, no atomics); the columns' gradient ``grad_out · W`` is a
  ``tl.dot`` (or a direct sum); the input gradient is a 4-corner atomic add into float32.
- ``weight_grad_gemm`` / ``weight_grad_direct``: recompute the columns and reduce
  ``grad_outᵀ · columns`` over one split of the pixels each; the host sums the splits
  (deterministic).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .bilinear import corner_offsets, corners, interpolate, load_corner, scatter_corners, slopes
from .launch import program_ids


@triton.jit
def _pixel_block(pid, pixels, hout, wout, BLOCK_P: tl.constexpr):
    """``(n, oy, ox, ok)`` of the ``pid``-th block of output pixels."""
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    ok = p < pixels
    p = tl.where(ok, p, 0)
    n = p // (hout * wout)
    rest = p % (hout * wout)
    return n, rest // wout, rest % wout, ok


@triton.jit
def _sample_point(offset_ptr, mask_ptr, n, oy, ox, ok, g, k, hout, wout, offset_groups,
                  stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                  KW: tl.constexpr, KK: tl.constexpr, HAS_MASK: tl.constexpr):
    """Sample position ``(h, w)`` and modulation ``m`` (0 on padding lanes) of kernel point
    ``k`` of offset group ``g`` at pixels ``(n, oy, ox)``; also the offset's element index."""
    plane = hout * wout
    pixel = oy * wout + ox
    at = (n.to(tl.int64) * (2 * offset_groups * KK) + 2 * (g * KK + k)) * plane + pixel
    dh = tl.load(offset_ptr + at, mask=ok, other=0.0).to(tl.float32)
    dw = tl.load(offset_ptr + at + plane, mask=ok, other=0.0).to(tl.float32)
    h = (oy * stride_h - pad_h + (k // KW) * dil_h).to(tl.float32) + dh
    w = (ox * stride_w - pad_w + (k % KW) * dil_w).to(tl.float32) + dw
    if HAS_MASK:
        at_mask = (n.to(tl.int64) * (offset_groups * KK) + g * KK + k) * plane + pixel
        m = tl.load(mask_ptr + at_mask, mask=ok, other=0.0).to(tl.float32)
    else:
        m = tl.where(ok, 1.0, 0.0)
    return h, w, m, at


@triton.jit
def _columns(rows, channels, channels_ok, o00, o01, o10, o11, ok00, ok01, ok10, ok11,
             lh, lw, m):
    """Sampled, modulated ``[pixels × channels]`` tile (float32)."""
    v00 = load_corner(rows, o00, ok00, channels, channels_ok)
    v01 = load_corner(rows, o01, ok01, channels, channels_ok)
    v10 = load_corner(rows, o10, ok10, channels, channels_ok)
    v11 = load_corner(rows, o11, ok11, channels, channels_ok)
    return interpolate(v00, v01, v10, v11, lh[:, None], lw[:, None]) * m[:, None]


@triton.jit
def _sampled_columns(rows, offset_ptr, mask_ptr, n, oy, ox, p_ok, g, k, channels, channels_ok,
                     height, width, hout, wout, offset_groups, x_sh, x_sw,
                     stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                     KW: tl.constexpr, KK: tl.constexpr, HAS_MASK: tl.constexpr):
    """``_columns`` of kernel point ``k`` of offset group ``g``, positions computed here."""
    h, w, m, _ = _sample_point(offset_ptr, mask_ptr, n, oy, ox, p_ok, g, k, hout, wout,
                               offset_groups, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                               KW, KK, HAS_MASK)
    h0, w0, lh, lw, ok00, ok01, ok10, ok11 = corners(h, w, height, width)
    o00, o01, o10, o11 = corner_offsets(h0, w0, x_sh, x_sw)
    return _columns(rows, channels, channels_ok, o00, o01, o10, o11, ok00, ok01, ok10, ok11,
                    lh, lw, m)


@triton.jit
def _store_output(acc, bias_ptr, out_ptr, n, oy, ox, p_ok, o, o_ok, out_sn, out_sc, out_sh,
                  out_sw, HAS_BIAS: tl.constexpr):
    """Epilogue: add the bias to the ``[pixels × Cout]`` accumulator, store in out's dtype."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o, mask=o_ok, other=0.0).to(tl.float32)[None, :]
    out_rows = n.to(tl.int64) * out_sn + oy.to(tl.int64) * out_sh + ox * out_sw
    tl.store(out_ptr + out_rows[:, None] + o.to(tl.int64)[None, :] * out_sc,
             acc.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & o_ok[None, :])


@triton.jit
def forward_gemm(
    x_ptr, offset_ptr, mask_ptr, wt_ptr, bias_ptr, out_ptr,
    height, width, hout, wout, pixels, cout, cin_g, cout_g, cpo, offset_groups,
    x_sn, x_sc, x_sh, x_sw, out_sn, out_sc, out_sh, out_sw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    p_block, o_block, gi = program_ids(tl.cdiv(pixels, BLOCK_P), tl.cdiv(cout_g, BLOCK_O))
    n, oy, ox, p_ok = _pixel_block(p_block, pixels, hout, wout, BLOCK_P)
    o_local = o_block * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = o_local < cout_g
    o = gi * cout_g + o_local
    rows = x_ptr + n.to(tl.int64) * x_sn
    c_begin = gi * cin_g
    c_end = c_begin + cin_g
    acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=tl.float32)
    for k in range(0, KH * KW):
        for g in range(c_begin // cpo, (c_end - 1) // cpo + 1):
            h, w, m, _ = _sample_point(offset_ptr, mask_ptr, n, oy, ox, p_ok, g, k, hout, wout,
                                       offset_groups, stride_h, stride_w, pad_h, pad_w, dil_h,
                                       dil_w, KW, KH * KW, HAS_MASK)
            h0, w0, lh, lw, ok00, ok01, ok10, ok11 = corners(h, w, height, width)
            o00, o01, o10, o11 = corner_offsets(h0, w0, x_sh, x_sw)
            c_lo = tl.maximum(c_begin, g * cpo)
            c_hi = tl.minimum(c_end, (g + 1) * cpo)
            for c0 in range(c_lo, c_hi, BLOCK_C):
                c = c0 + tl.arange(0, BLOCK_C)
                c_ok = c < c_hi
                cols = _columns(rows, c.to(tl.int64) * x_sc, c_ok, o00, o01, o10, o11,
                                ok00, ok01, ok10, ok11, lh, lw, m)
                wt = tl.load(wt_ptr + (k * cin_g + c - c_begin)[:, None] * cout + o[None, :],
                             mask=c_ok[:, None] & o_ok[None, :], other=0.0)
                acc = tl.dot(cols.to(DOT_DTYPE), wt.to(DOT_DTYPE), acc,
                             input_precision=PRECISION)
    _store_output(acc, bias_ptr, out_ptr, n, oy, ox, p_ok, o, o_ok, out_sn, out_sc, out_sh,
                  out_sw, HAS_BIAS)


@triton.jit
def forward_direct(
    x_ptr, offset_ptr, mask_ptr, wt_ptr, bias_ptr, out_ptr,
    height, width, hout, wout, pixels, cout, cin_g, cout_g, cpo, offset_groups,
    x_sn, x_sc, x_sh, x_sw, out_sn, out_sc, out_sh, out_sw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr,
):
    p_block, o_block, _ = program_ids(tl.cdiv(pixels, BLOCK_P), tl.cdiv(cout, BLOCK_O))
    n, oy, ox, p_ok = _pixel_block(p_block, pixels, hout, wout, BLOCK_P)
    o_first = o_block * BLOCK_O
    o = o_first + tl.arange(0, BLOCK_O)
    o_ok = o < cout
    first_channel = (o_first // cout_g) * cin_g  # of the block's first and last conv group
    last_channel = ((tl.minimum(o_first + BLOCK_O, cout) - 1) // cout_g + 1) * cin_g - 1
    channel_base = (o // cout_g) * cin_g  # [BLOCK_O]: first input channel of o's group
    rows = x_ptr + n.to(tl.int64) * x_sn
    acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=tl.float32)
    for k in range(0, KH * KW):
        for g in range(first_channel // cpo, last_channel // cpo + 1):
            h, w, m, _ = _sample_point(offset_ptr, mask_ptr, n, oy, ox, p_ok, g, k, hout, wout,
                                       offset_groups, stride_h, stride_w, pad_h, pad_w, dil_h,
                                       dil_w, KW, KH * KW, HAS_MASK)
            h0, w0, lh, lw, ok00, ok01, ok10, ok11 = corners(h, w, height, width)
            o00, o01, o10, o11 = corner_offsets(h0, w0, x_sh, x_sw)
            for j in range(0, cin_g):
                c = channel_base + j
                in_group = o_ok & (c >= g * cpo) & (c < (g + 1) * cpo)
                cols = _columns(rows, c.to(tl.int64) * x_sc, in_group, o00, o01, o10, o11,
                                ok00, ok01, ok10, ok11, lh, lw, m)
                wt = tl.load(wt_ptr + (k * cin_g + j) * cout + o, mask=o_ok, other=0.0)
                acc += cols * wt.to(tl.float32)[None, :]
    _store_output(acc, bias_ptr, out_ptr, n, oy, ox, p_ok, o, o_ok, out_sn, out_sc, out_sh,
                  out_sw, HAS_BIAS)


@triton.jit
def _columns_grad_gemm(go_rows, go_sc, p_ok, wt_ptr, cout, cin_g, cout_g, k, gi, c_local, c_ok,
                       BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr,
                       DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """``grad_out · W`` for channels ``c_local`` of conv group ``gi``: ``[pixels × channels]``."""
    grad = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    o_end = (gi + 1) * cout_g
    for o0 in range(gi * cout_g, o_end, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)
        o_ok = o < o_end
        go = tl.load(go_rows[:, None] + o.to(tl.int64)[None, :] * go_sc,
                     mask=p_ok[:, None] & o_ok[None, :], other=0.0)
        wt = tl.load(wt_ptr + (k * cin_g + c_local)[None, :] * cout + o[:, None],
                     mask=o_ok[:, None] & c_ok[None, :], other=0.0)
        grad = tl.dot(go.to(DOT_DTYPE), wt.to(DOT_DTYPE), grad, input_precision=PRECISION)
    return grad


@triton.jit
def _columns_grad_direct(go_rows, go_sc, p_ok, wt_ptr, cout, cin_g, cout_g, k, c, c_ok,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """``grad_out · W`` for input channels ``c`` (of any conv groups): ``[pixels × channels]``."""
    gi = c // cin_g
    c_local = c - gi * cin_g
    grad = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for j in range(0, cout_g):
        o = gi * cout_g + j
        go = tl.load(go_rows[:, None] + o.to(tl.int64)[None, :] * go_sc,
                     mask=p_ok[:, None] & c_ok[None, :], other=0.0)
        wt = tl.load(wt_ptr + (k * cin_g + c_local) * cout + o, mask=c_ok, other=0.0)
        grad += go.to(tl.float32) * wt.to(tl.float32)[None, :]
    return grad


@triton.jit
def backward_data(
    x_ptr, offset_ptr, mask_ptr, wt_ptr, go_ptr, grad_x_ptr, grad_offset_ptr, grad_mask_ptr,
    height, width, hout, wout, pixels, cin, cout, cin_g, cout_g, cpo, offset_groups,
    x_sn, x_sc, x_sh, x_sw, go_sn, go_sc, go_sh, go_sw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr, USE_GEMM: tl.constexpr,
    NEED_INPUT: tl.constexpr, NEED_OFFSET_MASK: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    """Offset/mask gradients of (pixel block, g, k) and its share of the input gradient.

    ``grad_x_ptr`` is a zeroed float32 (N, H, W, Cin) buffer.
    """
    p_block, point, _ = program_ids(tl.cdiv(pixels, BLOCK_P), offset_groups * KH * KW)
    n, oy, ox, p_ok = _pixel_block(p_block, pixels, hout, wout, BLOCK_P)
    g = point // (KH * KW)
    k = point % (KH * KW)
    h, w, m, at = _sample_point(offset_ptr, mask_ptr, n, oy, ox, p_ok, g, k, hout, wout,
                                offset_groups, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                                KW, KH * KW, HAS_MASK)
    h0, w0, lh, lw, ok00, ok01, ok10, ok11 = corners(h, w, height, width)
    o00, o01, o10, o11 = corner_offsets(h0, w0, x_sh, x_sw)
    g00, g01, g10, g11 = corner_offsets(h0, w0, width * cin, cin)
    rows = x_ptr + n.to(tl.int64) * x_sn
    grad_rows = grad_x_ptr + n.to(tl.int64) * height * width * cin  # int64 before the product
    go_rows = go_ptr + (n.to(tl.int64) * go_sn + oy.to(tl.int64) * go_sh + ox * go_sw)
    grad_h = tl.zeros((BLOCK_P,), dtype=tl.float32)
    grad_w = tl.zeros((BLOCK_P,), dtype=tl.float32)
    grad_m = tl.zeros((BLOCK_P,), dtype=tl.float32)
    c_group_lo = g * cpo
    c_group_hi = c_group_lo + cpo
    if USE_GEMM:  # one segment per conv group overlapping the offset group
        gi_first = c_group_lo // cin_g
        gi_last = (c_group_hi - 1) // cin_g
    else:  # the whole offset group at once
        gi_first = 0
        gi_last = 0
    for gi in range(gi_first, gi_last + 1):
        if USE_GEMM:
            c_lo = tl.maximum(c_group_lo, gi * cin_g)
            c_hi = tl.minimum(c_group_hi, (gi + 1) * cin_g)
        else:
            c_lo = c_group_lo
            c_hi = c_group_hi
        for c0 in range(c_lo, c_hi, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            c_ok = c < c_hi
            if USE_GEMM:
                grad_cols = _columns_grad_gemm(go_rows, go_sc, p_ok, wt_ptr, cout, cin_g, cout_g,
                                               k, gi, c - gi * cin_g, c_ok, BLOCK_P, BLOCK_O,
                                               BLOCK_C, DOT_DTYPE, PRECISION)
            else:
                grad_cols = _columns_grad_direct(go_rows, go_sc, p_ok, wt_ptr, cout, cin_g,
                                                 cout_g, k, c, c_ok, BLOCK_P, BLOCK_C)
            if NEED_OFFSET_MASK:
                channels = c.to(tl.int64) * x_sc
                v00 = load_corner(rows, o00, ok00, channels, c_ok)
                v01 = load_corner(rows, o01, ok01, channels, c_ok)
                v10 = load_corner(rows, o10, ok10, channels, c_ok)
                v11 = load_corner(rows, o11, ok11, channels, c_ok)
                slope_h, slope_w = slopes(v00, v01, v10, v11, lh[:, None], lw[:, None])
                grad_h += tl.sum(grad_cols * slope_h, axis=1)
                grad_w += tl.sum(grad_cols * slope_w, axis=1)
                if HAS_MASK:
                    value = interpolate(v00, v01, v10, v11, lh[:, None], lw[:, None])
                    grad_m += tl.sum(grad_cols * value, axis=1)
            if NEED_INPUT:
                channels_ok = c_ok[None, :] & p_ok[:, None]
                scatter_corners(grad_rows[:, None] + c[None, :], g00[:, None], g01[:, None],
                                g10[:, None], g11[:, None], ok00[:, None] & channels_ok,
                                ok01[:, None] & channels_ok, ok10[:, None] & channels_ok,
                                ok11[:, None] & channels_ok, grad_cols * m[:, None],
                                lh[:, None], lw[:, None])
    if NEED_OFFSET_MASK:
        out_ty = grad_offset_ptr.dtype.element_ty
        tl.store(grad_offset_ptr + at, (grad_h * m).to(out_ty), mask=p_ok)
        tl.store(grad_offset_ptr + at + hout * wout, (grad_w * m).to(out_ty), mask=p_ok)
        if HAS_MASK:
            plane = hout * wout
            at_mask = (n.to(tl.int64) * (offset_groups * KH * KW) + g * KH * KW + k) * plane \
                + oy * wout + ox
            tl.store(grad_mask_ptr + at_mask, grad_m.to(grad_mask_ptr.dtype.element_ty),
                     mask=p_ok)


@triton.jit
def weight_grad_gemm(
    x_ptr, offset_ptr, mask_ptr, go_ptr, partial_ptr,
    height, width, hout, wout, pixels, blocks_per_split, cout, cin_g, cout_g, cpo,
    offset_groups, x_sn, x_sc, x_sh, x_sw, go_sn, go_sc, go_sh, go_sw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    """``partial[split, o, ci, k] = Σ_p grad_out[p, o] · columns[p, ci, k]`` over one split.

    Program (conv group × Cout block, Cin block, split × kernel point).
    """
    o_blocks = tl.cdiv(cout_g, BLOCK_O)
    group_block, c_block, split_point = program_ids((cout // cout_g) * o_blocks,
                                                    tl.cdiv(cin_g, BLOCK_C))
    gi = group_block // o_blocks
    o_local = (group_block % o_blocks) * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = o_local < cout_g
    o = gi * cout_g + o_local
    c_first = c_block * BLOCK_C
    c_local = c_first + tl.arange(0, BLOCK_C)
    c_ok = c_local < cin_g
    c = gi * cin_g + c_local
    split = split_point // (KH * KW)
    k = split_point % (KH * KW)
    g_first = (gi * cin_g + c_first) // cpo
    g_last = (gi * cin_g + tl.minimum(c_first + BLOCK_C, cin_g) - 1) // cpo
    p_blocks = tl.cdiv(pixels, BLOCK_P)
    acc = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    for block in range(split * blocks_per_split,
                       tl.minimum((split + 1) * blocks_per_split, p_blocks)):
        n, oy, ox, p_ok = _pixel_block(block, pixels, hout, wout, BLOCK_P)
        go_rows = n.to(tl.int64) * go_sn + oy.to(tl.int64) * go_sh + ox * go_sw
        go = tl.load(go_ptr + go_rows[None, :] + o.to(tl.int64)[:, None] * go_sc,
                     mask=o_ok[:, None] & p_ok[None, :], other=0.0)
        rows = x_ptr + n.to(tl.int64) * x_sn
        for g in range(g_first, g_last + 1):
            in_group = c_ok & (c >= g * cpo) & (c < (g + 1) * cpo)
            cols = _sampled_columns(rows, offset_ptr, mask_ptr, n, oy, ox, p_ok, g, k,
                                    c.to(tl.int64) * x_sc, in_group, height, width, hout, wout,
                                    offset_groups, x_sh, x_sw, stride_h, stride_w, pad_h, pad_w,
                                    dil_h, dil_w, KW, KH * KW, HAS_MASK)
            acc = tl.dot(go.to(DOT_DTYPE), cols.to(DOT_DTYPE), acc, input_precision=PRECISION)
    at = ((split * cout + o).to(tl.int64)[:, None] * cin_g + c_local[None, :]) * (KH * KW) + k
    tl.store(partial_ptr + at, acc, mask=o_ok[:, None] & c_ok[None, :])


@triton.jit
def weight_grad_direct(
    x_ptr, offset_ptr, mask_ptr, go_ptr, partial_ptr,
    height, width, hout, wout, pixels, blocks_per_split, cout, cin_g, cout_g, cpo,
    offset_groups, x_sn, x_sc, x_sh, x_sw, go_sn, go_sc, go_sh, go_sw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr,
):
    """``partial[split, o, j, k] = Σ_p grad_out[p, o] · columns[p, c(o, j), k]`` where
    ``c(o, j)`` is input channel j of o's conv group. Program (k × j, Cout block, split)."""
    point_channel, o_block, split = program_ids(KH * KW * cin_g, tl.cdiv(cout, BLOCK_O))
    o_first = o_block * BLOCK_O
    o = o_first + tl.arange(0, BLOCK_O)
    o_ok = o < cout
    k = point_channel // cin_g
    j = point_channel % cin_g
    c = (o // cout_g) * cin_g + j
    g_first = ((o_first // cout_g) * cin_g + j) // cpo
    g_last = (((tl.minimum(o_first + BLOCK_O, cout) - 1) // cout_g) * cin_g + j) // cpo
    p_blocks = tl.cdiv(pixels, BLOCK_P)
    acc = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for block in range(split * blocks_per_split,
                       tl.minimum((split + 1) * blocks_per_split, p_blocks)):
        n, oy, ox, p_ok = _pixel_block(block, pixels, hout, wout, BLOCK_P)
        go_rows = n.to(tl.int64) * go_sn + oy.to(tl.int64) * go_sh + ox * go_sw
        go = tl.load(go_ptr + go_rows[:, None] + o.to(tl.int64)[None, :] * go_sc,
                     mask=p_ok[:, None] & o_ok[None, :], other=0.0).to(tl.float32)
        rows = x_ptr + n.to(tl.int64) * x_sn
        for g in range(g_first, g_last + 1):
            in_group = o_ok & (c >= g * cpo) & (c < (g + 1) * cpo)
            cols = _sampled_columns(rows, offset_ptr, mask_ptr, n, oy, ox, p_ok, g, k,
                                    c.to(tl.int64) * x_sc, in_group, height, width, hout, wout,
                                    offset_groups, x_sh, x_sw, stride_h, stride_w, pad_h, pad_w,
                                    dil_h, dil_w, KW, KH * KW, HAS_MASK)
            acc += tl.sum(go * cols, axis=0)
    at = ((split * cout + o).to(tl.int64) * cin_g + j) * (KH * KW) + k
    tl.store(partial_ptr + at, acc, mask=o_ok)
