"""deform_conv2d on CUDA with Triton: launches of ``deform_conv_kernels``.

Same entry points as the other backends (``forward``, ``backward``; arguments already
checked). float32, float16 and bfloat16 data; every sum accumulates in float32. Nothing
the size of the columns is allocated: the forward needs the output, the backward a
float32 input-gradient buffer and ``split`` float32 copies of the weight gradient.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from .._dispatch import alert_not_deterministic
from . import deform_conv_kernels as kernels
from .launch import (
    block,
    channels_last,
    check_index_range,
    dot_dtype,
    flat_grid,
    input_precision,
    on_device,
    programs_per_wave,
)

Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # stride, padding, dilation

# Largest float32 weight-gradient partials (bytes) the split of the pixels may allocate.
_PARTIALS_BYTES = 256 * 2**20


def _use_gemm(cin_g: int, cout_g: int) -> bool:
    """``tl.dot`` tiles need 16 rows and columns; narrower groups (depthwise) aggregate
    directly."""
    return cin_g >= 16 and cout_g >= 16


class _Layout:
    """Sizes of one call, and the tensors every kernel reads, in the layouts they expect."""

    def __init__(self, input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None,
                 geometry: Geometry) -> None:
        self.n, self.cin, self.height, self.width = input.shape
        self.cout, self.cin_g, self.kh, self.kw = weight.shape
        self.groups = self.cin // self.cin_g
        self.cout_g = self.cout // self.groups
        self.hout, self.wout = offset.shape[2:]
        self.offset_groups = offset.shape[1] // (2 * self.kh * self.kw)
        self.cpo = self.cin // self.offset_groups
        self.pixels = self.n * self.hout * self.wout
        check_index_range(self.pixels, "N * Hout * Wout")
        self.x = channels_last(input)
        self.offset = offset.contiguous()
        self.mask = mask.contiguous() if mask is not None else self.offset  # unread then
        self.has_mask = mask is not None
        self.geometry = [v for pair in geometry for v in pair]
        self.gemm = _use_gemm(self.cin_g, self.cout_g)
        self.dot_dtype = dot_dtype(input.dtype)
        self.precision = input_precision()

    def sizes(self) -> list[int]:
        return [self.height, self.width, self.hout, self.wout, self.pixels]

    def channel_sizes(self) -> list[int]:
        return [self.cout, self.cin_g, self.cout_g, self.cpo, self.offset_groups]

    def weight_t(self, weight: Tensor) -> Tensor:
        """``wt[k, ci, o] = weight[o, ci, k]``, (kh*kw, Cin/groups, Cout) contiguous."""
        return weight.permute(2, 3, 1, 0).reshape(self.kh * self.kw, self.cin_g, self.cout) \
            .contiguous()


def forward(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
            mask: Tensor | None, geometry: Geometry) -> Tensor:
    """(N, Cin, H, W) -> (N, Cout, Hout, Wout) in the input's dtype."""
    a = _Layout(input, offset, weight, mask, geometry)
    out = input.new_empty(a.n, a.cout, a.hout, a.wout)
    if a.pixels == 0:
        return out
    common = (
        a.x, a.offset, a.mask, a.weight_t(weight), bias.contiguous() if bias is not None else out,
        out,
        *a.sizes(), *a.channel_sizes(), *a.x.stride(), *out.stride(), *a.geometry,
    )
    flags = {"KH": a.kh, "KW": a.kw, "HAS_MASK": a.has_mask, "HAS_BIAS": bias is not None,
             "BLOCK_P": 64, "num_warps": 4}
    with on_device(input):
        if a.gemm:
            block_o, block_c = block(a.cout_g, 16, 64), block(min(a.cin_g, a.cpo), 16, 32)
            grid = (triton.cdiv(a.pixels, 64), triton.cdiv(a.cout_g, block_o), a.groups)
            kernels.forward_gemm[flat_grid(grid, "deform_conv2d forward")](
                *common, **flags, BLOCK_O=block_o, BLOCK_C=block_c, DOT_DTYPE=a.dot_dtype,
                PRECISION=a.precision)
        else:
            block_o = block(a.cout, 16, 32)
            grid = (triton.cdiv(a.pixels, 64), triton.cdiv(a.cout, block_o))
            kernels.forward_direct[flat_grid(grid, "deform_conv2d forward")](
                *common, **flags, BLOCK_O=block_o)
    return out


