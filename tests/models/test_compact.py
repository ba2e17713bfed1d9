"""CompactFCN: shapes, plain twin at init, deformable layers where asked, decoder, errors."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from deformconv import models
from deformconv.models import CompactFCN
from deformconv.nn import DeformConv2d, offset_state_keys


def _deformable_indices(model: CompactFCN) -> list[int]:
    return [i for i, layer in enumerate(model.features) if isinstance(layer[0], DeformConv2d)]


@pytest.mark.parametrize("skip_layer", [None, 0])
def test_twins_agree_at_init_and_both_train(skip_layer):
    kwargs = {"widths": (8, 8, 12, 12), "strides": (2, 2, 1, 1), "deform_layers": 2,
              "skip_layer": skip_layer, "decoder_width": 6}
    torch.manual_seed(0)
    plain = models.create("compact_fcn", 4, deformable=False, **kwargs)
    torch.manual_seed(0)
    deformable = models.create("compact_fcn", 4, **kwargs)
    missing = deformable.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert set(missing) == offset_state_keys(deformable) and missing
    assert _deformable_indices(deformable) == [2, 3] and _deformable_indices(plain) == []
    images = torch.rand(2, 3, 36, 44)
    plain.eval()
    deformable.eval()
    with torch.no_grad():
        torch.testing.assert_close(deformable(images), plain(images), rtol=1e-4, atol=1e-5)
    assert deformable(images).shape == (2, 4, 36, 44)
    deformable.train()
    masks = torch.randint(0, 4, (2, 36, 44))
    masks[:, :4] = 255
    loss = deformable(images, masks)["loss_seg"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in deformable.parameters())


@pytest.mark.parametrize(("name", "kwargs"), [
    ("compact_fcn", {}),
    # trainable BN, and a frozen stem and res2 whose BN stays in eval mode in train()
    ("deeplab_resnet18", {"backbone_kwargs": {"base_channels": 8, "norm_layer": "batch_norm",
                                              "frozen_stages": 1}, "head_channels": 8}),
])
def test_predict_runs_in_eval_mode_and_restores_the_modes(name, kwargs):
    """predict on a training model used to update BatchNorm's running statistics and
    normalise with the batch's, giving train-mode predictions."""
    model = models.create(name, 3, **kwargs).train()
    images = torch.randn(2, 3, 32, 32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    predicted = model.predict(images)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(predicted, model.eval()(images).argmax(1))


def test_predict_and_all_ignored_targets():
    model = CompactFCN(3, widths=(4, 4), strides=(2, 1), deform_layers=1).eval()
    images = torch.rand(1, 3, 16, 16)
    assert model.predict(images).shape == (1, 16, 16)
    loss = model(images, torch.full((1, 16, 16), 255))["loss_seg"]
    assert loss.item() == 0.0 and loss.requires_grad


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"deform_layers": 4}, r"deform_layers must be in \[0, 3\]"),
    ({"strides": (2, 2, 2), "deform_layers": 1}, "deformable layers need stride 1"),
    ({"strides": (2, 3, 1)}, "strides must be 1 or 2"),
    ({"strides": (2, 1)}, "of one length"),
    ({"skip_layer": 2}, r"skip_layer must be None or in \[0, 1\]"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CompactFCN(3, **{"widths": (4, 4, 4), "strides": (2, 1, 1), **kwargs})


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"deform_layers": 1.5}, TypeError, "deform_layers must be an int, got 1.5"),
    ({"deform_layers": True}, TypeError, "deform_layers must be an int, got True"),  # taken as 1
    # built, then failed at forward: "weight of size [0, 3, 3, 3]"
    ({"widths": (0, 4, 4)}, ValueError, "widths[0] must be > 0, got 0"),
    ({"widths": (4, 4.0, 4)}, TypeError, "widths[1] must be an int, got 4.0"),
    ({"strides": (2, True, 1)}, TypeError, "strides[1] must be an int, got True"),
    ({"skip_layer": 1, "decoder_width": 0}, ValueError, "decoder_width must be > 0, got 0"),
    ({"decoder_width": 2.5}, TypeError, "decoder_width must be an int, got 2.5"),
    ({"skip_layer": True}, TypeError, "skip_layer must be an int, got True"),
    ({"skip_layer": 0.0}, TypeError, "skip_layer must be an int, got 0.0"),
    # "out_channels must be divisible by groups"
    ({"num_classes": 2.5}, TypeError, "num_classes must be an int, got 2.5"),
    ({"num_classes": 0}, ValueError, "num_classes must be > 0, got 0"),
    ({"offset_groups": 0, "deform_layers": 0}, ValueError, "offset_groups must be > 0, got 0"),
])
def test_int_options_are_refused_at_construction_naming_them(kwargs, error, message):
    kwargs = {"num_classes": 3, "widths": (4, 4, 4), "strides": (2, 1, 1), **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        CompactFCN(**kwargs)


def test_registered_for_segmentation():
    assert models.model_task("compact_fcn") == "segmentation"
    assert isinstance(models.create("compact_fcn", 3), nn.Module)


@pytest.mark.parametrize(("strides", "skip_layer"), [
    ((2, 2, 2), None), ((2, 2, 2), 0), ((2, 2, 2), 1), ((2, 2, 2, 1), 0), ((2, 2, 2, 1), 1),
    ((2, 2, 2, 2), 0), ((2, 1, 2, 2), 0), ((2, 2, 1, 1, 1), 0), ((2, 2, 1, 1, 1), 2),
])
def test_receptive_field_is_the_widest_window_over_a_row(strides, skip_layer):
    """The widest input window with a gradient to a classifier input, over every position
    of a row (windows differ from one position to the next when the decoder upsamples).
    At a ratio of 4 or more between the top and the skip layer's strides it used to count
    one top-map step too few (27 for 31 with strides (2, 2, 2), skip_layer 0); a skip at the
    top layer's stride once counted an upsampling that is the identity there. Positive
    weights and images keep every ReLU open, so the whole window shows."""
    model = CompactFCN(2, widths=(2,) * len(strides), strides=strides, deform_layers=0,
                       skip_layer=skip_layer, decoder_width=2).double().eval()
    with torch.no_grad():
        for param in model.parameters():
            param.abs_()
    images = torch.rand(1, 3, 8, 128, dtype=torch.float64, requires_grad=True)
    features = model.forward_features(images)
    widths = []
    for column in range(features.shape[-1]):
        grad, = torch.autograd.grad(features[0, :, 0, column].sum(), images, retain_graph=True)
        columns = grad[0].abs().sum((0, 1)).nonzero()
        widths.append(int(columns.max() - columns.min() + 1))
    assert max(widths) == model.receptive_field
