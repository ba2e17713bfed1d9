"""Modules that predict their own offsets run where tensors have no values to read (meta
device, fake tensors, ``torch.func.vmap``), as ``nn.Conv2d`` does; shared convs' offset keys."""

from __future__ import annotations

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from deformconv.nn import (
    DeformConv2d,
    DeformPSRoIPool,
    DeformRoIPool,
    convert_to_deformable,
    offset_state_keys,
)


def test_meta_modules_infer_shapes() -> None:
    """Their NaN-offset check read a value: 'Tensor.item() cannot be called on meta tensors'."""
    x = torch.randn(2, 4, 8, 8, device="meta")
    rois = torch.zeros(3, 5, device="meta")
    assert DeformConv2d(4, 6, 3, device="meta")(x).shape == (2, 6, 6, 6)
    assert DeformConv2d(4, 6, 3, device="meta", modulated=True)(x).shape == (2, 6, 6, 6)
    assert DeformRoIPool(4, 2, device="meta")(x, rois).shape == (3, 4, 2, 2)
    position_sensitive = DeformPSRoIPool(8, 2, 2, 1.0, device="meta")  # 2 × 2² channels
    assert position_sensitive(torch.randn(2, 8, 8, 8, device="meta"), rois).shape == (3, 2, 2, 2)


def test_fake_tensors_infer_shapes() -> None:
    with FakeTensorMode():
        out = DeformConv2d(3, 4, 3)(torch.randn(1, 3, 8, 8))
    assert out.shape == (1, 4, 6, 6)


def test_vmap_equals_a_loop_over_samples() -> None:
    torch.manual_seed(0)
    conv = DeformConv2d(3, 4, 3, padding=1)
    nn.init.normal_(conv.conv_offset.weight, std=0.3)
    images = torch.randn(4, 1, 3, 8, 8)
    with torch.no_grad():
        batched = torch.func.vmap(conv)(images)
        looped = torch.stack([conv(image) for image in images])
    torch.testing.assert_close(batched, looped)


def test_offset_state_keys_name_a_shared_conv_under_each_of_its_names() -> None:
    """named_modules() lists a shared module once: its second name's keys were left out,
    while a plain checkpoint loaded with strict=False misses both."""
    def build() -> nn.Sequential:
        model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1))
        model.add_module("again", model[0])
        return model

    plain, deformable = build(), build()
    convert_to_deformable(deformable)
    missing = deformable.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert set(missing) == offset_state_keys(deformable)
    assert {key.split(".")[0] for key in missing} == {"0", "again"}
