"""Deformable RoI pooling ops exported as standard-ONNX decompositions, run in onnxruntime."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deformconv import onnx as dc_onnx
from deformconv.ops import deform_psroi_pool, deform_roi_pool

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

TOL = 1e-4
H, W = 9, 11  # feature map size at export


def random_rois(count: int, batch: int, scale: float, seed: int, height: int = H,
                width: int = W) -> torch.Tensor:
    """RoIs partly or wholly outside the map, tiny, huge and degenerate (x2 < x1) ones."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([width, height, width, height]) / scale
    boxes = torch.rand(count, 4, generator=g) * size * 1.6 - size * 0.3
    boxes[: count // 4, 2:] = boxes[: count // 4, :2] - 1.3  # degenerate
    index = torch.randint(0, batch, (count, 1), generator=g).float()
    return torch.cat([index, boxes], dim=1)


class RoIPool(nn.Module):
    def __init__(self, **options):
        super().__init__()
        self.options = options

    def forward(self, input, rois, offset=None, mask=None):
        return deform_roi_pool(input, rois, offset, mask=mask, **self.options)


class PSRoIPool(nn.Module):
    def __init__(self, **options):
        super().__init__()
        self.options = options

    def forward(self, input, rois, offset=None):
        return deform_psroi_pool(input, rois, offset, **self.options)


# name -> (module, input channels, offset shape (C, h, w) without K or None, mask shape or None)
CASES = {
    "roi_adaptive_aligned_offset_mask": (
        RoIPool(output_size=(3, 2), spatial_scale=0.5, sampling_ratio=0, gamma=0.1), 3,
        (2, 3, 2), (1, 3, 2)),
    "roi_ratio2_legacy_offset": (
        RoIPool(output_size=3, spatial_scale=1.0, sampling_ratio=2, gamma=0.3, aligned=False),
        3, (2, 3, 3), None),
    "roi_adaptive_no_offset": (RoIPool(output_size=2, spatial_scale=0.25), 3, None, None),
    "psroi_group1_no_offset": (
        PSRoIPool(spatial_scale=0.5, output_dim=2, group_size=1, pooled_size=3,
                  sample_per_part=2), 2, None, None),
    "psroi_group3_two_classes_part2": (
        PSRoIPool(spatial_scale=0.5, output_dim=4, group_size=3, pooled_size=3, part_size=2,
                  sample_per_part=4, trans_std=0.3), 36, (4, 2, 2), None),
    "psroi_group2_class_agnostic": (
        PSRoIPool(spatial_scale=0.25, output_dim=3, group_size=2, pooled_size=4,
                  sample_per_part=3, trans_std=0.5), 12, (2, 4, 4), None),
}


def make_inputs(name: str, rois: int, batch: int, seed: int, height: int = H,
                width: int = W) -> tuple:
    module, channels, offset_shape, mask_shape = CASES[name]
    g = torch.Generator().manual_seed(seed)
    args = [torch.randn(batch, channels, height, width, generator=g),
            random_rois(rois, batch, module.options["spatial_scale"], seed, height, width)]
    if offset_shape:  # large offsets: bins move far, partly off the map
        args.append(torch.randn(rois, *offset_shape, generator=g) * 2)
    if mask_shape:
        args.append(torch.rand(rois, *mask_shape, generator=g))
    return tuple(args)


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    name = request.param
    path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
    dc_onnx.export(CASES[name][0].eval(), make_inputs(name, rois=5, batch=2, seed=0), path,
                   dynamic_size=True)
    return name, path


def test_graph_uses_only_standard_ops(exported):
    _, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = {(node.domain, node.op_type) for node in model.graph.node}
    assert {domain for domain, _ in ops} == {""}
    assert ("", "Gather") in ops


@pytest.mark.parametrize(("rois", "batch", "height", "width"),
                         [(5, 2, H, W), (7, 3, 12, 7), (0, 3, H, W), (1, 1, 5, 16)])
def test_matches_pytorch_for_any_roi_count_and_map_size(exported, rois, batch, height, width):
    name, path = exported
    inputs = make_inputs(name, rois, batch, seed=rois + batch, height=height, width=width)
    assert dc_onnx.check(CASES[name][0], inputs, path) <= TOL


@pytest.mark.parametrize("name", ["roi_adaptive_aligned_offset_mask",
                                  "psroi_group3_two_classes_part2"])
def test_float16_graph_is_valid_and_matches_pytorch(tmp_path, name):
    """float16 models pool in float32 (RoIs too, as the ops take them); the decomposition
    computed in float16 with float32 RoIs: an invalid graph onnxruntime refused to load."""
    module = CASES[name][0].eval()
    inputs = tuple(t.half() for t in make_inputs(name, rois=5, batch=2, seed=0))
    path = tmp_path / f"{name}.onnx"
    dc_onnx.export(module, inputs, path)
    onnx.checker.check_model(str(path), full_check=True)
    more = tuple(t.half() for t in make_inputs(name, rois=7, batch=3, seed=1))
    # torch rounds a float32 result to float16 too: at most a rounding step apart
    assert dc_onnx.check(module, more, path) <= 4e-3


def test_invalid_rois_give_nan_rows(exported):
    """The ops raise for these RoIs; a graph cannot, and gave silent values instead: batch
    index -1 pooled the last image (Gather wraps), 0.7 the first, an inf coordinate zeros."""
    import onnxruntime

    name, path = exported
    inputs = list(make_inputs(name, rois=7, batch=2, seed=3))
    inf, nan = float("inf"), float("nan")
    bad = [[-1, 1, 1, 5, 5], [0.7, 1, 1, 5, 5], [2, 1, 1, 5, 5], [0, 1, inf, 5, 5],
           [0, nan, 1, 5, 5], [nan, 1, 1, 5, 5]]
    inputs[1][1:] = torch.tensor(bad)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    outputs = [torch.from_numpy(out) for out in session.run(None, feed)]
    with torch.no_grad():
        valid = CASES[name][0](*(t[:1] if i else t for i, t in enumerate(inputs)))
    for got, expected in zip(outputs, (valid,) if torch.is_tensor(valid) else valid,
                             strict=True):
        torch.testing.assert_close(got[:1], expected, atol=TOL, rtol=0)
        assert got[1:].isnan().all()


def run_session(path, *inputs: torch.Tensor) -> list[torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    return [torch.from_numpy(out) for out in session.run(None, feed)]


def test_nan_offsets_give_nan_where_the_modules_do(exported):
    """The ops refuse NaN offsets; in the graph a NaN sample position became an int64 index
    out of range and onnxruntime refused the whole batch (Gather ... out of data bounds).
    The graph gives what a module gives (nan_offsets_propagate): NaN at the offset's output
    positions, all of the row where the offset grid is not the output's."""
    from deformconv.nn._offset import nan_offsets_propagate

    name, path = exported
    module, _, offset_shape, _ = CASES[name]
    if offset_shape is None:
        pytest.skip("no offset input")
    inputs = list(make_inputs(name, rois=5, batch=2, seed=4))
    inputs[2][1, 0, 1, 1] = float("nan")
    inputs[2][3, -1, 0, 0] = float("nan")
    per_position = module.options.get("part_size") in (None, module.options.get("pooled_size"))
    with torch.no_grad():
        expected = nan_offsets_propagate(
            lambda o: module(*inputs[:2], o, *inputs[3:]), inputs[2], per_position=per_position)
    got = run_session(path, *inputs)[0]
    assert got.isnan().any() and not got[[0, 2, 4]].isnan().any()
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0, equal_nan=True)


def module_cases() -> dict:
    from deformconv.nn import DeformPSRoIPool, DeformRoIPool

    torch.manual_seed(0)
    cases = {
        "roi": DeformRoIPool(4, 2, spatial_scale=0.5),
        "roi_modulated": DeformRoIPool(4, 3, spatial_scale=0.5, modulated=True),
        "psroi": DeformPSRoIPool(18, 2, 3, spatial_scale=0.5),
        "psroi_part2_two_classes": DeformPSRoIPool(
            36, 4, 3, spatial_scale=0.5, part_size=2, offset_classes=2, modulated=True),
    }
    for module in cases.values():  # offset branches start at zero: make them move the bins
        for p in module.offset_branch.parameters():
            torch.nn.init.normal_(p, std=0.3)
    return cases


MODULES = module_cases()


def module_input(name: str, batch: int = 2) -> torch.Tensor:
    module = MODULES[name]
    channels = module.in_channels
    return torch.randn(batch, channels, 10, 12, generator=torch.Generator().manual_seed(1))


ROIS = torch.tensor([[0, 1., 1, 12, 10], [1, 2, 2, 20, 18], [0, 14, 2, 22, 19],
                     [1, 0, 0, 23, 19], [0, 2, 12, 9, 19]])


@pytest.fixture(scope="module", params=sorted(MODULES))
def exported_module(request, tmp_path_factory):
    name = request.param
    path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
    dc_onnx.export(MODULES[name].eval(), (module_input(name), ROIS), path, dynamic_size=True)
    return name, path


def test_module_with_invalid_rois_gives_nan_rows_only_there(exported_module):
    """One bad RoI made onnxruntime refuse the whole batch: the first pass made its row NaN,
    the offset layer its offsets, and the second pass cast NaN positions to Gather indices."""
    name, path = exported_module
    module, x = MODULES[name], module_input(name)
    inf, nan = float("inf"), float("nan")
    bad = torch.tensor([[2, 1, 1, 5, 5], [-1, 1, 1, 5, 5], [0.5, 1, 1, 5, 5],
                        [nan, 1, 1, 5, 5], [0, nan, 1, 5, 5], [1, 1, 1, inf, 5]])
    (got,) = run_session(path, x, torch.cat([ROIS, bad]))
    with torch.no_grad():
        expected = module(x, ROIS)
    torch.testing.assert_close(got[: len(ROIS)], expected, atol=TOL, rtol=0)
    assert got[len(ROIS):].isnan().all()


def test_module_with_a_nan_pixel_matches_eager(exported_module):
    """Eager: NaN in the rows whose offsets the NaN reached, the others finite; the graph
    refused the batch."""
    name, path = exported_module
    module, x = MODULES[name], module_input(name)
    x[0, :, 3, 3] = float("nan")
    (got,) = run_session(path, x, ROIS)
    with torch.no_grad():
        expected = module(x, ROIS)
    assert expected.isnan().any() and not expected[[1, 3]].isnan().any()
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0, equal_nan=True)


