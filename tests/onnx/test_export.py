"""deformconv.onnx helpers: whole-model export, checks in onnxruntime, and bad use."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn

from deformconv import onnx as dc_onnx
from deformconv.onnx.export import save_checked, worst
from deformconv.ops import deform_conv2d

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")


class DeformStage(nn.Module):
    """3x3 modulated deformable conv with its offset/mask branch (like DCN v2's)."""

    def __init__(self, channels: int, offset_groups: int = 2):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, channels, 3, 3) * 0.1)
        self.offset_mask = nn.Conv2d(channels, 3 * offset_groups * 9, 3, padding=1)
        self.offset_groups = offset_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.offset_mask(x)
        offset, mask = out.split([2 * self.offset_groups * 9, self.offset_groups * 9], dim=1)
        return deform_conv2d(x, offset, self.weight, padding=1, mask=torch.sigmoid(mask))


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        DeformStage(8), nn.ReLU(), DeformStage(8, offset_groups=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


@pytest.fixture(scope="module")
def exported_net(tmp_path_factory):
    net = small_net()
    path = tmp_path_factory.mktemp("onnx") / "net.onnx"
    return net, path, dc_onnx.export_model(net, torch.randn(2, 3, 16, 16), path)


def test_export_model_matches_at_two_batch_sizes(exported_net):
    net, path, result = exported_net
    assert net.training  # exported for inference (eval mode), the caller's mode kept
    assert result.path == str(path) and path.is_file()
    assert result.checked_shapes == ((2, 3, 16, 16), (3, 3, 16, 16))
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    assert result.summary() == (
        f"{path}: max |onnxruntime - PyTorch| = {result.max_abs_diff:.2e} on inputs of shape "
        "(2, 3, 16, 16), (3, 3, 16, 16)"
    )


def test_dynamic_image_size(tmp_path):
    net = small_net()
    result = dc_onnx.export_model(net, torch.randn(2, 3, 16, 16), tmp_path / "net.onnx",
                                  dynamic_size=True)
    assert result.checked_shapes == ((2, 3, 16, 16), (3, 3, 19, 21))
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    assert dc_onnx.check(net, torch.randn(1, 3, 24, 10), tmp_path / "net.onnx") <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plain_torch_onnx_export_needs_no_translation_table(tmp_path, dtype):
    """Like torchvision's op, ours exports through a plain ``torch.onnx.export``: while the
    exporter traces, deform_conv2d emits the standard DeformConv node itself."""
    import onnxruntime

    import onnx

    net = small_net().eval().to(dtype)
    path = tmp_path / "plain.onnx"
    x = torch.randn(2, 3, 16, 16, dtype=dtype)
    torch.onnx.export(net, (x,), path, dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    graph = onnx.load(str(path)).graph
    assert [n.op_type for n in graph.node].count("DeformConv") == 2
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}  # standard ops only
    if dtype == torch.float64:  # onnxruntime's CPU Conv has no float64 kernel
        return
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (x, torch.randn(3, 3, 16, 16)):
        got = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), net(batch), rtol=1e-4, atol=1e-5)


def test_check_reports_a_real_difference(exported_net):
    """check must compare against the model it is given, not echo the file."""
    net, path, _ = exported_net
    other = small_net().eval()
    with torch.no_grad():
        other[-1].bias.add_(1.0)
    assert dc_onnx.check(other, torch.randn(4, 3, 16, 16), path) == pytest.approx(1.0, abs=1e-4)


def test_check_reports_a_nan_output(exported_net):
    """A NaN output is no match (it used to be reported as a difference of 0)."""
    _, path, _ = exported_net
    broken = small_net().eval()
    with torch.no_grad():
        broken[-1].weight.fill_(math.nan)
    assert math.isnan(dc_onnx.check(broken, torch.randn(4, 3, 16, 16), path))


def test_worst_keeps_a_nan_wherever_it_comes():
    assert worst([0.0, 1e-6]) == 1e-6
    assert math.isnan(worst([0.0, math.nan, 1e-6]))
    assert math.isnan(worst([1e-6, math.nan]))


def test_check_wrong_number_of_inputs(exported_net):
    net, path, _ = exported_net
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"takes 1 inputs \['.*'\], got 2 tensors"):
        dc_onnx.check(net, (x, x), path)