def _weight_split(a: _Layout, tiles: int, block_p: int, wave: int) -> int:
    """Pixel splits of the weight gradient: enough programs to fill the device, within
    ``_PARTIALS_BYTES`` of partial sums."""
    p_blocks = triton.cdiv(a.pixels, block_p)
    by_memory = max(1, _PARTIALS_BYTES // (4 * a.cout * a.cin_g * a.kh * a.kw))
    return max(1, min(p_blocks, triton.cdiv(wave, tiles), by_memory))


def backward(grad_out: Tensor, input: Tensor, offset: Tensor, weight: Tensor,
             mask: Tensor | None, geometry: Geometry, need_input: bool, need_offset_mask: bool,
             need_weight: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (input, offset, weight, mask); a gradient not needed comes back as zeros.

    ``grad_mask`` is an empty tensor when ``mask`` is None.
    """
    a = _Layout(input, offset, weight, mask, geometry)
    grad_input = torch.zeros_like(input)
    grad_offset = torch.zeros_like(offset)
    grad_weight = torch.zeros_like(weight)
    grad_mask = torch.zeros_like(mask) if mask is not None else offset.new_empty(0)
    if a.pixels == 0:
        return grad_input, grad_offset, grad_weight, grad_mask
    with on_device(input):
        if need_input or need_offset_mask:
            _backward_data(a, grad_out, weight, grad_input, grad_offset, grad_mask, need_input,
                           need_offset_mask)
        if need_weight:
            _backward_weight(a, grad_out, grad_weight)
    return grad_input, grad_offset, grad_weight, grad_mask


def _backward_data(a: _Layout, grad_out: Tensor, weight: Tensor, grad_input: Tensor,
                   grad_offset: Tensor, grad_mask: Tensor, need_input: bool,
                   need_offset_mask: bool) -> None:
    # The input gradient gathers atomic adds: float32, channels-last, whatever the dtype.
    if need_input:
        alert_not_deterministic("deform_conv2d", "triton")
    grad_x = (a.x.new_zeros(a.n, a.height, a.width, a.cin, dtype=torch.float32) if need_input
              else a.offset)
    grad_off = grad_offset if grad_offset.is_contiguous() else torch.empty_like(a.offset)
    grad_m = grad_mask if not a.has_mask or grad_mask.is_contiguous() else torch.empty_like(
        a.mask)
    block_c = block(min(a.cin_g, a.cpo) if a.gemm else a.cpo, 16, 32 if a.gemm else 64)
    grid = (triton.cdiv(a.pixels, 32), a.offset_groups * a.kh * a.kw)
    kernels.backward_data[flat_grid(grid, "deform_conv2d backward")](
        a.x, a.offset, a.mask, a.weight_t(weight), grad_out, grad_x, grad_off,
        grad_m if a.has_mask else grad_off,
        *a.sizes(), a.cin, *a.channel_sizes(),
        *a.x.stride(), *grad_out.stride(), *a.geometry,
        KH=a.kh, KW=a.kw, HAS_MASK=a.has_mask, USE_GEMM=a.gemm, NEED_INPUT=need_input,
        NEED_OFFSET_MASK=need_offset_mask, BLOCK_P=32, BLOCK_O=block(a.cout_g, 16, 32),
        BLOCK_C=block_c, DOT_DTYPE=a.dot_dtype, PRECISION=a.precision, num_warps=4,
    )
    if need_input:
        grad_input.copy_(grad_x.permute(0, 3, 1, 2))
    if need_offset_mask:
        if grad_off is not grad_offset:
            grad_offset.copy_(grad_off)
        if a.has_mask and grad_m is not grad_mask:
            grad_mask.copy_(grad_m)


def _backward_weight(a: _Layout, grad_out: Tensor, grad_weight: Tensor) -> None:
    kk = a.kh * a.kw
    strides = (*a.x.stride(), *grad_out.stride(), *a.geometry)
    flags = {"KH": a.kh, "KW": a.kw, "HAS_MASK": a.has_mask, "num_warps": 4}
    wave = programs_per_wave(grad_out)
    if a.gemm:
        block_o, block_c, block_p = block(a.cout_g, 16, 64), block(a.cin_g, 16, 32), 32
        tiles = a.groups * triton.cdiv(a.cout_g, block_o) * triton.cdiv(a.cin_g, block_c) * kk
        split = _weight_split(a, tiles, block_p, wave)
        partial = grad_out.new_empty(split, a.cout, a.cin_g, kk, dtype=torch.float32)
        grid = (a.groups * triton.cdiv(a.cout_g, block_o), triton.cdiv(a.cin_g, block_c),
                split * kk)
        kernels.weight_grad_gemm[flat_grid(grid, "deform_conv2d weight gradient")](
            a.x, a.offset, a.mask, grad_out, partial, *a.sizes(),
            triton.cdiv(triton.cdiv(a.pixels, block_p), split), *a.channel_sizes(), *strides,
            **flags,
            BLOCK_P=block_p, BLOCK_O=block_o, BLOCK_C=block_c, DOT_DTYPE=a.dot_dtype,
            PRECISION=a.precision)
    else:
        block_o, block_p = block(a.cout, 16, 32), 64
        tiles = triton.cdiv(a.cout, block_o) * kk * a.cin_g
        split = _weight_split(a, tiles, block_p, wave)
        partial = grad_out.new_empty(split, a.cout, a.cin_g, kk, dtype=torch.float32)
        grid = (kk * a.cin_g, triton.cdiv(a.cout, block_o), split)
        kernels.weight_grad_direct[flat_grid(grid, "deform_conv2d weight gradient")](
            a.x, a.offset, a.mask, grad_out, partial, *a.sizes(),
            triton.cdiv(triton.cdiv(a.pixels, block_p), split), *a.channel_sizes(), *strides,
            **flags,
            BLOCK_P=block_p, BLOCK_O=block_o)
    grad_weight.copy_(partial.sum(dim=0).view_as(grad_weight))