def test_psroi_graph_rounds_float64_rois_in_float64(tmp_path):
    """float64 RoIs with a float32 input were rounded after their cast to float32: a corner
    just below a half rounded the other way."""
    from deformconv.ops import reference

    module = PSRoIPool(spatial_scale=0.25, output_dim=8, group_size=3, pooled_size=3).eval()
    x = torch.randn(2, 72, 20, 20, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "psroi.onnx"
    rois = torch.tensor([[0, 10.4999999, 40.4999999, 60.4999999, 70.4999999],
                         [1, -2.4999999, 9.4999999, 20.4999999, 79.4999999]],
                        dtype=torch.float64)
    dc_onnx.export(module, (x, rois.round()), path)
    (got,) = run_session(path, x, rois)
    expected = reference.deform_psroi_pool(x, rois, None, **module.options)[0]
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


def test_adaptive_grid_beyond_the_samples_limit_gives_a_nan_row(tmp_path):
    """The op refuses a RoI whose adaptive grid takes more than MAX_SAMPLES_PER_BIN samples
    per bin; the graph had no such limit and sized its sample grid by that RoI: a
    (K, ph, pw, 1.25e7, 1.25e7, C) tensor that onnxruntime failed to allocate."""
    from deformconv.ops._checks import MAX_SAMPLES_PER_BIN

    module = RoIPool(output_size=2, spatial_scale=0.25).eval()
    x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(0))
    rois = torch.tensor([[0, 1.0, 2.0, 30.0, 25.0], [1, 3.0, 0.0, 12.0, 40.0],
                         [1, 0.0, 0.0, 1e8, 1e8]])
    path = tmp_path / "roi.onnx"
    dc_onnx.export(module, (x, rois[:2]), path)
    with pytest.raises(ValueError, match=f"more than {MAX_SAMPLES_PER_BIN}"):
        module(x, rois)
    (got,) = run_session(path, x, rois)
    torch.testing.assert_close(got[:2], module(x, rois[:2]), atol=TOL, rtol=0)
    assert got[2:].isnan().all()


