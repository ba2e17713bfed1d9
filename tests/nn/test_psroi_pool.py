"""PSRoIPool / DeformPSRoIPool: plain at init, offsets from the offset conv, part-grid mask."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from deformconv.nn import DeformPSRoIPool, PSRoIPool
from deformconv.ops import deform_psroi_pool

ROIS = torch.tensor([[0, 3.0, 5.0, 40.0, 33.0], [1, 16.0, 0.0, 47.0, 60.0]])
SCALE = 0.25
K = 3  # group size


def _scores(output_dim: int) -> torch.Tensor:
    return torch.randn(2, output_dim * K * K, 16, 16, requires_grad=True)


def _plain(x: torch.Tensor, output_dim: int, offset=None, **kwargs) -> torch.Tensor:
    return deform_psroi_pool(x, ROIS, offset, spatial_scale=SCALE, output_dim=output_dim,
                             group_size=K, pooled_size=K, sample_per_part=2, **kwargs)


class TestPSRoIPool:
    def test_equals_op_without_offsets(self):
        x = _scores(4)
        pool = PSRoIPool(4, K, SCALE, sample_per_part=2)
        torch.testing.assert_close(pool(x, ROIS), _plain(x, 4))
        boxes = [ROIS[:1, 1:], ROIS[1:, 1:]]
        torch.testing.assert_close(pool(x, boxes, features=torch.randn(1)), _plain(x, 4))

    def test_bad_input_channels(self):
        with pytest.raises(ValueError, match=r"output_dim\*group_size² = 36"):
            PSRoIPool(4, K, SCALE)(torch.randn(1, 35, 8, 8), ROIS[:1])

    @pytest.mark.parametrize(("args", "kwargs", "message"), [
        ((2, 2.5, 1.0), {}, "group_size must be an int, got 2.5"),  # failed only in forward
        ((2.0, 2, 1.0), {}, "output_dim must be an int, got 2.0"),
        ((2, 2, 1.0), {"pooled_size": True}, "pooled_size must be an int, got True"),
        ((2, 2, 1.0), {"sample_per_part": 2.0}, "sample_per_part must be an int, got 2.0"),
    ])
    def test_integer_arguments_must_be_ints(self, args, kwargs, message):
        with pytest.raises(TypeError, match=re.escape(message)):
            PSRoIPool(*args, **kwargs)


class TestDeformPSRoIPool:
    @pytest.mark.parametrize("offset_classes", [1, 4])
    def test_equals_plain_at_init(self, offset_classes):
        x = _scores(4)
        features = torch.randn(2, 5, 16, 16)
        pool = DeformPSRoIPool(5, 4, K, SCALE, sample_per_part=2,
                               offset_classes=offset_classes)
        assert pool.conv_offset.out_channels == 2 * offset_classes * K * K
        torch.testing.assert_close(pool(x, ROIS, features), _plain(x, 4))

    @pytest.mark.parametrize("offset_classes", [1, 2])
    def test_offsets_come_from_position_sensitive_pooling_of_the_offset_conv(self,
                                                                             offset_classes):
        x = _scores(4)
        features = torch.randn(2, 5, 16, 16)
        pool = DeformPSRoIPool(5, 4, K, SCALE, sample_per_part=2, trans_std=0.3,
                               offset_classes=offset_classes)
        nn.init.normal_(pool.conv_offset.weight, std=0.5)
        nn.init.normal_(pool.conv_offset.bias, std=0.5)
        offset = deform_psroi_pool(pool.conv_offset(features), ROIS, spatial_scale=SCALE,
                                   output_dim=2 * offset_classes, group_size=K, pooled_size=K,
                                   sample_per_part=2)
        expected = _plain(x, 4, offset, part_size=K, trans_std=0.3)
        torch.testing.assert_close(pool(x, ROIS, features), expected)

    def test_modulated_mask_follows_class_and_part_of_each_bin(self):
        # pooled 4, part 2: bins (0, 1) use part 0 and (2, 3) part 1; 2 classes × 2 channels.
        x = torch.randn(2, 4 * 4 * 4, 16, 16)
        pool = DeformPSRoIPool(3, 4, 4, SCALE, sample_per_part=2, part_size=2,
                               offset_classes=2, modulated=True)
        logits = torch.randn(2, 2, 2)  # (class, part_h, part_w)
        with torch.no_grad():
            pool.conv_offset.bias[16:] = logits.flatten()  # constant maps: pooled = bias
        out = pool(x, ROIS, torch.randn(2, 3, 16, 16))
        plain = deform_psroi_pool(x, ROIS, spatial_scale=SCALE, output_dim=4, group_size=4,
                                  pooled_size=4, sample_per_part=2)
        mask = logits.sigmoid()
        for c in range(4):
            for ph in range(4):
                for pw in range(4):
                    expected = plain[:, c, ph, pw] * mask[c // 2, ph // 2, pw // 2]
                    torch.testing.assert_close(out[:, c, ph, pw], expected)

    @pytest.mark.parametrize("size", [7, 22, 23, 26])
    def test_mask_and_offset_of_a_bin_come_from_the_same_part(self, size):
        """The op picks part ph * part // pooled exactly; the mask took floor(ph / pooled *
        part) in float64, which is one part lower at 22, 23 and 26 (bin 15 of 22: 14)."""
        pool = DeformPSRoIPool(1, 1, size, SCALE, part_size=size, modulated=True)
        part_mask = torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size)
        torch.testing.assert_close(pool._bin_mask(part_mask), part_mask, rtol=0, atol=0)

    def test_offset_branch_gets_gradient_at_zero_init(self):
        x = _scores(2)
        pool = DeformPSRoIPool(2 * K * K, 2, K, SCALE, offset_classes=2)
        pool(x, ROIS).square().sum().backward()  # features default to the score maps
        assert pool.conv_offset.weight.grad.abs().sum() > 0

    def test_repr(self):
        text = repr(DeformPSRoIPool(1024, 21, 7, 1 / 16, offset_classes=21, modulated=True))
        assert "1024, output_dim=21, group_size=7, spatial_scale=0.0625" in text
        assert "trans_std=0.1" in text and "offset_classes=21" in text
        assert "modulated=True" in text

    @pytest.mark.parametrize("shape", [(2, 4, 16, 16), (2, 5, 32, 40), (2, 5, 4, 4),
                                       (1, 5, 16, 16), (5, 16, 16)])
    def test_bad_features(self, shape):
        """Another N, H or W than the score maps' used to pass: offsets pooled from a map of
        another size at the scores' spatial_scale, or a batch error that named rois."""
        pool = DeformPSRoIPool(5, 2, K, SCALE)
        message = (r"features must be \(N, 5, H, W\) with input's N, H, W, i.e. "
                   rf"\(2, 5, 16, 16\), got shape \({', '.join(map(str, shape))}\)")
        with pytest.raises(ValueError, match=message):
            pool(_scores(2), ROIS, torch.randn(shape))

    @pytest.mark.parametrize(("kwargs", "match"), [
        ({"spatial_scale": float("nan")}, "spatial_scale must be > 0, got nan"),
        ({"trans_std": float("nan")}, "trans_std must be a finite number, got nan"),
    ])
    def test_non_finite_scalars(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            DeformPSRoIPool(**{"in_channels": 5, "output_dim": 2, "group_size": K,
                               "spatial_scale": SCALE, **kwargs})

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"part_size": 2.0}, "part_size must be an int, got 2.0"),
        ({"offset_classes": 1.0}, "offset_classes must be an int, got 1.0"),
        ({"in_channels": 5.0}, "in_channels must be an int, got 5.0"),
    ])
    def test_integer_arguments_must_be_ints(self, kwargs, message):
        with pytest.raises(TypeError, match=re.escape(message)):
            DeformPSRoIPool(**{"in_channels": 5, "output_dim": 2, "group_size": K,
                               "spatial_scale": SCALE, **kwargs})

    @pytest.mark.parametrize(("factory", "expected"), [
        ({"device": "meta"}, (torch.device("meta"), torch.float32)),
        ({"dtype": torch.float64}, (torch.device("cpu"), torch.float64)),
    ])
    def test_device_and_dtype_factory_kwargs(self, factory, expected):
        pool = DeformPSRoIPool(5, 2, K, SCALE, modulated=True, **factory)
        assert {(p.device, p.dtype) for p in pool.parameters()} == {expected}

    def test_modulated_must_be_a_bool(self):
        with pytest.raises(TypeError, match=re.escape(
                "modulated must be a bool (True or False), got 'no'")):
            DeformPSRoIPool(5, 2, K, SCALE, modulated="no")

    def test_offset_classes_must_divide_output_dim(self):
        with pytest.raises(ValueError, match=r"offset_classes \(3\) must divide output_dim"):
            DeformPSRoIPool(5, 4, K, SCALE, offset_classes=3)


