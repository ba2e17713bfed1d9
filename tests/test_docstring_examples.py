"""The public API's docstring examples run and show what they say (``doctest``)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

# module -> the optional packages its examples need
MODULES = {
    "deformconv.ops.deform_conv": (),
    "deformconv.ops.deform_roi_pool": (),
    "deformconv.ops.deform_psroi_pool": (),
    "deformconv.nn.deform_conv": (),
    "deformconv.nn.convert": ("torchvision",),
    "deformconv.nn.param_groups": (),
    "deformconv.models._registry": ("torchvision",),
    "deformconv.data.synthetic": (),
    "deformconv.data.cached": (),
    "deformconv.runs": ("torchvision",),
    "deformconv.viz.capture": (),
    "deformconv.onnx": ("onnxruntime", "onnxscript"),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_docstring_examples_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture) -> None:
    for package in MODULES[name]:
        pytest.importorskip(package)
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, capsys.readouterr().out  # doctest's report of what differed
