"""ONNX export of deformconv ops and models (needs the ``deformconv[onnx]`` extra).

``deform_conv2d`` becomes the standard ONNX ``DeformConv`` (opset 19); the deformable RoI
pooling ops become decompositions into standard ONNX ops. Run the result in onnxruntime.

Example::

    >>> from deformconv import onnx as dc_onnx
    >>> dc_onnx.export(model.eval(), (x,), "model.onnx")          # dynamic batch size
    >>> dc_onnx.check(model, (x,), "model.onnx")                  # max |onnxruntime - torch|
"""

from .export import MIN_OPSET, ExportResult, check, export, export_model, translation_table

__all__ = ["MIN_OPSET", "ExportResult", "check", "export", "export_model", "translation_table"]
