"""Registered models exported with deformconv.onnx.models and checked in onnxruntime."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("torchvision")  # the detection models are built on its parts
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from deformconv import models  # noqa: E402
from deformconv.nn import OffsetBranchMixin, eval_mode  # noqa: E402
from deformconv.onnx import check, export  # noqa: E402
from deformconv.onnx.models import RoIHead, example_rois, export_registered  # noqa: E402

TOL = 1e-4


def randomise_offsets(model: nn.Module) -> nn.Module:
    """Offset branches start at zero (a plain conv / RoIAlign); move them so the exported
    graphs really sample off the grid."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, OffsetBranchMixin):
            for p in module.offset_branch.parameters():
                nn.init.normal_(p, std=0.05)
    return model


def op_types(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def faster_rcnn_export(tmp_path_factory):
    """Tiny deformable Faster R-CNN: modulated deformable res3-res5 and RoI pooling head."""
    torch.manual_seed(0)
    model = models.create(
        "faster_rcnn_resnet50", num_classes=5, head_channels=16, representation_size=32,
        modulated_head=True,
        backbone_kwargs={"base_channels": 8, "modulated": True, "deform_blocks": (0, 1, 1, 3)},
    )
    path = tmp_path_factory.mktemp("onnx") / "faster_rcnn.onnx"
    results = export_registered("faster_rcnn_resnet50", path, model=randomise_offsets(model),
                                image_size=64)
    return path, results, model


def test_detector_backbone_and_head_match_pytorch(faster_rcnn_export):
    path, (features, head), model = faster_rcnn_export
    assert all(module.training for module in model.modules())  # the caller's mode kept
    assert features.path == str(path)
    assert head.path == str(path.with_name("faster_rcnn.roi_head.onnx"))
    # Checked on the example and on one more image, 3 more rows and 5 more columns.
    assert features.checked_shapes == ((2, 3, 64, 64), (3, 3, 67, 69))
    assert head.checked_shapes == ((2, 16, 4, 4), (3, 16, 7, 9))
    for result in (features, head):
        assert result.max_abs_diff is not None and result.max_abs_diff <= TOL


def test_detector_graphs_use_standard_ops(faster_rcnn_export):
    path, (features, head), _ = faster_rcnn_export
    assert "DeformConv" in op_types(features.path)  # the deformable backbone
    head_ops = op_types(head.path)
    assert "Gather" in head_ops and "DeformConv" not in head_ops  # decomposed RoI pooling
    for result in (features, head):
        onnx.checker.check_model(onnx.load(result.path), full_check=True)


def io_names(path) -> tuple[list[str], list[str]]:
    graph = onnx.load(str(path)).graph
    return [i.name for i in graph.input], [o.name for o in graph.output]


def test_detector_graphs_have_the_documented_names(faster_rcnn_export):
    """The outputs were named by the exporter after their last op: 'conv2d_22', 'linear_3'."""
    _, (features, head), _ = faster_rcnn_export
    assert io_names(features.path) == (["images"],
                                       ["rpn_objectness", "rpn_box_deltas", "features"])
    assert io_names(head.path) == (["features", "rois"], ["class_logits", "box_deltas"])


def test_image_model_graph_is_named_images_to_logits(tmp_path):
    path = tmp_path / "resnet.onnx"
    export_registered("resnet18", path, num_classes=3, image_size=32, dynamic_size=False,
                      verify=False, base_channels=4)
    assert io_names(path) == (["images"], ["logits"])


def test_documented_pipeline_gives_the_detectors_detections(faster_rcnn_export, monkeypatch):
    """The pipeline of deformconv.onnx.models' docstring on an image whose sides are not
    multiples of 32. The features graph did not pad as the detector's transform does
    (zeros after normalisation, to multiples of 32): boxes came out 128 px off."""
    import onnxruntime as ort
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    path, (features, head), model = faster_rcnn_export
    monkeypatch.setattr(model.transform, "min_size", (72,))  # no resizing of a 72 x 100 image
    monkeypatch.setattr(model.transform, "max_size", 100)
    monkeypatch.setattr(model.roi_heads, "score_thresh", 0.0)  # random weights: low scores
    images = torch.rand(1, 3, 72, 100, generator=torch.Generator().manual_seed(5))
    sizes = [(72, 100)]
    with eval_mode(model), torch.no_grad():
        expected = model(list(images))[0]

    def run(path: str, *args: torch.Tensor) -> list[torch.Tensor]:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        feed = {name: x.numpy() for name, x in zip(names, args, strict=True)}
        return [torch.from_numpy(a) for a in session.run(None, feed)]

    with torch.no_grad():
        objectness, deltas, feature_map = run(features.path, images)
        padded = torch.empty(1, 3, 96, 128)  # anchors: padded size
        anchors = model.rpn.anchor_generator(ImageList(padded, sizes), [objectness])
        scores, deltas = concat_box_prediction_layers([objectness], [deltas])
        proposals = model.rpn.box_coder.decode(deltas, anchors).view(1, -1, 4)
        boxes, _ = model.rpn.filter_proposals(proposals, scores, sizes,
                                              [objectness[0].numel()])
        rois = torch.cat([torch.cat([torch.full((len(b), 1), i), b], 1)
                          for i, b in enumerate(boxes)])
        logits, box_deltas = run(head.path, feature_map, rois)
        (got_boxes,), (got_scores,), (got_labels,) = model.roi_heads.postprocess_detections(
            logits, box_deltas, boxes, sizes)
    assert len(expected["boxes"]) > 10
    torch.testing.assert_close(got_boxes, expected["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(got_scores, expected["scores"], atol=1e-5, rtol=0)
    assert torch.equal(got_labels, expected["labels"])


def test_detector_head_gives_nan_only_in_the_rows_of_bad_rois_and_nan_features(
        faster_rcnn_export):
    """A RoI with batch index N, or a NaN in the features, made onnxruntime refuse the whole
    batch: the deformable RoI pooling's NaN offsets became out-of-range Gather indices."""
    import onnxruntime as ort

    _, (_, head), model = faster_rcnn_export
    module = RoIHead(model).eval()
    features = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    features[0, :, 1, 1] = float("nan")
    rois = example_rois(6, 2, 64, 64)
    bad = torch.tensor([[2.0, 1, 1, 30, 30], [0, float("nan"), 1, 30, 30]])
    session = ort.InferenceSession(head.path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, dict(zip(names, (features.numpy(), torch.cat([rois, bad]).numpy()),
                                     strict=True)))
    with torch.no_grad():
        expected = module(features, rois)
    for out, want in zip(got, expected, strict=True):
        out = torch.from_numpy(out)
        assert want[1::2].isfinite().all() and want[0::2].isnan().any()  # image 1 / image 0
        torch.testing.assert_close(out[:6], want, atol=TOL, rtol=0, equal_nan=True)
        assert out[6:].isnan().all()


def test_rfcn_position_sensitive_head(tmp_path):
    """R-FCN's RoI head: deformable PS RoI pooling (class-specific and class-agnostic)."""
    torch.manual_seed(0)
    model = models.create(
        "rfcn_resnet50", num_classes=4, head_channels=16, group_size=3, modulated_head=True,
        backbone_kwargs={"base_channels": 8, "deform_blocks": (0, 0, 0, 1)},
    )
    randomise_offsets(model)
    with torch.no_grad():  # score maps start near 0 (std 0.01); make the outputs sizeable
        for p in model.roi_heads.box_roi_pool.parameters():
            p.normal_(std=0.3)
    head = RoIHead(model).eval()
    features = torch.randn(2, 16, 6, 7)
    export(head, (features, example_rois(6, 2, 96, 112)), tmp_path / "rfcn_head.onnx")
    more = (torch.randn(3, 16, 6, 7), example_rois(9, 3, 96, 112, seed=1))
    assert check(head, more, tmp_path / "rfcn_head.onnx") <= TOL


def test_unknown_model_name(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'resnet7'; available: .*resnet50"):
        export_registered("resnet7", tmp_path / "x.onnx")