def test_non_finite_features_make_their_rois_nan_instead_of_an_error() -> None:
    """As DeformRoIPool: a NaN feature pixel inside RoI 0 gives the offset of the bin over
    it NaN, which the op refuses; the module now gives that bin NaN and the rest as usual."""
    x = _scores(4).detach()
    features = torch.randn(2, 5, 16, 16)
    pool = DeformPSRoIPool(5, 4, K, SCALE, sample_per_part=2)
    nn.init.normal_(pool.conv_offset.weight, std=0.5)
    features[0, 2, 3, 3] = float("nan")  # inside RoI 0 (image 0) only
    out = pool(x, ROIS, features)
    expected = torch.zeros(K, K, dtype=torch.bool)
    expected[1, 1] = True  # RoI 0 spans 0.75-10 of the 16 px map: (3, 3) is in its middle bin
    assert torch.equal(out[0].isnan().any(0), expected) and out[0, :, 1, 1].isnan().all()
    assert torch.isfinite(out[1]).all()


def test_forward_mode_ad_is_refused():
    """torch.func.jvp gave a zero tangent."""
    pool = DeformPSRoIPool(4, 1, 2, SCALE)
    x = torch.randn(2, 4, 16, 16)
    with pytest.raises(NotImplementedError, match=r"forward-mode AD .* is not supported by "
                       r"deform_psroi_pool: input carries a forward tangent"):
        torch.func.jvp(lambda x: pool(x, ROIS), (x,), (torch.ones_like(x),))