@pytest.mark.parametrize("opset", [18, 26, 19.0])
def test_opset_outside_19_to_25_is_refused(tmp_path, opset):
    """Above 25 torch's converter left an opset-18 DeformConv graph (only logged) that
    onnxruntime cannot load."""
    with pytest.raises(ValueError, match=rf"opset must be an int in \[19, 25\] .* got {opset}"):
        dc_onnx.export(small_net(), torch.randn(2, 3, 16, 16), tmp_path / "x.onnx", opset=opset)
    assert not (tmp_path / "x.onnx").exists()


def test_opset_25_is_written_as_asked(tmp_path):
    import onnx

    net = small_net()
    dc_onnx.export(net, torch.randn(2, 3, 16, 16), tmp_path / "x.onnx", opset=dc_onnx.MAX_OPSET)
    imports = {o.domain: o.version for o in onnx.load(str(tmp_path / "x.onnx")).opset_import}
    assert imports[""] == 25
    assert dc_onnx.check(net, torch.randn(3, 3, 16, 16), tmp_path / "x.onnx") <= 1e-4


def test_a_graph_of_another_opset_is_not_saved(tmp_path):
    path = tmp_path / "linear.onnx"
    program = dc_onnx.export(nn.Linear(3, 2).eval(), torch.randn(2, 3), path, opset=20)
    with pytest.raises(RuntimeError, match=r"has opset 20, not the requested opset 21, so .*"
                                           r"linear.onnx was not written"):
        save_checked(program, tmp_path / "linear.onnx", opset=21, external_data=False)


def test_bfloat16_is_refused(tmp_path):
    net = small_net().eval()
    with pytest.raises(TypeError, match=r"argument 0 has dtype torch.bfloat16.*float32"):
        dc_onnx.export(net, torch.randn(2, 3, 16, 16, dtype=torch.bfloat16), tmp_path / "x.onnx")
    with pytest.raises(TypeError, match=r"parameter '0.weight' has dtype torch.bfloat16"):
        dc_onnx.export(net.bfloat16(), torch.randn(2, 3, 16, 16), tmp_path / "x.onnx")
    with pytest.raises(TypeError, match=r"argument 0 has dtype torch.bfloat16"):
        dc_onnx.check(net, torch.randn(2, 3, 16, 16, dtype=torch.bfloat16), tmp_path / "x.onnx")


