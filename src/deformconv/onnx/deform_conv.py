"""ONNX translation of ``torch.ops.deformconv.deform_conv2d`` to the standard ``DeformConv``.

ONNX ``DeformConv`` (opset 19) uses the layouts of torchvision and of this package: offset
(N, 2·G·kh·kw, Hout, Wout) holds one (Δh, Δw) pair per kernel point (row-major) per offset
group, mask (N, G·kh·kw, Hout, Wout); samples outside the input read zero.
"""

from __future__ import annotations

from typing import TypeVar

from onnxscript import DOUBLE, FLOAT, FLOAT16, ir
from onnxscript import opset19 as op

# Element types ONNX DeformConv-19 accepts (its type constraint T).
SUPPORTED_TYPES = (ir.DataType.FLOAT16, ir.DataType.FLOAT, ir.DataType.DOUBLE)
TFloat = TypeVar("TFloat", FLOAT16, FLOAT, DOUBLE)  # lets the exporter infer the signature


def static_dim(value: ir.Value, axis: int, name: str) -> int:
    """``value.shape[axis]`` as an int; ONNX attributes cannot hold symbolic sizes."""
    if value.shape is None or not isinstance(value.shape[axis], int):
        shape = None if value.shape is None else tuple(value.shape)
        raise ValueError(
            f"{name}.shape[{axis}] must be static for ONNX export, got shape {shape}; "
            "only the batch size (and the RoI count) may be dynamic"
        )
    return value.shape[axis]


def check_type(value: ir.Value, name: str, op_name: str) -> None:
    """Raise unless ``value`` has an element type ONNX ``op_name`` accepts."""
    if value.dtype not in SUPPORTED_TYPES:
        raise TypeError(
            f"{name} has element type {value.dtype}, but ONNX {op_name} accepts only "
            "float16, float32 and float64; cast the model (e.g. model.float()) before export"
        )


def deform_conv2d(
    input: TFloat, offset: TFloat, weight: TFloat, bias: TFloat | None, mask: TFloat | None,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int,
) -> TFloat:
    """One ``DeformConv`` node; groups and offset groups are recovered from the shapes."""
    check_type(input, "input", "DeformConv")
    kh, kw = static_dim(weight, 2, "weight"), static_dim(weight, 3, "weight")
    groups = static_dim(input, 1, "input") // static_dim(weight, 1, "weight")
    offset_groups = static_dim(offset, 1, "offset") // (2 * kh * kw)
    return op.DeformConv(
        input, weight, offset, bias, mask,
        dilations=[dil_h, dil_w], group=groups, kernel_shape=[kh, kw],
        offset_group=offset_groups, pads=[pad_h, pad_w, pad_h, pad_w],
        strides=[stride_h, stride_w],
    )
