"""ResNet: torchvision checkpoints load exactly, stage geometry, deformable-conv choice,
bottleneck and basic blocks."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from deformconv import models
from deformconv.models import ResNet, checkpoint_filter_fn
from deformconv.nn import DeformConv2d, convert_to_deformable, offset_state_keys

torchvision = pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def torchvision_resnet50_state() -> dict[str, torch.Tensor]:
    """A randomly initialised torchvision resnet50 (no download), BN statistics made
    non-trivial so that a buffer left unloaded would show."""
    state = torchvision.models.resnet50(weights=None).state_dict()
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = torch.rand_like(value) + 0.5 if "running_var" in key else \
                torch.randn_like(value)
    return state


def _backbone(model: nn.Module) -> ResNet:
    return model if isinstance(model, ResNet) else getattr(model.backbone, "body", model.backbone)


@pytest.mark.parametrize("name", [n for n in models.list_models() if n.endswith("resnet50")])
def test_torchvision_resnet50_state_dict_matches_every_backbone_tensor(
        name, torchvision_resnet50_state):
    num_classes = 1000 if models.model_task(name) == "classification" else 5
    model = models.create(name, num_classes=num_classes)
    missing = model.load_backbone_state_dict(torchvision_resnet50_state)
    assert missing and all("conv_offset" in k for k in missing)  # only offset branches
    own = _backbone(model).state_dict()
    skipped = {"fc.weight", "fc.bias"} if num_classes != 1000 else set()
    for key, value in torchvision_resnet50_state.items():
        if key in skipped:
            continue
        if key.endswith("num_batches_tracked") and key not in own:
            continue  # frozen BN keeps no counter
        torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)


def test_classifier_with_other_classes_leaves_fc_at_init(torchvision_resnet50_state):
    model = models.create("resnet50", num_classes=10)
    missing = model.load_backbone_state_dict(torchvision_resnet50_state)
    assert {"fc.weight", "fc.bias"} <= set(missing)
    assert len(missing) == 2 + 2 * 3  # fc, and weight + bias of three res5 offset convs


def test_filter_strips_module_prefix_and_rejects_foreign_checkpoints():
    model = ResNet((1, 1, 1, 1), 3, base_channels=8)
    prefixed = {f"module.{k}": v for k, v in model.state_dict().items()}
    assert checkpoint_filter_fn(prefixed, model).keys() == model.state_dict().keys()
    resnet18 = torchvision.models.resnet18(weights=None).state_dict()
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight: checkpoint"):
        models.create("resnet50", 1000).load_backbone_state_dict(resnet18)


@pytest.mark.parametrize(("output_stride", "sizes"), [(32, [16, 8, 4, 2]), (16, [16, 8, 4, 4]),
                                                      (8, [16, 8, 8, 8])])
def test_stage_shapes_and_dilation(output_stride, sizes):
    model = ResNet((1, 2, 1, 2), 0, output_stride=output_stride, base_channels=4,
                   deform_blocks=(0, 0, 1, 2)).eval()
    stages = model.forward_stages(torch.randn(1, 3, 64, 64))
    assert [s.shape[1] for s in stages] == [16, 32, 64, 128]
    assert [s.shape[-1] for s in stages] == sizes
    dilations = [m.conv2.dilation[0] for m in model.layer4]
    assert dilations == [{32: 1, 16: 2, 8: 4}[output_stride]] * 2  # all blocks, as the paper


def test_deform_blocks_choose_the_last_blocks_of_each_stage():
    model = ResNet((2, 2, 3, 2), 0, base_channels=8, deform_blocks=(0, 1, 2, 2),
                   offset_groups=2)
    deformable = sorted(n for n, m in model.named_modules() if isinstance(m, DeformConv2d))
    assert deformable == ["layer2.1.conv2", "layer3.1.conv2", "layer3.2.conv2",
                          "layer4.0.conv2", "layer4.1.conv2"]
    assert model.layer4[0].conv2.offset_groups == 2


def test_same_model_as_converting_the_plain_twin():
    deformable = models.create("resnet50", 10, base_channels=8)
    plain = models.create("resnet50", 10, deformable=False, base_channels=8)
    convert_to_deformable(plain, "layer4.*.conv2", offset_groups=4)
    shapes = {k: v.shape for k, v in deformable.state_dict().items()}
    assert shapes == {k: v.shape for k, v in plain.state_dict().items()}


def test_frozen_stages():
    model = ResNet((1, 1, 1, 1), 0, base_channels=4, frozen_stages=1)
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1"}


def test_frozen_stages_keep_their_batch_norm_statistics_in_training():
    """Frozen stages' BatchNorm used to update its running statistics in train() (and
    normalise with the batch's): a frozen stage's output drifted."""
    model = ResNet((1, 1, 1, 1), 0, base_channels=4, frozen_stages=1).train()
    frozen = model.layer1[0].bn1
    before = frozen.running_mean.clone(), model.layer2[0].bn1.running_mean.clone()
    x = torch.randn(2, 3, 32, 32) * 3 + 1
    model(x)
    assert torch.equal(frozen.running_mean, before[0]) and not frozen.training
    assert not torch.equal(model.layer2[0].bn1.running_mean, before[1])  # not frozen
    assert model.layer2.training and model.training
    stage1 = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    torch.testing.assert_close(model.layer1(stage1), model.eval().layer1(stage1))


def test_basic_blocks_count_deformable_layers_in_3x3_convs():
    # The paper's "last n layers": its bottleneck res5 has one 3x3 conv per block, a basic
    # block two; counting convs keeps "3 layers" = the last three 3x3 convs.
    model = ResNet((2, 2, 2, 2), 0, base_channels=4, block="basic", deform_blocks=(0, 0, 2, 3))
    deformable = sorted(n for n, m in model.named_modules() if isinstance(m, DeformConv2d))
    assert deformable == ["layer3.1.conv1", "layer3.1.conv2",
                          "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]
    assert model.num_features == 32
    with pytest.raises(ValueError, match=r"n = \(4, 4, 4, 4\): 2 per BasicBlock"):
        ResNet((2, 2, 2, 2), 0, block="basic", deform_blocks=(0, 0, 0, 5))


@pytest.mark.parametrize("output_stride", [8, 16])
def test_basic_block_stage_geometry(output_stride):
    model = ResNet((1, 1, 1, 2), 0, block="basic", base_channels=4,
                   output_stride=output_stride, deform_blocks=(0, 0, 1, 4)).eval()
    stages = model.forward_stages(torch.randn(1, 3, 64, 64))
    assert [s.shape[1] for s in stages] == [4, 8, 16, 32]
    assert stages[-1].shape[-1] == 64 // output_stride
    res5 = [conv.dilation[0] for block in model.layer4 for conv in (block.conv1, block.conv2)]
    assert res5 == [32 // output_stride] * 4


def test_zero_init_residual_refuses_a_fixed_norm_scale():
    """Frozen BN (the DeepLab and detection backbones' default) kept gamma 1 without a word;
    zeroed, its fixed gamma would silence every residual branch for good."""
    with pytest.raises(ValueError, match="zero_init_residual needs norm layers with a "
                                         "trainable scale, got FrozenBatchNorm2d"):
        ResNet((1, 1, 1, 1), 0, block="basic", base_channels=4, zero_init_residual=True,
               norm_layer="frozen_batch_norm")


def test_zero_init_residual_refuses_frozen_stages():
    """Their zeroed scales could not learn either: the blocks' branches stayed at zero."""
    with pytest.raises(ValueError, match="zero_init_residual with frozen_stages=2 would leave"):
        ResNet((1, 1, 1, 1), 0, block="basic", base_channels=4, zero_init_residual=True,
               frozen_stages=2)
    ResNet((1, 1, 1, 1), 0, block="basic", base_channels=4, zero_init_residual=True,
           frozen_stages=0)  # the stem alone has no residual branch


@pytest.mark.parametrize("norm_layer", ["batch_norm", lambda channels: nn.GroupNorm(2, channels)])
def test_zero_init_residual_makes_every_block_start_as_its_shortcut(norm_layer):
    model = ResNet((1, 1, 1, 1), 0, block="basic", base_channels=4, zero_init_residual=True,
                   norm_layer=norm_layer)
    model.eval()
    block = model.layer1[0]  # no downsample: the block is relu(x) at init
    x = torch.rand(1, 4, 8, 8)
    torch.testing.assert_close(block(x), x)
    last_norms = [b.last_norm().weight.detach() for stage in model.stages() for b in stage]
    assert all(bool((w == 0).all()) for w in last_norms)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"deform_blocks": (0, 0, 0, 2)}, "deform_blocks"),
    ({"block": "wide"}, "block"),
    ({"output_stride": 4}, "output_stride"),
    ({"norm_layer": "layer_norm"}, "norm_layer"),
    ({"frozen_stages": 5}, "frozen_stages"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet((1, 1, 1, 1), 0, **kwargs)


@pytest.mark.parametrize(("base_channels", "error", "message"), [
    # 2.5 failed in torch: "out_channels must be divisible by groups"
    (2.5, TypeError, "base_channels must be an int, got 2.5"),
    (True, TypeError, "base_channels must be an int, got True"),
    (0, ValueError, "base_channels must be > 0, got 0"),
])
def test_base_channels_must_be_a_positive_int(base_channels, error, message):
    with pytest.raises(error, match=re.escape(message)):
        ResNet((1, 1, 1, 1), 0, base_channels=base_channels)


@pytest.mark.parametrize("depth", [18, 34, 101])
def test_torchvision_state_dict_loads_into_the_deeplab_backbone(depth):
    """Bottleneck (ResNet-101) and basic-block (ResNet-18/34) checkpoints load exactly."""
    state = getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = torch.randn_like(value)
    model = models.create(f"deeplab_resnet{depth}", num_classes=21)
    missing = model.load_backbone_state_dict(state)
    assert sorted(missing) == sorted(offset_state_keys(model.backbone))
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if k in own)
    assert {k for k in state if k not in own} == {"fc.weight", "fc.bias"} | {
        k for k in state if k.endswith("num_batches_tracked")}


