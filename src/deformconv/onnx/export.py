"""One-call ONNX export of models that use deformconv ops, and a check in onnxruntime.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) sees our ops as
``torch.ops.deformconv.*`` custom ops; :func:`translation_table` maps each one to ONNX:
``deform_conv2d`` to the standard ``DeformConv`` (opset 19), the RoI pooling ops to
decompositions into standard ONNX ops. ``deform_conv2d`` also emits ``DeformConv`` itself
while the exporter traces (``ops/_onnx.py``), so its entry matters for programs captured
outside an ONNX export (``torch.export.export``, then ``torch.onnx.export`` of the program).
Such a program runs the ops itself, so a module's NaN-offset masking is in it in full (seven
more nodes per offset layer, IsNaN to Where) and its ONNX graph keeps them; exported here
(or by ``torch.onnx.export`` of the module) the masking takes three (Mul, ReduceSum, Add).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .._extras import MissingExtraError, install_hint, require
from ..nn import eval_mode

MIN_OPSET = 19  # ONNX DeformConv first appears in opset 19
# torch's exporter builds opset 18 graphs and converts them to the requested opset; above 25
# its converter has no DeformConv adapter and leaves an opset-18 graph that is not valid ONNX.
MAX_OPSET = 25
SUPPORTED_DTYPES = (torch.float16, torch.float32, torch.float64)


def require_onnx() -> None:
    """Raise :class:`~deformconv._extras.MissingExtraError` (an ImportError) naming every
    missing ONNX dependency and the extra, when any is missing."""
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            require(module, "ONNX export")
        except MissingExtraError as error:
            missing.append(error.name or module)
    if missing:
        raise MissingExtraError(f"ONNX export {install_hint(*missing)}", name=missing[0])


def translation_table() -> dict[Callable, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``."""
    require_onnx()
    from . import deform_conv, roi_pool

    table = {torch.ops.deformconv.deform_conv2d.default: deform_conv.deform_conv2d}
    for name, translation in (("deform_roi_pool", roi_pool.deform_roi_pool_op),
                              ("deform_psroi_pool", roi_pool.deform_psroi_pool_op)):
        if hasattr(torch.ops.deformconv, name):  # registered when deformconv.ops has them
            table[getattr(torch.ops.deformconv, name).default] = translation
    return table


def tensor_leaves(tree: Any) -> list[Tensor]:
    return [leaf for leaf in pytree.tree_leaves(tree) if isinstance(leaf, Tensor)]


def check_tensors(model: nn.Module, args: tuple) -> None:
    """Every floating tensor must have a dtype ONNX DeformConv and onnxruntime's CPU accept,
    and all tensors must be on one CPU or CUDA device (a meta model failed deep in torch's
    exporter)."""
    named = [(f"argument {i}", t) for i, t in enumerate(tensor_leaves(args))]
    named += [(f"parameter {n!r}", t) for n, t in model.named_parameters()]
    named += [(f"buffer {n!r}", t) for n, t in model.named_buffers()]
    for name, tensor in named:
        if tensor.device.type not in ("cpu", "cuda"):
            raise ValueError(
                f"{name} is on device {tensor.device}, but export needs tensors with values "
                "on the CPU or a CUDA device; move the model and inputs (e.g. model.cpu()) first"
            )
        if tensor.is_floating_point() and tensor.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"{name} has dtype {tensor.dtype}, but ONNX DeformConv accepts only float16, "
                "float32 and float64; cast the model and inputs (e.g. model.float()) first"
            )
    for name, tensor in named[1:]:
        if tensor.device != named[0][1].device:
            raise ValueError(
                f"{named[0][0]} is on device {named[0][1].device} but {name} on "
                f"{tensor.device}; put the model and inputs on one device"
            )


def dynamic_dims(args: tuple, batch: bool, spatial: bool) -> tuple:
    """``dynamic_shapes`` for ``args``: with ``batch`` dim 0 of every tensor (batch size, or RoI
    count for rois) is dynamic; with ``spatial`` the last two dims of every 4-D tensor (H, W)
    are dynamic unless the model fixes them (RoI offsets (K, 2, ph, pw), say)."""
    dynamic, auto = torch.export.Dim.DYNAMIC, torch.export.Dim.AUTO

    def spec(leaf: Any) -> dict[int, Any] | None:
        if not isinstance(leaf, Tensor) or not leaf.dim():
            return None
        axes = {0: dynamic} if batch else {}
        if spatial and leaf.dim() == 4:
            axes.update({2: auto, 3: auto})
        return axes or None

    if batch:
        for i, tensor in enumerate(tensor_leaves(args)):
            if tensor.dim() and tensor.shape[0] < 2:
                raise ValueError(
                    f"dynamic_batch needs example inputs with a leading size >= 2, got argument "
                    f"{i} of shape {tuple(tensor.shape)}: torch.export specialises sizes 0 and 1"
                )
    return pytree.tree_map(spec, args)


