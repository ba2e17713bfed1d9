"""deform_conv2d: deformable convolution (DCN v1, and v2 with a modulation mask).

Dai et al., "Deformable Convolutional Networks", ICCV 2017 (https://arxiv.org/abs/1703.06211);
Zhu et al., "Deformable ConvNets v2", CVPR 2019 (https://arxiv.org/abs/1811.11168).
Semantics, layouts and results match ``torchvision.ops.deform_conv2d`` (docs/OPS.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _dispatch, _onnx
from ._checks import (
    check_no_nan,
    check_same_dtype_device,
    check_tensor,
    float32_under_autocast,
)
from ._library import OpParts, define_op
from .arguments import conv_memory_format, memory_format, pair

__all__ = ["deform_conv2d"]

_GEOMETRY = "int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w"


def _geometry(ints: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """``(stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)`` -> (stride, padding, dilation)."""
    return (ints[0], ints[1]), (ints[2], ints[3]), (ints[4], ints[5])


def _check_forward(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
                   mask: Tensor | None, *ints: int) -> None:
    _check_arguments(input, offset, weight, bias, mask, *_geometry(ints))
    check_no_nan("offset", offset)


def _nothing_sampled(input: Tensor, weight: Tensor) -> bool:
    """Whether the result is its bias alone: every sample reads zero padding (an empty
    image), or there is no output channel."""
    return input.shape[2] == 0 or input.shape[3] == 0 or weight.shape[0] == 0


def _forward(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
             mask: Tensor | None, *ints: int) -> Tensor:
    if _nothing_sampled(input, weight):
        out = _forward_fake(input, offset, weight).zero_()
        return out if bias is None else out.add_(bias.view(1, -1, 1, 1))
    out = _dispatch.run("deform_conv2d", "forward",
                        (input, offset, weight, bias, mask, _geometry(ints)))
    return out.contiguous(memory_format=conv_memory_format(input, weight))


def _forward_fake(input: Tensor, offset: Tensor, weight: Tensor, *args) -> Tensor:
    """The result: (N, Cout, Hout, Wout), channels-last for a channels-last input or
    weight."""
    return torch.empty((input.shape[0], weight.shape[0], offset.shape[2], offset.shape[3]),
                       dtype=input.dtype, device=input.device,
                       memory_format=conv_memory_format(input, weight))


def _check_backward(grad_out: Tensor, input: Tensor, offset: Tensor, weight: Tensor,
                    mask: Tensor | None, *ints_and_needs: int) -> None:
    _check_forward(input, offset, weight, None, mask, *ints_and_needs[:6])
    check_tensor("grad_out", grad_out, 4)
    expected = (input.shape[0], weight.shape[0], *offset.shape[2:])
    if tuple(grad_out.shape) != expected:
        raise ValueError(f"grad_out.shape is not valid: got {tuple(grad_out.shape)}, "
                         f"expected {expected}")
    check_same_dtype_device("input", input, grad_out=grad_out)


def _backward(grad_out: Tensor, input: Tensor, offset: Tensor, weight: Tensor,
              mask: Tensor | None, *ints_and_needs: int):
    ints, needs = ints_and_needs[:6], ints_and_needs[6:]
    if _nothing_sampled(input, weight):  # the output depended on nothing
        grad_mask = torch.zeros_like(mask) if mask is not None else offset.new_empty(0)
        return (torch.zeros_like(input), torch.zeros_like(offset), torch.zeros_like(weight),
                grad_mask)
    return _dispatch.run("deform_conv2d", "backward",
                         (grad_out, input, offset, weight, mask, _geometry(ints), *needs))


def _backward_fake(grad_out: Tensor, input: Tensor, offset: Tensor, weight: Tensor,
                   mask: Tensor | None, *args) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    grad_mask = torch.empty_like(mask) if mask is not None else offset.new_empty(0)
    return (torch.empty_like(input), torch.empty_like(offset), torch.empty_like(weight),
            grad_mask)


def _setup_context(ctx, inputs, output) -> None:
    input, offset, weight, bias, mask, *geometry = inputs
    ctx.save_for_backward(input, offset, weight, mask)
    ctx.geometry = geometry
    ctx.has_bias = bias is not None


def _gradient(backward_op, ctx, grad_out: Tensor):
    input, offset, weight, mask = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad_input, grad_offset, grad_weight, grad_mask = backward_op(
        grad_out.contiguous(memory_format=memory_format(input)), input, offset, weight, mask,
        *ctx.geometry,
        needs[0], needs[1] or needs[4], needs[2],
    )
    grad_bias = grad_out.sum((0, 2, 3)) if ctx.has_bias else None
    return (grad_input, grad_offset, grad_weight, grad_bias,
            grad_mask if mask is not None else None, *([None] * 6))


_deform_conv2d, _deform_conv2d_backward = define_op(
    "deform_conv2d",
    OpParts(f"(Tensor input, Tensor offset, Tensor weight, Tensor? bias, Tensor? mask, "
            f"{_GEOMETRY}) -> Tensor", _check_forward, _forward_fake, _forward),
    OpParts(f"(Tensor grad_out, Tensor input, Tensor offset, Tensor weight, Tensor? mask, "
            f"{_GEOMETRY}, bool need_input, bool need_offset_mask, bool need_weight) "
            "-> (Tensor, Tensor, Tensor, Tensor)", _check_backward, _backward_fake, _backward),
    _setup_context, _gradient,
)


def _output_size(size: int, kernel: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (kernel - 1) - 1) // stride + 1


def output_size(input_size: tuple[int, int], kernel_size: tuple[int, int],
                stride: tuple[int, int], padding: tuple[int, int],
                dilation: tuple[int, int]) -> tuple[int, int]:
    """``(Hout, Wout)`` of a conv over an ``input_size`` (H, W) image; a ``ValueError``
    naming the sizes when the padded image is smaller than the dilated kernel."""
    height, width = input_size
    hout = _output_size(height, kernel_size[0], stride[0], padding[0], dilation[0])
    wout = _output_size(width, kernel_size[1], stride[1], padding[1], dilation[1])
    if hout < 1 or wout < 1:
        raise ValueError(
            f"input of spatial size {(height, width)} is too small for kernel "
            f"{tuple(kernel_size)} with padding {padding} and dilation {dilation}: output "
            f"size would be {(hout, wout)}"
        )
    return hout, wout


def _check_arguments(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
                     mask: Tensor | None, stride: tuple[int, int], padding: tuple[int, int],
                     dilation: tuple[int, int]) -> None:
    check_tensor("input", input, 4)
    check_tensor("offset", offset, 4)
    check_tensor("weight", weight, 4)
    if bias is not None:
        check_tensor("bias", bias, 1)
    if mask is not None:
        check_tensor("mask", mask, 4)
    check_same_dtype_device("input", input, offset=offset, weight=weight, bias=bias, mask=mask)
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(
            f"stride and dilation must be >= 1 and padding >= 0, got stride={stride}, "
            f"padding={padding}, dilation={dilation}"
        )
    n, cin, height, width = input.shape
    cout, cin_per_group, kh, kw = weight.shape
    if kh == 0 or kw == 0:
        raise ValueError(f"weight must have a kernel of at least 1 x 1 (weight.shape[2:]), "
                         f"got weight.shape {tuple(weight.shape)}")
    if cin_per_group == 0 or cin % cin_per_group:
        raise ValueError(
            f"input.shape[1] ({cin}) must be a multiple of weight.shape[1] ({cin_per_group}): "
            "the conv groups are input.shape[1] // weight.shape[1]"
        )
    groups = cin // cin_per_group
    if cout % groups:
        raise ValueError(
            f"weight.shape[0] ({cout}) must be divisible by groups = {groups} "
            f"(input.shape[1] {cin} // weight.shape[1] {cin_per_group})"
        )
    if bias is not None and bias.shape[0] != cout:
        raise ValueError(f"bias.shape is not valid: got {tuple(bias.shape)}, expected ({cout},)")
    hout, wout = output_size((height, width), (kh, kw), stride, padding, dilation)
    kk = kh * kw
    if offset.shape[1] == 0 or offset.shape[1] % (2 * kk):
        raise ValueError(
            f"offset.shape[1] is not valid: got {offset.shape[1]}, expected a positive multiple "
            f"of 2*kh*kw = {2 * kk}"
        )
    offset_groups = offset.shape[1] // (2 * kk)
    if cin % offset_groups:
        raise ValueError(
            f"input.shape[1] ({cin}) must be divisible by the offset groups "
            f"(offset.shape[1] // (2*kh*kw) = {offset_groups})"
        )
    expected = (n, 2 * offset_groups * kk, hout, wout)
    if tuple(offset.shape) != expected:
        raise ValueError(
            f"offset.shape is not valid: got {tuple(offset.shape)}, expected {expected}"
        )
    if mask is not None:
        expected = (n, offset_groups * kk, hout, wout)
        if tuple(mask.shape) != expected:
            raise ValueError(
                f"mask.shape is not valid: got {tuple(mask.shape)}, expected {expected}"
            )


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable convolution; a drop-in for ``torchvision.ops.deform_conv2d``.

    Args:
        input (Tensor[N, Cin, H, W]): input features.
        offset (Tensor[N, 2*G*kh*kw, Hout, Wout]): per-sample (Δh, Δw) pairs, G offset groups;
            channel ``2*(g*kh*kw + k)`` is Δh and the next one Δw of kernel point ``k``.
        weight (Tensor[Cout, Cin/groups, kh, kw]): conv weight; groups = Cin // weight.shape[1].
        bias (Tensor[Cout] or None): added to every output position.
        stride, padding, dilation (int or (int, int)): as in ``torch.nn.functional.conv2d``.
        mask (Tensor[N, G*kh*kw, Hout, Wout] or None): DCN v2 modulation of each sample.

    Returns:
        Tensor[N, Cout, Hout, Wout] in the inputs' dtype, stored channels-last when the
        input or the weight is, as ``torch.nn.functional.conv2d`` returns it (the CPU
        kernels read a channels-last input in place and write the result without a
        transpose). float16/bfloat16
        accumulate in float32 (the CPU kernels compute them in float32 throughout); under
        autocast all inputs are cast to float32 and the result is float32 (float64 stays
        float64, as autocast leaves it).

    Example::

        >>> x = torch.randn(1, 8, 16, 16)
        >>> weight = torch.randn(4, 8, 3, 3)
        >>> offset = torch.zeros(1, 2 * 3 * 3, 14, 14)
        >>> deform_conv2d(x, offset, weight).shape
        torch.Size([1, 4, 14, 14])
    """
    stride_, padding_, dilation_ = (
        pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    )
    if isinstance(input, Tensor):
        input, offset, weight, bias, mask = float32_under_autocast(
            input.device.type, input, offset, weight, bias, mask)
    _check_arguments(input, offset, weight, bias, mask, stride_, padding_, dilation_)
    if _onnx.exporting():  # the standard ONNX DeformConv node instead of our custom op
        return _onnx.deform_conv(input, offset, weight, bias, mask, stride_, padding_, dilation_)
    # the kernels read NCHW or channels-last images; a channels-last weight makes the
    # result and the input gradient channels-last, as in conv2d
    input = input.contiguous(memory_format=conv_memory_format(input, weight))
    return _deform_conv2d(input, offset.contiguous(), weight.contiguous(),
                          None if bias is None else bias.contiguous(),
                          None if mask is None else mask.contiguous(),
                          *stride_, *padding_, *dilation_)