@pytest.mark.parametrize(("deform_blocks", "error", "message"), [
    # 1.5 built one deformable conv (range() truncated it) and reported 1.5
    ((0, 0, 0, 1.5), TypeError, "deform_blocks[3] must be an int, got 1.5"),
    ((0, 0, 0, True), TypeError, "deform_blocks[3] must be an int, got True"),  # stored as True
    ((0, -1, 0, 0), ValueError, "deform_blocks[1] must be >= 0, got -1"),
    ((0, 0, 0), ValueError, "deform_blocks must be a sequence of 4 ints >= 0, got (0, 0, 0)"),
    (3, TypeError, "deform_blocks must be a sequence of 4 ints >= 0, got 3"),
    ((0, 0, 0, 5), ValueError, "deform_blocks must give 0..n deformable 3x3 convs"),
])
def test_deform_blocks_must_be_four_ints_in_range(deform_blocks, error, message):
    with pytest.raises(error, match=re.escape(message)):
        models.create("resnet18", 3, deform_blocks=deform_blocks, base_channels=8)


def test_deform_blocks_and_layers_are_stored_as_python_ints():
    numpy = pytest.importorskip("numpy")
    model = ResNet(numpy.array([1, 1, 1, 1]), 0, deform_blocks=[0, 0, 0, numpy.int64(1)],
                   base_channels=4)
    assert model.layers == (1, 1, 1, 1) and model.deform_blocks == (0, 0, 0, 1)
    assert all(type(n) is int for n in model.layers + model.deform_blocks)


