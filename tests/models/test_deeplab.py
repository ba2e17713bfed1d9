"""DeepLab's optional DeepLabv3+ decoder: stride-4 scores, loss, twin equivalence."""

from __future__ import annotations

import re

import pytest
import torch

from deformconv import models
from deformconv.nn import offset_state_keys

pytest.importorskip("torchvision")

BACKBONE = {"base_channels": 4, "output_stride": 8, "norm_layer": "batch_norm",
            "frozen_stages": -1, "deform_blocks": (0, 0, 0, 3)}


def _deeplab(deformable: bool = True, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("deeplab_resnet18", 4, deformable=deformable,
                         backbone_kwargs=BACKBONE, head_channels=8, **kwargs)


def test_decoder_scores_at_stride_4_and_logits_at_input_size():
    model = _deeplab(decoder_channels=6).eval()
    images = torch.rand(2, 3, 48, 64)
    assert model.scores(images).shape == (2, 4, 12, 16)
    assert model(images).shape == (2, 4, 48, 64)
    assert _deeplab().eval().scores(images).shape == (2, 4, 6, 8)  # the paper's head
    masks = torch.randint(0, 4, (2, 48, 64))
    model.train()(images, masks)["loss_seg"].backward()
    assert model.decoder["skip"][0].weight.grad.abs().sum() > 0


def test_decoder_twins_start_as_the_same_function():
    deformable, plain = _deeplab(decoder_channels=6), _deeplab(False, decoder_channels=6)
    keys = offset_state_keys(deformable)
    plain.load_state_dict({k: v for k, v in deformable.state_dict().items() if k not in keys})
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deformable.eval()(images), plain.eval()(images))


def test_negative_decoder_width_is_refused():
    with pytest.raises(ValueError, match="decoder_channels must be >= 0, got -1"):
        _deeplab(decoder_channels=-1)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    # each built, then failed at forward in torch's conv (no word of the argument)
    ({"head_channels": 0}, ValueError, "head_channels must be > 0, got 0"),
    ({"head_channels": -3}, ValueError, "head_channels must be > 0, got -3"),
    ({"head_channels": 8.5}, TypeError, "head_channels must be an int, got 8.5"),
    ({"atrous_rate": 0}, ValueError, "atrous_rate must be > 0, got 0"),
    ({"atrous_rate": -2}, ValueError, "atrous_rate must be > 0, got -2"),
    ({"decoder_channels": 2.5}, TypeError, "decoder_channels must be an int, got 2.5"),
])
def test_bad_head_options_are_refused_at_construction(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        models.create("deeplab_resnet18", 4, backbone_kwargs=BACKBONE, **kwargs)


@pytest.mark.parametrize(("num_classes", "error", "message"), [
    (2.5, TypeError, "num_classes must be an int, got 2.5"),  # failed inside nn.Conv2d
    (True, TypeError, "num_classes must be an int, got True"),
    (0, ValueError, "num_classes must be > 0, got 0"),
])
def test_num_classes_is_checked_by_the_class_too(num_classes, error, message):
    backbone = models.ResNet((1, 1, 1, 1), 0, base_channels=4, output_stride=16)
    with pytest.raises(error, match=re.escape(message)):
        models.DeepLab(backbone, num_classes, head_channels=8)