def export(
    model: nn.Module,
    args: tuple | Tensor,
    path: str | os.PathLike,
    *,
    opset: int = MIN_OPSET,
    dynamic_batch: bool = True,
    dynamic_size: bool = False,
    dynamic_shapes: Any = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    external_data: bool = False,
) -> torch.onnx.ONNXProgram:
    """Export ``model(*args)`` to an ONNX file at ``path`` with our ops translated.

    Args:
        model: any module. ONNX graphs are for inference: it is exported in eval mode
            whatever its mode (BatchNorm with its running statistics, no dropout), and its
            mode is left as it was.
        args: example positional inputs (a tensor or a tuple).
        path: the ``.onnx`` file to write; its folder is created if missing (checked before
            the model is traced). A file already there is replaced only by a valid graph.
        opset: ONNX opset, 19 (``DeformConv``) to 25 (``MAX_OPSET``).
        dynamic_batch: make dim 0 of every tensor argument dynamic (examples need dim 0 >= 2).
        dynamic_size: also make H and W of every 4-D tensor argument dynamic where the model
            allows it (:func:`export_model` checks that the image size really is).
        dynamic_shapes: passed to ``torch.onnx.export`` instead, when given.
        input_names, output_names: names of the graph's inputs and outputs (default: the
            forward's argument names and names made up by the exporter).
        external_data: store weights in a ``.data`` file beside ``path`` (needed above 2 GB).

    Returns:
        The ``torch.onnx.ONNXProgram`` that was saved.

    Raises:
        InvalidONNXError: ``onnx.checker`` rejects the graph, or its opset is not ``opset``;
            nothing is written at ``path`` then.
    """
    require_onnx()
    args = args if isinstance(args, tuple) else (args,)
    if (isinstance(opset, bool) or not isinstance(opset, int)
            or not MIN_OPSET <= opset <= MAX_OPSET):
        raise ValueError(
            f"opset must be an int in [{MIN_OPSET}, {MAX_OPSET}] (ONNX DeformConv was added in "
            f"opset {MIN_OPSET}; torch's exporter cannot convert it past opset {MAX_OPSET}), "
            f"got {opset!r}"
        )
    check_tensors(model, args)
    output_path(path)
    if dynamic_shapes is None and (dynamic_batch or dynamic_size):
        dynamic_shapes = dynamic_dims(args, batch=dynamic_batch, spatial=dynamic_size)
    with eval_mode(model):
        program = torch.onnx.export(
            model, args, None, dynamo=True, opset_version=opset,
            dynamic_shapes=dynamic_shapes, custom_translation_table=translation_table(),
            input_names=input_names, output_names=output_names, verbose=False,
        )
    save_checked(program, path, opset=opset, external_data=external_data)
    return program


def output_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path, its folder created as the CLI's other outputs are; a folder at
    ``path``, or a file where a folder above it should be, is refused."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"path: {os.fspath(path)} is a folder, expected the name of "
                                "the .onnx file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(
            f"path: cannot create the folder {os.fspath(path.parent)} for "
            f"{os.fspath(path)}: a file is in the way"
        ) from None
    return path


class InvalidONNXError(RuntimeError):
    """The exported graph failed ``onnx.checker`` or has another opset than requested."""


