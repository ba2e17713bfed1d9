"""models.create and the entry points: arguments refused with errors naming them."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from deformconv import models

pytest.importorskip("torchvision")


@pytest.mark.parametrize("mult", [-1.0, math.nan])
def test_a_bad_offset_lr_mult_is_refused(mult: float) -> None:
    """It was stored in every DeformConv2d unchecked, and the engine's per-module path
    (--offset-lr-mult model) turned it into a negative or NaN learning rate."""
    with pytest.raises(ValueError, match=re.escape(
            f"offset_lr_mult must be a finite number >= 0, got {mult!r}")):
        models.create("resnet18", 3, offset_lr_mult=mult, base_channels=8)


@pytest.mark.parametrize(("num_classes", "error", "message"), [
    (2.5, TypeError, "num_classes must be an int, got 2.5"),  # failed inside torch.empty
    (True, TypeError, "num_classes must be an int, got True"),
    (0, ValueError, "num_classes must be > 0, got 0"),
])
def test_num_classes_must_be_a_positive_int(num_classes, error, message) -> None:
    with pytest.raises(error, match=re.escape(message)):
        models.create("resnet18", num_classes, base_channels=8)


@pytest.mark.parametrize("name", ["faster_rcnn_resnet18", "rfcn_resnet18"])
def test_a_given_detection_config_is_the_base_of_its_field_kwargs(name: str) -> None:
    """config was passed on to the model class beside the one built from field kwargs:
    'got multiple values for keyword argument config'."""
    backbone = {"backbone_kwargs": {"base_channels": 8}, "head_channels": 16}
    config = models.DetectionConfig(min_size=64, box_nms_thresh=0.4)
    model = models.create(name, 3, config=config, **backbone)
    assert model.config == config
    model = models.create(name, 3, config=config, max_size=96, min_size=48, **backbone)
    assert model.config == models.DetectionConfig(min_size=48, max_size=96, box_nms_thresh=0.4)
    assert model.transform.min_size == (48,) and model.transform.max_size == 96
    with pytest.raises(TypeError, match="config must be a DetectionConfig or None, got dict"):
        models.create(name, 3, config={"min_size": 64}, **backbone)


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("resnet18", {"block": "bottleneck"}, "resnet18 is a basic-block ResNet with layers "
     "(2, 2, 2, 2), so block is not one of its options, got block='bottleneck'"),
    ("resnet34", {"block": "bottleneck"}, "resnet34 is a basic-block ResNet"),
    ("resnet50", {"block": "basic"}, "resnet50 is a bottleneck-block ResNet"),  # was resnet34
    ("resnet50", {"layers": (1, 1, 1, 1)}, "so layers is not one of its options, got "
     "layers=(1, 1, 1, 1); build ResNet(layers, num_classes, block=...) directly"),
])
def test_what_a_resnet_entry_point_fixes_is_refused(name, kwargs, message) -> None:
    """resnet18/34 passed block='basic' beside the user's: 'got multiple values for keyword
    argument block' (layers likewise); resnet50 built basic blocks if asked."""
    with pytest.raises(ValueError, match=re.escape(message)):
        models.create(name, 3, base_channels=8, **kwargs)


@pytest.mark.parametrize("fixed", [{"layers": (1, 1, 1, 1)}, {"num_classes": 5}])
def test_backbone_kwargs_cannot_set_what_the_entry_point_fixes(fixed) -> None:
    (key, value), = fixed.items()
    with pytest.raises(ValueError, match=re.escape(
            f"backbone_kwargs cannot set {key}, which the entry point fixes")):
        models.create("deeplab_resnet18", 3, backbone_kwargs={"base_channels": 8, **fixed})
    with pytest.raises(ValueError, match=re.escape(f"got {key}={value!r}")):
        models.create("faster_rcnn_resnet18", 3, backbone_kwargs=fixed)


