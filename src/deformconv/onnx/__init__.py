"""ONNX export of deformconv ops and models (needs the ``deformconv[onnx]`` extra).

``deform_conv2d`` becomes the standard ONNX ``DeformConv`` (opset 19); the deformable RoI
pooling ops become decompositions into standard ONNX ops (Gather + arithmetic). The files
run in onnxruntime's default CPU build; no custom operator library is needed. A plain
``torch.onnx.export(model, args, dynamo=True)`` handles ``deform_conv2d`` by itself (the op
emits ``DeformConv`` while exporting); the RoI pooling ops need :func:`export` or
``custom_translation_table=translation_table()``. RoIs are not checked in the graph as the
ops check them (a graph cannot raise): rows whose batch index is not an integer in [0, N),
with a non-finite coordinate or with an adaptive sampling grid beyond the ops' 2²⁶ samples
per bin come out NaN, and NaN offsets (a module's NaN or inf ones) give NaN where the modules
give it.

Example (``export_registered("faster_rcnn_resnet50", "frcnn.onnx")`` is what
``deformconv export`` runs)::

    >>> import torch
    >>> from deformconv import onnx as dc_onnx
    >>> from deformconv.nn import DeformConv2d
    >>> model, x = DeformConv2d(8, 8, 3, padding=1).eval(), torch.randn(2, 8, 16, 16)
    >>> program = dc_onnx.export(model, (x,), "model.onnx")      # dynamic batch size
    >>> dc_onnx.check(model, (x,), "model.onnx") < 1e-4          # max |onnxruntime - torch|
    True
"""

from .export import (
    MAX_OPSET,
    MIN_OPSET,
    ExportResult,
    InvalidONNXError,
    check,
    export,
    export_model,
    translation_table,
)
from .models import export_detector, export_registered

__all__ = [
    "MAX_OPSET",
    "MIN_OPSET",
    "ExportResult",
    "InvalidONNXError",
    "check",
    "export",
    "export_detector",
    "export_model",
    "export_registered",
    "translation_table",
]