def save_checked(
    program: torch.onnx.ONNXProgram, path: str | os.PathLike, *, opset: int,
    external_data: bool,
) -> None:
    """Save ``program`` at ``path`` only if ``onnx.checker`` (full check, with shape
    inference) accepts the file and its opset is ``opset``; a file already at ``path`` stays
    as it was otherwise.

    The folder of ``path`` is created if missing. The graph is written to a temporary folder
    beside ``path`` under the same name (the ``.data`` file of external weights is named
    after it), checked there, then moved. Without ``external_data``, a ``.data`` file an
    earlier export left beside ``path`` is removed: the new graph holds its weights and
    nothing else would remove it.

    Raises:
        InvalidONNXError: the checker rejects the graph, or its opset is not ``opset``.
    """
    import onnx

    path = output_path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as folder:
        staged = Path(folder) / path.name
        program.save(os.fspath(staged), external_data=external_data)
        try:
            onnx.checker.check_model(os.fspath(staged), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
            raise InvalidONNXError(
                f"the exported graph is not valid ONNX, so {os.fspath(path)} was not written: "
                f"{error}"
            ) from error
        imports = onnx.load(os.fspath(staged), load_external_data=False).opset_import
        written = next((o.version for o in imports if o.domain in ("", "ai.onnx")), None)
        if written != opset:
            raise InvalidONNXError(
                f"the exported graph has opset {written}, not the requested opset {opset}, so "
                f"{os.fspath(path)} was not written"
            )
        for staged_file in sorted(Path(folder).iterdir(), reverse=True):  # .data before graph
            os.replace(staged_file, path.with_name(staged_file.name))
    if not external_data:
        path.with_name(path.name + ".data").unlink(missing_ok=True)


def check(model: nn.Module, args: tuple | Tensor, path: str | os.PathLike) -> float:
    """Run the ONNX file at ``path`` in onnxruntime (CPU) on ``args``; compare with ``model``.

    ``model`` runs in eval mode, as :func:`export` exports it, without gradients; its mode
    and state (BatchNorm statistics included) are left as they were.

    Returns:
        The largest absolute difference over all outputs (NaN if either side has a NaN).
    """
    require_onnx()
    import numpy as np
    import onnxruntime as ort

    args = args if isinstance(args, tuple) else (args,)
    inputs = tensor_leaves(args)
    check_tensors(nn.Module(), tuple(inputs))
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(
            f"{os.fspath(path)} takes {len(names)} inputs {names}, got {len(inputs)} tensors"
        )
    feed = {name: t.detach().cpu().numpy() for name, t in zip(names, inputs, strict=True)}
    got = session.run(None, feed)
    with eval_mode(model), torch.no_grad():
        expected = tensor_leaves(model(*args))
    if len(got) != len(expected):
        raise ValueError(f"onnxruntime gave {len(got)} outputs, PyTorch {len(expected)}")
    diffs = [0.0]
    for i, (ort_out, torch_out) in enumerate(zip(got, expected, strict=True)):
        torch_out = torch_out.detach().cpu().double().numpy()
        if ort_out.shape != torch_out.shape:
            raise ValueError(
                f"output {i} has shape {ort_out.shape} in onnxruntime but "
                f"{torch_out.shape} in PyTorch"
            )
        if ort_out.size:
            diffs.append(float(np.abs(ort_out.astype(np.float64) - torch_out).max()))
    return worst(diffs)


def worst(diffs: Iterable[float]) -> float:
    """The largest of ``diffs``; NaN if any is NaN (``max`` keeps a NaN only when it comes
    first)."""
    diffs = list(diffs)
    return math.nan if any(math.isnan(d) for d in diffs) else max(diffs)


@dataclass(frozen=True)
class ExportResult:
    """Where a graph went, and how far onnxruntime is from PyTorch on the checked inputs."""

    path: str
    max_abs_diff: float | None  # None when not checked
    checked_shapes: tuple[tuple[int, ...], ...]  # shape of the first input of each check

    def summary(self) -> str:
        """One line for a command's output."""
        if self.max_abs_diff is None:
            return f"{self.path}: written (not checked)"
        shapes = ", ".join(str(shape) for shape in self.checked_shapes)
        return (f"{self.path}: max |onnxruntime - PyTorch| = {self.max_abs_diff:.2e} "
                f"on inputs of shape {shapes}")


def grow(example: Tensor, batch: bool, spatial: bool) -> Tensor:
    """Another input for a check: one more image with ``batch``, 3 more rows and 5 more
    columns with ``spatial``, so dims that were meant to be dynamic are seen to be."""
    if batch:
        example = torch.cat([example, example[:1].flip(-1)])
    if spatial:
        example = nn.functional.pad(example, (0, 5, 0, 3), mode="replicate")
    return example


def export_model(
    model: nn.Module,
    example_input: Tensor,
    path: str | os.PathLike,
    *,
    opset: int = MIN_OPSET,
    dynamic_batch: bool = True,
    dynamic_size: bool = False,
    verify: bool = True,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
) -> ExportResult:
    """Export an image model (input ``(N, C, H, W)``) in eval mode, then check it in onnxruntime.

    The check runs on ``example_input`` and, when a dim is dynamic, on an input grown along
    it (batch N + 1; H + 3, W + 5 with ``dynamic_size``). The model's mode is left as it was.
    """
    export(model, (example_input,), path, opset=opset, dynamic_batch=dynamic_batch,
           dynamic_size=dynamic_size, input_names=input_names, output_names=output_names)
    if not verify:
        return ExportResult(os.fspath(path), None, ())
    inputs = [example_input]
    if dynamic_batch or dynamic_size:
        inputs.append(grow(example_input, dynamic_batch, dynamic_size))
    diff = worst(check(model, (x,), path) for x in inputs)
    return ExportResult(os.fspath(path), diff, tuple(tuple(x.shape) for x in inputs))
