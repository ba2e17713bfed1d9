"""DeformRoIPool: RoIAlign at init, offsets and mask wired into deform_roi_pool, gradients."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from deformconv.nn import DeformRoIPool
from deformconv.ops import deform_roi_pool

torchvision = pytest.importorskip("torchvision")

ROIS = torch.tensor([[0, 2.0, 3.0, 40.0, 30.0], [1, 10.0, 0.0, 31.0, 47.0],
                     [1, 0.0, 0.0, 63.0, 63.0]])


def _input() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, requires_grad=True)


def _boxes_list() -> list[torch.Tensor]:
    return [ROIS[ROIS[:, 0] == i, 1:] for i in range(2)]


class TestDeformRoIPool:
    def test_equals_roi_align_at_init(self):
        pool = DeformRoIPool(3, (3, 2), spatial_scale=0.25, sampling_ratio=2)
        x = _input()
        expected = torchvision.ops.roi_align(x, ROIS, (3, 2), 0.25, 2, aligned=True)
        torch.testing.assert_close(pool(x, ROIS), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pool(x, _boxes_list()), expected, rtol=1e-5, atol=1e-6)

    def test_modulated_starts_at_half(self):
        pool = DeformRoIPool(3, 2, spatial_scale=0.25, sampling_ratio=2, modulated=True)
        x = _input()
        expected = torchvision.ops.roi_align(x, ROIS, 2, 0.25, 2, aligned=True)
        torch.testing.assert_close(pool(x, ROIS), 0.5 * expected, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("modulated", [False, True])
    def test_predicted_offset_and_mask_reach_the_op(self, modulated):
        pool = DeformRoIPool(3, 2, spatial_scale=0.25, gamma=0.2, hidden_dims=(5,),
                             modulated=modulated)
        for layer in pool.offset_fc:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.2)
                nn.init.normal_(layer.bias, std=0.2)
        x = _input()
        first = deform_roi_pool(x, ROIS, output_size=2, spatial_scale=0.25)
        predicted = pool.offset_fc(first.flatten(1))
        offset = predicted[:, :8].reshape(-1, 2, 2, 2)
        mask = predicted[:, 8:].reshape(-1, 1, 2, 2).sigmoid() if modulated else None
        expected = deform_roi_pool(x, ROIS, offset, output_size=2, spatial_scale=0.25,
                                   gamma=0.2, mask=mask)
        torch.testing.assert_close(pool(x, ROIS), expected)

    def test_hidden_layers_and_zero_init_last(self):
        pool = DeformRoIPool(4, 7, hidden_dims=(16, 8), modulated=True)
        widths = [(m.in_features, m.out_features) for m in pool.offset_fc
                  if isinstance(m, nn.Linear)]
        assert widths == [(4 * 49, 16), (16, 8), (8, 3 * 49)]
        assert not pool.offset_fc[-1].weight.any() and pool.offset_fc[0].weight.any()

    def test_offset_branch_gets_gradient_at_zero_init(self):
        pool = DeformRoIPool(3, 2, spatial_scale=0.25)
        x = _input()
        pool(x, ROIS).square().sum().backward()
        assert pool.offset_fc[-1].weight.grad.abs().sum() > 0
        assert x.grad.abs().sum() > 0

    def test_no_rois(self):
        pool = DeformRoIPool(3, 2, spatial_scale=0.25)
        assert pool(_input(), torch.zeros(0, 5)).shape == (0, 3, 2, 2)

    def test_repr(self):
        text = repr(DeformRoIPool(256, 7, 1 / 16, 2, hidden_dims=(1024, 1024), modulated=True))
        assert "256, output_size=(7, 7), spatial_scale=0.0625, sampling_ratio=2" in text
        assert "hidden_dims=(1024, 1024)" in text and "modulated=True" in text
        assert "offset_lr_mult=0.01" in text

    def test_bad_input_channels(self):
        with pytest.raises(ValueError, match=r"input must be \(N, 4, H, W\)"):
            DeformRoIPool(4, 2)(torch.randn(1, 3, 8, 8), ROIS[:1])

    @pytest.mark.parametrize(("kwargs", "match"), [
        ({"spatial_scale": 0.0}, "spatial_scale"),
        ({"spatial_scale": float("nan")}, "spatial_scale must be > 0, got nan"),
        ({"spatial_scale": float("inf")}, "spatial_scale must be > 0, got inf"),
        ({"gamma": float("nan")}, "gamma must be a finite number, got nan"),
        ({"output_size": 0}, "output_size"),
    ])
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            DeformRoIPool(**{"in_channels": 3, "output_size": 2, **kwargs})

    @pytest.mark.parametrize(("kwargs", "error", "message"), [
        # a negative width failed in torch.empty ('negative dimension -1'); 0 passed
        ({"hidden_dims": (-1,)}, ValueError, "hidden_dims[0] must be > 0, got -1"),
        ({"hidden_dims": (16, 0)}, ValueError, "hidden_dims[1] must be > 0, got 0"),
        ({"hidden_dims": (16.0,)}, TypeError, "hidden_dims[0] must be an int, got 16.0"),
        # an int raised Python's "'int' object is not iterable"
        ({"hidden_dims": 1024}, TypeError, "hidden_dims must be a sequence of ints > 0, one "
         "width per hidden layer (e.g. (1024,) or (1024, 1024)), got 1024"),
        ({"hidden_dims": "16"}, TypeError, "hidden_dims must be a sequence of ints > 0"),
        ({"sampling_ratio": 1.5}, TypeError, "sampling_ratio must be an int, got 1.5"),
        ({"in_channels": 3.0}, TypeError, "in_channels must be an int, got 3.0"),
        ({"in_channels": True}, TypeError, "in_channels must be an int, got True"),
    ])
    def test_integer_arguments_must_be_ints_in_range(self, kwargs, error, message):
        with pytest.raises(error, match=re.escape(message)):
            DeformRoIPool(**{"in_channels": 3, "output_size": 2, **kwargs})

    @pytest.mark.parametrize(("name", "message"), [
        ("gamma", "gamma must be a finite number, not a bool, got True"),
        ("spatial_scale", "spatial_scale must be a number > 0, not a bool, got True"),
    ])
    def test_number_arguments_refuse_bools(self, name, message):
        """gamma=True and spatial_scale=True were taken as 1.0."""
        with pytest.raises(TypeError, match=re.escape(message)):
            DeformRoIPool(3, 2, **{name: True})

    @pytest.mark.parametrize(("name", "value"), [("aligned", "False"), ("modulated", "no"),
                                                 ("modulated", 1)])
    def test_bool_options_must_be_bools(self, name, value):
        """aligned='False' pooled aligned, modulated='no' predicted a mask."""
        with pytest.raises(TypeError, match=re.escape(
                f"{name} must be a bool (True or False), got {value!r}")):
            DeformRoIPool(3, 2, **{name: value})

    @pytest.mark.parametrize(("factory", "expected"), [
        ({"device": "meta"}, (torch.device("meta"), torch.float32)),
        ({"dtype": torch.float64}, (torch.device("cpu"), torch.float64)),
    ])
    def test_device_and_dtype_factory_kwargs(self, factory, expected):
        pool = DeformRoIPool(3, 2, hidden_dims=(8,), modulated=True, **factory)
        assert {(p.device, p.dtype) for p in pool.parameters()} == {expected}

    def test_adaptive_sampling_ratio_is_accepted(self):
        assert DeformRoIPool(3, 2, sampling_ratio=0).sampling_ratio == 0


def test_non_finite_features_make_their_rois_nan_instead_of_an_error() -> None:
    """A NaN pixel inside RoI 0 makes its predicted offsets NaN, which the op refuses with
    an error about 'offset'; the module now gives that RoI NaN and the others as usual."""
    pool = DeformRoIPool(3, 2, spatial_scale=0.25, sampling_ratio=2)
    x = torch.randn(2, 3, 16, 16)
    x[0, 1, 4, 4] = float("nan")  # inside RoI 0 only (image 0)
    out = pool(x, ROIS)
    assert out[0].isnan().all() and torch.isfinite(out[1:]).all()
    clean = x.clone()
    clean[0, 1, 4, 4] = 0.0
    torch.testing.assert_close(out[1:], pool(clean, ROIS)[1:])


def test_a_negative_sampling_ratio_is_adaptive_as_in_the_op() -> None:
    """torchvision's RoIAlign default, -1, was refused by the module but not by the op."""
    x, rois = torch.randn(1, 4, 8, 8), torch.tensor([[0, 1, 1, 6, 6.0]])
    torch.testing.assert_close(DeformRoIPool(4, 3, sampling_ratio=-1)(x, rois),
                               DeformRoIPool(4, 3, sampling_ratio=0)(x, rois), rtol=0, atol=0)


def test_forward_mode_ad_is_refused():
    """torch.func.jvp gave a zero tangent."""
    pool = DeformRoIPool(4, 2, spatial_scale=0.25)
    x = torch.randn(2, 4, 16, 16)
    with pytest.raises(NotImplementedError, match=r"forward-mode AD .* is not supported by "
                       r"deform_roi_pool: input carries a forward tangent"):
        torch.func.jvp(lambda x: pool(x, ROIS), (x,), (torch.ones_like(x),))


def test_an_input_of_another_dtype_is_refused_naming_it_and_the_fc_weight():
    """The first fc failed with torch's 'mat1 and mat2 must have the same dtype'."""
    pool = DeformRoIPool(4, 2)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 6.0]])
    message = ("offset_fc.0.weight has dtype torch.float32 but input has torch.float64; all "
               "tensors must share one dtype")
    with pytest.raises(TypeError, match=re.escape(message)):
        pool(torch.randn(1, 4, 8, 8, dtype=torch.float64), rois)
    x = torch.randn(1, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the ops run in float32 there
        assert pool(x.bfloat16(), rois).dtype == torch.float32
    assert pool.half()(x.half(), rois).dtype == torch.float16