@pytest.mark.parametrize("features", [False, True])
def test_an_input_or_features_of_another_dtype_is_refused_naming_it(features):
    """The offset conv failed with torch's 'Input type (double) and bias type (float)'."""
    pool = DeformPSRoIPool(4, 1, 2, 1.0, modulated=True)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 6.0]])
    x = torch.randn(1, 4, 8, 8)
    args = (x, rois, x.double()) if features else (x.double(), rois)
    name = "features" if features else "input"
    message = (f"conv_offset.weight has dtype torch.float32 but {name} has torch.float64; "
               "all tensors must share one dtype")
    with pytest.raises(TypeError, match=re.escape(message)):
        pool(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the ops run in float32 there
        assert pool(x.bfloat16(), rois).dtype == torch.float32
        assert pool(x, rois, x.bfloat16()).dtype == torch.float32
    assert pool.bfloat16()(x.bfloat16(), rois).dtype == torch.bfloat16


def test_without_features_a_channel_mismatch_names_input_and_in_channels():
    """It blamed features, which the caller never passed."""
    pool = DeformPSRoIPool(16, 1, 2, 1.0)
    message = ("input has 4 channels but the offset conv reads in_channels=16: without "
               "features it reads input, so in_channels must be output_dim*group_size² = 4, "
               "or pass features (N, 16, H, W)")
    with pytest.raises(ValueError, match=re.escape(message)):
        pool(torch.randn(1, 4, 8, 8), torch.tensor([[0, 1.0, 1.0, 6.0, 6.0]]))
    assert pool(torch.randn(1, 4, 8, 8), torch.tensor([[0, 1.0, 1.0, 6.0, 6.0]]),
                torch.randn(1, 16, 8, 8)).shape == (1, 1, 2, 2)