@pytest.mark.parametrize(("layers", "error", "message"), [
    ((1, 1, 1.0, 1), TypeError, "layers[2] must be an int, got 1.0"),
    ((1, 1, 0, 1), ValueError, "layers[2] must be > 0, got 0"),
    ((1, 1, 1), ValueError, "layers must be a sequence of 4 ints > 0, got (1, 1, 1)"),
])
def test_layers_must_be_four_positive_ints(layers, error, message):
    with pytest.raises(error, match=re.escape(message)):
        ResNet(layers, 0, base_channels=4)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    # 1.5 failed in the stage slicing ("slice indices must be integers"), "1" in a comparison
    ({"frozen_stages": 1.5}, TypeError, "frozen_stages must be an int, got 1.5"),
    ({"frozen_stages": "1"}, TypeError, "frozen_stages must be an int, got '1'"),
    ({"frozen_stages": True}, TypeError, "frozen_stages must be an int, got True"),
    ({"in_chans": 0}, ValueError, "in_chans must be > 0, got 0"),
    ({"in_chans": 3.0}, TypeError, "in_chans must be an int, got 3.0"),
    ({"output_stride": 16.0}, TypeError, "output_stride must be an int, got 16.0"),
    ({"num_classes": 2.5}, TypeError, "num_classes must be an int, got 2.5"),
    ({"num_classes": -1}, ValueError, "num_classes must be >= 0, got -1"),
    # the deformable layers' options, checked for the plain twin too
    ({"offset_groups": 1.5}, TypeError, "offset_groups must be an int, got 1.5"),
    ({"offset_groups": 0}, ValueError, "offset_groups must be > 0, got 0"),
    ({"offset_lr_mult": -1}, ValueError, "offset_lr_mult must be a finite number >= 0"),
])
@pytest.mark.parametrize("deform_blocks", [(0, 0, 0, 0), (0, 0, 0, 1)])
def test_int_options_are_checked_at_construction(kwargs, error, message, deform_blocks):
    with pytest.raises(error, match=re.escape(message)):
        ResNet((1, 1, 1, 1), **{"num_classes": 0, "base_channels": 4,
                                "deform_blocks": deform_blocks, **kwargs})