@pytest.mark.parametrize(("module", "inputs", "message"), [
    (RoIPool(output_size=2, spatial_scale=1.0, sampling_ratio=8193),
     (torch.zeros(2, 3, H, W), torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]] * 2)),
     "sampling_ratio must be at most 8192"),
    (PSRoIPool(spatial_scale=1.0, output_dim=1, group_size=1, pooled_size=2,
               sample_per_part=8193),
     (torch.zeros(2, 1, H, W), torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]] * 2)),
     "sample_per_part must be at most 8192"),
])
def test_export_refuses_a_sample_count_the_op_refuses(tmp_path, module, inputs, message):
    """A sampling_ratio (sample_per_part) the op refuses was exported as a graph of
    8193² samples per bin."""
    with pytest.raises(Exception, match=message):
        dc_onnx.export(module.eval(), inputs, tmp_path / "roi.onnx")
    assert not (tmp_path / "roi.onnx").exists()


@pytest.mark.parametrize("name", ["roi_modulated", "psroi_part2_two_classes"])
def test_module_with_inf_offsets_matches_eager(tmp_path, name):
    """Eager, a module's inf offset makes the bins it moves NaN (all of the row where the
    offset grid is not the output's); the graph read an inf position as outside the map."""
    import copy

    module = copy.deepcopy(MODULES[name]).eval()
    last = [m for m in module.offset_branch.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        last[-1].bias[0] = float("inf")
    x = module_input(name)
    path = tmp_path / f"{name}.onnx"
    dc_onnx.export(module, (x, ROIS), path)
    with torch.no_grad():
        expected = module(x, ROIS)
    assert expected.isnan().any()
    (got,) = run_session(path, x, ROIS)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0, equal_nan=True)