@pytest.mark.parametrize(("field", "value", "message"), [
    # NaN losses: a zero std divides the images by 0, a zero ratio gives empty anchors
    ("image_std", (0, 0, 0), "image_std must be 3 finite numbers > 0, got (0, 0, 0)"),
    ("image_mean", (0.5, 0.5), "image_mean must be 3 finite numbers, got (0.5, 0.5)"),
    ("aspect_ratios", (0.0,), "aspect_ratios must be a non-empty sequence of finite numbers "
     "> 0, got (0.0,)"),
    # these failed at the first forward pass, in torch's interpolate or conv
    ("min_size", 0, "min_size must be a finite number > 0, got 0"),
    ("max_size", -5, "max_size must be a finite number > 0, got -5"),
    ("min_size", 2000, "min_size must be <= max_size (1000), got 2000"),
    ("min_size", [96, 2000], "min_size must be <= max_size (1000), got [96, 2000]"),
    ("min_size", [], "min_size must be a non-empty sequence of finite numbers > 0, got []"),
    ("anchor_sizes", (), "anchor_sizes must be a non-empty sequence of finite numbers > 0, "
     "got ()"),
    ("anchor_sizes", (8, -1), "anchor_sizes must be a non-empty sequence of finite numbers > 0"),
    ("rpn_post_nms_top_n_train", 0, "rpn_post_nms_top_n_train must be > 0, got 0"),
    ("rpn_nms_thresh", math.nan, "rpn_nms_thresh must be a number in [0, 1], got nan"),
    ("box_score_thresh", 1.5, "box_score_thresh must be a finite number <= 1, got 1.5"),
    ("box_nms_thresh", -0.1, "box_nms_thresh must be a number in [0, 1], got -0.1"),
    ("rpn_bg_iou_thresh", 0.8, "rpn_bg_iou_thresh must be <= rpn_fg_iou_thresh (0.7), got 0.8"),
])
def test_a_bad_detection_config_field_is_refused_at_construction(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        models.DetectionConfig(**{field: value})
    with pytest.raises(ValueError, match=re.escape(message)):  # as an entry point's kwarg
        models.create("faster_rcnn_resnet18", 3, backbone_kwargs={"base_channels": 8},
                      **{field: value})


def test_a_detector_takes_torchvision_s_multi_scale_min_size_and_float_anchor_sizes() -> None:
    """torchvision's transform draws one of several shorter sides per training batch and
    takes float anchor sizes; the config's checks refused both for a while."""
    model = models.create("faster_rcnn_resnet18", 3, min_size=[96, 112, 128], max_size=128,
                          anchor_sizes=(16.0, 32.0), backbone_kwargs={"base_channels": 8})
    assert tuple(model.transform.min_size) == (96, 112, 128)
    with torch.no_grad():
        detections = model.eval()([torch.rand(3, 100, 120)])
    assert len(detections) == 1 and detections[0]["boxes"].shape[1] == 4


@pytest.mark.parametrize(("name", "kwargs", "argument", "value"), [
    ("resnet18", {"deformable": "no"}, "deformable", "'no'"),  # built the deformable model
    ("resnet18", {"channels_last": 1}, "channels_last", "1"),
    ("resnet18", {"modulated": "no", "deform_blocks": (0, 0, 0, 0)}, "modulated", "'no'"),
    ("resnet18", {"zero_init_residual": "False"}, "zero_init_residual", "'False'"),
    ("compact_fcn", {"modulated": "no", "deform_layers": 0}, "modulated", "'no'"),
    ("deeplab_resnet18", {"deformable": 0}, "deformable", "0"),
    ("faster_rcnn_resnet18", {"deformable_head": "no"}, "deformable_head", "'no'"),
    ("faster_rcnn_resnet18", {"modulated_head": "no", "deformable_head": False},
     "modulated_head", "'no'"),
    ("rfcn_resnet18", {"deformable_head": "no"}, "deformable_head", "'no'"),
    ("rfcn_resnet18", {"modulated_head": 1}, "modulated_head", "1"),
])
def test_bool_options_must_be_bools(name, kwargs, argument, value) -> None:
    """bool('no') is True: create(..., deformable='no') built the deformable model."""
    small = {"base_channels": 8} if name.startswith("resnet") else {}
    if name.startswith(("faster", "rfcn", "deeplab")):
        small = {"backbone_kwargs": {"base_channels": 8}}
    with pytest.raises(TypeError, match=re.escape(
            f"{argument} must be a bool (True or False), got {value}")):
        models.create(name, 3, **small, **kwargs)


def test_entry_points_check_deformable_when_called_directly() -> None:
    with pytest.raises(TypeError, match=re.escape(
            "deformable must be a bool (True or False), got 'no'")):
        models.resnet.resnet18(3, deformable="no", base_channels=8)


@pytest.mark.parametrize("name", ["compact_fcn", "deeplab_resnet18"])
@pytest.mark.parametrize(("ignore_index", "message"), [
    # "x" built; the first loss call failed: 'bool' object has no attribute 'any'
    ("x", "ignore_index must be an int, got 'x'"),
    (True, "ignore_index must be an int, got True"),
    (255.0, "ignore_index must be an int, got 255.0"),
])
def test_ignore_index_must_be_an_int(name, ignore_index, message) -> None:
    small = {"backbone_kwargs": {"base_channels": 8}} if name.startswith("deeplab") else {}
    with pytest.raises(TypeError, match=re.escape(message)):
        models.create(name, 3, ignore_index=ignore_index, **small)
    model = models.create(name, 3, ignore_index=np.int64(-1), **small)
    assert type(model.ignore_index) is int and model.ignore_index == -1


@pytest.mark.parametrize(("name", "kwargs", "error", "message"), [
    # 0 built a box head with no features: Linear(in_features=0) scores, losses and
    # detections from the biases alone
    ("faster_rcnn_resnet18", {"representation_size": 0}, ValueError,
     "representation_size must be > 0, got 0"),
    ("faster_rcnn_resnet18", {"representation_size": 8.5}, TypeError,
     "representation_size must be an int, got 8.5"),
    ("faster_rcnn_resnet18", {"pool_size": 0}, ValueError, "pool_size must be > 0, got 0"),
    ("faster_rcnn_resnet18", {"head_channels": 0}, ValueError, "head_channels must be > 0, got 0"),
    ("rfcn_resnet18", {"head_channels": 0}, ValueError, "head_channels must be > 0, got 0"),
    ("rfcn_resnet18", {"head_channels": True}, TypeError, "head_channels must be an int, got True"),
])
@pytest.mark.parametrize("deformable", [True, False])
def test_detection_head_widths_must_be_positive_ints(name, kwargs, error, message,
                                                     deformable) -> None:
    with pytest.raises(error, match=re.escape(message)):
        models.create(name, 3, deformable=deformable, backbone_kwargs={"base_channels": 8},
                      **kwargs)


@pytest.mark.parametrize("cls", [models.FasterRCNN, models.RFCN])
def test_detectors_check_num_classes_themselves(cls) -> None:
    body = models.ResNet((1, 1, 1, 1), 0, base_channels=4, output_stride=16)
    with pytest.raises(TypeError, match=re.escape("num_classes must be an int, got 2.5")):
        cls(body, 2.5, head_channels=8)
    with pytest.raises(ValueError, match=re.escape("num_classes must be >= 2 (background")):
        cls(body, 1, head_channels=8)


@pytest.mark.parametrize(("name", "kwargs", "error", "message"), [
    # the plain twin took these (torchvision's RoIAlign with sampling_ratio=1.5)
    ("faster_rcnn_resnet18", {"sampling_ratio": 1.5}, TypeError,
     "sampling_ratio must be an int, got 1.5"),
    ("faster_rcnn_resnet18", {"offset_lr_mult": -1}, ValueError,
     "offset_lr_mult must be a finite number >= 0, got -1"),
    ("faster_rcnn_resnet18", {"offset_hidden_dims": 1024}, TypeError,
     "offset_hidden_dims must be a sequence of ints > 0, one width per hidden layer"),
    ("faster_rcnn_resnet18", {"offset_hidden_dims": (16, 0)}, ValueError,
     "offset_hidden_dims[1] must be > 0, got 0"),
    ("rfcn_resnet18", {"trans_std": math.nan}, ValueError,
     "trans_std must be a finite number, got nan"),
    ("rfcn_resnet18", {"offset_lr_mult": -1}, ValueError,
     "offset_lr_mult must be a finite number >= 0, got -1"),
])
@pytest.mark.parametrize("deformable", [True, False])
def test_both_twins_check_the_deformable_head_options(name, kwargs, error, message,
                                                      deformable) -> None:
    with pytest.raises(error, match=re.escape(message)):
        models.create(name, 3, deformable=deformable, backbone_kwargs={"base_channels": 8},
                      **kwargs)