def test_meta_tensors_are_refused(tmp_path):
    """A model on the meta device failed in torch's exporter with an unclear PassError."""
    net = small_net().eval()
    with pytest.raises(ValueError, match=r"parameter '0.weight' is on device meta, but export "
                                         r"needs .* CPU or a CUDA device"):
        dc_onnx.export(net.to("meta"), torch.randn(2, 3, 16, 16), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match=r"argument 0 is on device meta"):
        dc_onnx.export(small_net().eval(), torch.randn(2, 3, 16, 16, device="meta"),
                       tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_mixed_devices_are_refused(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    with pytest.raises(ValueError, match=r"argument 0 is on device cuda:0 but parameter "
                                         r"'0.weight' on cpu; put the model and inputs on one"):
        dc_onnx.export(small_net().eval(), torch.randn(2, 3, 16, 16, device="cuda"),
                       tmp_path / "x.onnx")


def test_dynamic_batch_needs_batch_of_two(tmp_path):
    with pytest.raises(ValueError, match=r"leading size >= 2, got argument 0 of shape \(1, 3"):
        dc_onnx.export(small_net().eval(), torch.randn(1, 3, 16, 16), tmp_path / "x.onnx")


def test_float64_deform_conv_matches(tmp_path):
    """ONNX DeformConv and onnxruntime's CPU kernel also run in float64 (its Conv does not)."""
    torch.manual_seed(0)
    weight = torch.randn(4, 2, 3, 3, dtype=torch.float64)

    class DeformOnly(nn.Module):
        def forward(self, x, offset):
            return deform_conv2d(x, offset, weight, stride=2, padding=1)

    x, offset = torch.randn(2, 2, 9, 9, dtype=torch.float64), torch.randn(2, 18, 5, 5) * 3
    dc_onnx.export(DeformOnly().eval(), (x, offset.double()), tmp_path / "f64.onnx")
    assert dc_onnx.check(DeformOnly(), (x, offset.double()), tmp_path / "f64.onnx") <= 1e-10


def test_missing_dependency_gives_install_hint(monkeypatch, tmp_path):
    """require_onnx raised a plain ImportError of its own wording, not the extras' error."""
    from deformconv._extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(MissingExtraError, match=r"^ONNX export needs onnxruntime, part of the "
                                                r"onnx extra: pip install 'deformconv\[onnx\]'$"):
        dc_onnx.export(small_net(), torch.randn(2, 3, 16, 16), tmp_path / "x.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # every missing one is named
    with pytest.raises(MissingExtraError, match=r"^ONNX export needs onnx, onnxruntime, part "):
        dc_onnx.export(small_net(), torch.randn(2, 3, 16, 16), tmp_path / "x.onnx")


def test_a_modules_nan_masking_stays_out_of_the_graph(tmp_path):
    """The NaN masking the modules run under torch.compile (IsNaN, Where, ReduceMax, Cast)
    was exported too: extra work per layer in every runtime. The graph propagates a
    non-finite offset as NaN with a Mul, a ReduceSum and an Add instead."""
    import onnx
    from deformconv.nn import DeformConv2d

    path = tmp_path / "layer.onnx"
    torch.onnx.export(DeformConv2d(4, 4, 3, padding=1).eval(), (torch.randn(1, 4, 8, 8),), path,
                      dynamo=True)
    assert {n.op_type for n in onnx.load(str(path)).graph.node} == {
        "Conv", "DeformConv", "Mul", "ReduceSum", "Add"}


def test_an_invalid_graph_is_not_saved(tmp_path):
    """export() checks the file it writes (onnx.checker, full check): an invalid graph (as
    float16 RoI pooling gave) raised no error and was saved for onnxruntime to refuse."""
    path = tmp_path / "linear.onnx"
    program = dc_onnx.export(nn.Linear(3, 2).eval(), torch.randn(2, 3), path)
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    before = path.read_bytes()
    next(iter(program.model.graph)).op_type = "NoSuchOp"
    with pytest.raises(dc_onnx.InvalidONNXError,
                       match=r"not valid ONNX, so .*linear.onnx was not written"):
        save_checked(program, path, opset=19, external_data=False)
    assert path.read_bytes() == before  # the earlier file is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linear.onnx"]  # nothing left over


def test_external_data_is_saved_beside_the_graph(tmp_path):
    path = tmp_path / "linear.onnx"
    net = nn.Linear(3, 2).eval()
    dc_onnx.export(net, torch.randn(2, 3), path, external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linear.onnx", "linear.onnx.data"]
    assert dc_onnx.check(net, torch.randn(4, 3), path) <= 1e-6


def test_export_without_external_data_removes_an_earlier_data_file(tmp_path):
    """A re-export with the weights inside the graph left the earlier export's .data file."""
    path = tmp_path / "linear.onnx"
    net = nn.Linear(3, 2).eval()
    dc_onnx.export(net, torch.randn(2, 3), path, external_data=True)
    dc_onnx.export(net, torch.randn(2, 3), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linear.onnx"]
    assert dc_onnx.check(net, torch.randn(4, 3), path) <= 1e-6


def test_training_mode_model_is_exported_and_checked_in_eval_mode_and_left_as_it_was(
        exported_net):
    """check() ran a training-mode model as it was: BatchNorm on batch statistics gave a
    large 'error' (0.9 on a detector) and updated the model's running statistics."""
    _, path, _ = exported_net
    net = small_net()  # same weights as the exported one, in training mode
    net[6].eval()  # a submodule kept in its own mode stays so
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert dc_onnx.check(net, torch.randn(4, 3, 16, 16), path) <= 1e-4
    assert net.training and net[1].training and not net[6].training
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_export_leaves_the_mode_as_it_was(tmp_path):
    net = small_net()
    dc_onnx.export(net, torch.randn(2, 3, 16, 16), tmp_path / "x.onnx")
    assert all(module.training for module in net.modules())


def test_missing_folders_are_created_and_a_file_in_the_way_is_named(tmp_path):
    path = tmp_path / "missing" / "dir" / "net.onnx"
    net = nn.Linear(3, 2).eval()
    dc_onnx.export(net, torch.randn(2, 3), path)
    assert dc_onnx.check(net, torch.randn(3, 3), path) <= 1e-5
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"path: cannot create the folder .*file.* "
                                                 r"a file is in the way"):
        dc_onnx.export(net, torch.randn(2, 3), tmp_path / "file" / "net.onnx")
    with pytest.raises(IsADirectoryError, match=r"path: .*missing is a folder"):
        dc_onnx.export(net, torch.randn(2, 3), tmp_path / "missing")
    assert (tmp_path / "file").read_text() == "not a folder"
