"""deform_conv2d exported to the standard ONNX DeformConv and run in onnxruntime."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deformconv import onnx as dc_onnx
from deformconv.ops import deform_conv2d

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

TOL = 1e-4


class Block(nn.Module):
    """Deformable conv whose offsets (and mask) come from a plain conv of the input."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], *, stride=1, padding=0,
                 dilation=1, groups=1, offset_groups=1, modulated=False, bias=True):
        super().__init__()
        kh, kw = kernel
        self.geometry = {"stride": stride, "padding": padding, "dilation": dilation}
        self.weight = nn.Parameter(torch.randn(cout, cin // groups, kh, kw) * 0.3)
        self.bias = nn.Parameter(torch.randn(cout)) if bias else None
        points = offset_groups * kh * kw
        self.offset = nn.Conv2d(cin, 2 * points, kernel, **self.geometry)
        self.mask = nn.Conv2d(cin, points, kernel, **self.geometry) if modulated else None
        with torch.no_grad():  # large offsets: many samples land between pixels or outside
            self.offset.weight.mul_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = None if self.mask is None else torch.sigmoid(self.mask(x))
        return deform_conv2d(x, self.offset(x), self.weight, self.bias, mask=mask,
                             **self.geometry)


CONFIGS = {
    "plain": dict(cin=4, cout=6, kernel=(3, 3), padding=1, bias=False),
    "mask_groups2_offset_groups2_kernel3x2": dict(
        cin=4, cout=6, kernel=(3, 2), padding=(1, 0), groups=2, offset_groups=2,
        modulated=True),
    "stride2_dilation2_mask": dict(
        cin=4, cout=4, kernel=(3, 3), stride=2, padding=2, dilation=2, modulated=True),
    "kernel2x3_stride21_dilation12_offset_groups4": dict(
        cin=4, cout=2, kernel=(2, 3), stride=(2, 1), padding=(0, 1), dilation=(1, 2),
        offset_groups=4),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def exported(request, tmp_path_factory):
    """(block, path): one export per configuration, shared by the tests below."""
    torch.manual_seed(0)
    block = Block(**CONFIGS[request.param]).eval()
    path = tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx"
    dc_onnx.export(block, (torch.randn(2, 4, 9, 8),), path, dynamic_size=True)
    return block, path


def test_graph_is_one_standard_deform_conv(exported):
    block, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    nodes = [n for n in model.graph.node if n.op_type == "DeformConv"]
    assert len(nodes) == 1 and nodes[0].domain == ""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    kh, kw = block.weight.shape[2:]
    assert attrs["kernel_shape"] == [kh, kw]
    assert attrs["group"] == 4 // block.weight.shape[1]
    assert attrs["offset_group"] == block.offset.out_channels // (2 * kh * kw)
    assert len(nodes[0].input) == (5 if block.mask is not None else 3 + (block.bias is not None))


@pytest.mark.parametrize(("batch", "height", "width"), [(2, 9, 8), (3, 9, 8), (3, 11, 14)])
def test_matches_pytorch_with_dynamic_batch_and_size(exported, batch, height, width):
    block, path = exported
    torch.manual_seed(batch)
    assert dc_onnx.check(block, (torch.randn(batch, 4, height, width),), path) <= TOL


class ExplicitOffsets(nn.Module):
    """offset and mask as graph inputs, so a test can place samples exactly where it wants."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 2, 3, 3))
        self.bias = nn.Parameter(torch.randn(3))

    def forward(self, x, offset, mask):
        return deform_conv2d(x, offset, self.weight, self.bias, padding=1, mask=mask)


def test_border_conventions_match(tmp_path):
    """Offsets in half-pixel steps put samples exactly on -1, H - 1, H and between them:
    ONNX/onnxruntime must read zero outside (-1, H) x (-1, W) like torchvision and us."""
    torch.manual_seed(1)
    model = ExplicitOffsets().eval()

    def inputs(n, height=5, width=6):
        offset = torch.randint(-12, 13, (n, 18, height, width)).float() / 2
        return (torch.randn(n, 2, height, width), offset, torch.rand(n, 9, height, width))

    dc_onnx.export(model, inputs(2), tmp_path / "border.onnx", dynamic_size=True)
    assert dc_onnx.check(model, inputs(3), tmp_path / "border.onnx") <= TOL
    assert dc_onnx.check(model, inputs(3, 4, 9), tmp_path / "border.onnx") <= TOL


def run_session(path, *inputs: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    return torch.from_numpy(session.run(None, feed)[0])


def test_module_with_inf_offsets_matches_eager(tmp_path):
    """Eager, a DeformConv2d's non-finite offset makes the outputs it moves NaN; the graph
    held the op alone, whose DeformConv node reads 0 at an inf position: a finite result.
    The offset conv overflows to inf at one pixel only: NaN there, the rest as eager."""
    from deformconv.nn import DeformConv2d

    torch.manual_seed(0)
    module = DeformConv2d(2, 3, 3, padding=1, modulated=True).eval()
    with torch.no_grad():
        module.weight[:, 0].zero_()  # the main conv does not read the huge pixel
        module.conv_offset.weight.zero_()
        module.conv_offset.weight[0, 0, 1, 1] = 10.0  # Δh of point 0 = 10 * x[:, 0]
    x = torch.randn(2, 2, 6, 7, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "layer.onnx"
    dc_onnx.export(module, (x,), path)
    x[1, 0, 2, 3] = 3e38  # finite, but 10 times it is inf
    with torch.no_grad():
        expected = module(x)
    assert expected[1, :, 2, 3].isnan().all() and expected.isnan().sum() == 3
    torch.testing.assert_close(run_session(path, x), expected, atol=TOL, rtol=0,
                               equal_nan=True)
