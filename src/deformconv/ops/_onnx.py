"""ONNX nodes our ops emit themselves while ``torch.onnx.export(..., dynamo=True)`` traces.

``deform_conv2d`` maps one to one onto the standard ONNX ``DeformConv`` (opset 19), so
while exporting it emits that node through ``torch.onnx.ops.symbolic`` (torch >= 2.8)
instead of calling the custom op: a plain ``torch.onnx.export`` of any model using it
then needs no ``custom_translation_table``, as torchvision's op needs none (its
translation ships in the exporter's own library). The deformable RoI pooling ops have no
ONNX operator; their decompositions live in ``deformconv.onnx``.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFORM_CONV_OPSET = 19  # ONNX DeformConv first appears in opset 19


def exporting() -> bool:
    """Whether the dynamo-based ONNX exporter is tracing us and can take symbolic nodes."""
    return (torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()
            and hasattr(torch.onnx, "ops") and hasattr(torch.onnx.ops, "symbolic"))


def deform_conv(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
                mask: Tensor | None, stride: tuple[int, int], padding: tuple[int, int],
                dilation: tuple[int, int]) -> Tensor:
    """One ONNX ``DeformConv`` node for checked arguments -> (N, Cout, Hout, Wout).

    ONNX ``DeformConv`` uses our layouts: offset (N, 2·G·kh·kw, Hout, Wout) as (Δh, Δw)
    pairs per kernel point (row-major) per offset group, mask (N, G·kh·kw, Hout, Wout).
    """
    cout, cin_per_group, kh, kw = weight.shape
    attributes = {
        "dilations": list(dilation), "group": input.shape[1] // cin_per_group,
        "kernel_shape": [kh, kw], "offset_group": offset.shape[1] // (2 * kh * kw),
        "pads": [padding[0], padding[1], padding[0], padding[1]], "strides": list(stride),
    }
    shape = (input.shape[0], cout, offset.shape[2], offset.shape[3])
    return torch.onnx.ops.symbolic(
        "DeformConv", (input, weight, offset, bias, mask), attributes, dtype=input.dtype,
        shape=shape, version=DEFORM_CONV_OPSET)
