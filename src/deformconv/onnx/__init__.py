"""ONNX export of deformconv ops and models (needs the ``deformconv[onnx]`` extra).

``deform_conv2d`` becomes the standard ONNX ``DeformConv`` (opset 19); the deformable RoI
pooling ops become decompositions into standard ONNX ops (Gather + arithmetic). The files
run in onnxruntime's default CPU build; no custom operator library is needed. A plain
``torch.onnx.export(model, args, dynamo=True)`` handles ``deform_conv2d`` by itself (the op
emits ``DeformConv`` while exporting); the RoI pooling ops need :func:`export` or
``custom_translation_table=translation_table()``.

Example::

    >>> from deformconv import onnx as dc_onnx
    >>> dc_onnx.export(model.eval(), (x,), "model.onnx")          # dynamic batch size
    >>> dc_onnx.check(model, (x,), "model.onnx")                  # max |onnxruntime - torch|
    >>> dc_onnx.export_registered("faster_rcnn_resnet50", "frcnn.onnx")  # what the CLI runs
"""

from .export import MIN_OPSET, ExportResult, check, export, export_model, translation_table
from .models import export_detector, export_registered

__all__ = [
    "MIN_OPSET",
    "ExportResult",
    "check",
    "export",
    "export_detector",
    "export_model",
    "export_registered",
    "translation_table",
]
