"""DeformConv2d and DeformConv2dExternal: plain-conv equivalence at init, wiring, errors."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deformconv.nn import (
    DeformConv2d,
    DeformConv2dBase,
    DeformConv2dExternal,
    convert_to_deformable,
    offset_state_keys,
)
from deformconv.ops import NaNOffsetError, reference

# (in, out, kernel, stride, padding, dilation, groups, offset_groups): awkward on purpose.
GEOMETRIES = [
    (4, 6, 3, 1, 1, 1, 1, 1),
    (6, 4, (3, 2), (2, 1), (1, 0), (2, 1), 2, 3),
    (4, 4, 3, 2, 2, 2, 4, 2),
]


def _plain_twin(conv: DeformConv2dBase) -> nn.Conv2d:
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, conv.bias is not None)
    plain.load_state_dict({k: v for k, v in conv.state_dict().items() if "offset" not in k})
    return plain


class TestDeformConv2d:
    @pytest.mark.parametrize("geometry", GEOMETRIES)
    def test_equals_conv2d_at_init(self, geometry):
        cin, cout, k, s, p, d, g, og = geometry
        conv = DeformConv2d(cin, cout, k, s, p, d, g, offset_groups=og)
        x = torch.randn(2, cin, 9, 8)
        torch.testing.assert_close(conv(x), _plain_twin(conv)(x), rtol=1e-5, atol=1e-5)

    def test_modulated_starts_with_half_the_samples(self):
        conv = DeformConv2d(4, 6, 3, padding=1, offset_groups=2, modulated=True)
        x = torch.randn(2, 4, 7, 7)
        no_bias = F.conv2d(x, conv.weight, None, padding=1)
        torch.testing.assert_close(conv(x), 0.5 * no_bias + conv.bias[:, None, None],
                                   rtol=1e-5, atol=1e-5)
        assert conv.conv_offset.out_channels == 3 * 2 * 9

    def test_uses_predicted_offset_and_mask(self):
        conv = DeformConv2d(4, 3, 3, padding=1, offset_groups=2, modulated=True)
        nn.init.normal_(conv.conv_offset.weight, std=0.3)
        nn.init.normal_(conv.conv_offset.bias, std=0.3)
        x = torch.randn(1, 4, 6, 5)
        predicted = conv.conv_offset(x)
        expected = reference.deform_conv2d(x, predicted[:, :36], conv.weight, conv.bias,
                                           (1, 1), (1, 1), (1, 1), predicted[:, 36:].sigmoid())
        torch.testing.assert_close(conv(x), expected, rtol=1e-4, atol=1e-5)

    @pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
    def test_result_and_gradients_keep_the_input_layout(self, layout):
        """What the module returns, and the input gradient, have the input's layout (as
        with nn.Conv2d), and all values are those of the NCHW computation (float64)."""
        conv = DeformConv2d(4, 3, 3, padding=1, offset_groups=2, modulated=True).double()
        nn.init.normal_(conv.conv_offset.weight, std=0.3)
        x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
        grad = torch.randn(2, 3, 6, 5, dtype=torch.float64)
        params = [conv.weight, conv.bias, conv.conv_offset.weight, conv.conv_offset.bias]

        def run(images: torch.Tensor, forward) -> tuple[torch.Tensor, ...]:
            images = images.clone().requires_grad_()
            out = forward(images)
            return (out, *torch.autograd.grad(out, [images, *params], grad))

        def plain(images: torch.Tensor) -> torch.Tensor:
            predicted = conv.conv_offset(images)
            return conv.deform_conv(images, predicted[:, :36], predicted[:, 36:].sigmoid())

        actual = run(x.contiguous(memory_format=layout), conv)
        expected = run(x, plain)
        assert actual[0].is_contiguous(memory_format=layout)
        assert actual[1].is_contiguous(memory_format=layout)
        for a, e in zip(actual, expected, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)

    def test_offset_branch_gets_gradient_at_zero_init(self):
        conv = DeformConv2d(4, 4, 3, padding=1, offset_groups=2)
        conv(torch.randn(2, 4, 8, 8)).square().sum().backward()
        assert conv.conv_offset.weight.grad.abs().sum() > 0
        assert conv.conv_offset.bias.grad.abs().sum() > 0

    def test_reset_parameters_keeps_offsets_zero(self):
        conv = DeformConv2d(4, 4, 3, offset_groups=2)
        nn.init.normal_(conv.conv_offset.weight)
        conv.reset_parameters()
        assert not conv.conv_offset.weight.any() and not conv.conv_offset.bias.any()

    def test_repr_shows_configuration(self):
        text = repr(DeformConv2d(8, 4, 3, stride=2, bias=False, offset_groups=4, modulated=True))
        assert "stride=(2, 2)" in text and "bias=False" in text
        assert "offset_groups=4" in text and "modulated=True" in text
        assert "dilation" not in text  # defaults stay out

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"offset_groups": 3}, "offset_groups"),
            ({"offset_groups": 0}, "offset_groups must be > 0"),
            ({"groups": 3}, "divisible by groups"),
            ({"kernel_size": 0}, r"kernel_size must be > 0, got \(0, 0\)"),
            ({"kernel_size": (3, 0)}, r"kernel_size must be > 0, got \(3, 0\)"),
            ({"stride": 0}, r"stride must be > 0, got \(0, 0\)"),
            ({"dilation": (1, -1)}, r"dilation must be > 0, got \(1, -1\)"),
            ({"padding": -1}, r"padding must be >= 0, got \(-1, -1\)"),
        ],
    )
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            DeformConv2d(4, 6, **{"kernel_size": 3, **kwargs})

    @pytest.mark.parametrize(("args", "kwargs", "message"), [
        ((4.0, 8, 3), {}, "in_channels must be an int, got 4.0"),
        ((True, 8, 3), {}, "in_channels must be an int, got True"),
        ((4, 8.0, 3), {}, "out_channels must be an int, got 8.0"),
        ((4, 8, 3), {"groups": 2.0}, "groups must be an int, got 2.0"),
        ((4, 8, 3), {"offset_groups": 2.0}, "offset_groups must be an int, got 2.0"),
    ])
    def test_channel_counts_must_be_ints(self, args, kwargs, message):
        """A float failed inside torch.empty ('must be tuple of ints, but got float')
        without the argument's name; True passed as 1."""
        with pytest.raises(TypeError, match=re.escape(message)):
            DeformConv2d(*args, **kwargs)

    @pytest.mark.parametrize(("kwargs", "name", "value"), [
        ({"modulated": "no"}, "modulated", "'no'"),
        ({"modulated": 1}, "modulated", "1"),
        ({"bias": "False"}, "bias", "'False'"),
        ({"bias": None}, "bias", "None"),
    ])
    def test_bool_options_must_be_bools(self, kwargs, name, value):
        """modulated='no' built a modulated layer (bool('no') is True)."""
        with pytest.raises(TypeError, match=re.escape(
                f"{name} must be a bool (True or False), got {value}")):
            DeformConv2d(4, 6, 3, **kwargs)

    def test_external_bias_must_be_a_bool(self):
        with pytest.raises(TypeError, match=re.escape(
                "bias must be a bool (True or False), got 'no'")):
            DeformConv2dExternal(4, 6, 3, bias="no")

    def test_numpy_bools_are_taken(self):
        conv = DeformConv2d(4, 6, 3, bias=np.bool_(False), modulated=np.bool_(True))
        assert conv.bias is None and conv.modulated is True

    @pytest.mark.parametrize("shape", [(2, 5, 7, 7), (5, 7, 7), (7, 7), (1, 1, 4, 7, 7)])
    @pytest.mark.parametrize("external", [False, True])
    def test_wrong_input_is_reported_against_the_layer(self, shape, external):
        conv = (DeformConv2dExternal if external else DeformConv2d)(4, 6, 3, padding=1)
        message = (f"input must have shape (N, 4, H, W) or, unbatched, (4, H, W) for "
                   f"in_channels=4, got {shape}")
        args = (torch.zeros(1, 18, 7, 7),) if external else ()
        with pytest.raises(ValueError, match=re.escape(message)):
            conv(torch.randn(shape), *args)

    @pytest.mark.parametrize("modulated", [False, True])
    def test_an_unbatched_input_runs_as_a_batch_of_one_as_in_conv2d(self, modulated):
        """A (C, H, W) input, which nn.Conv2d takes, was refused: a converted model broke
        on it."""
        torch.manual_seed(0)
        conv = DeformConv2d(4, 6, 3, padding=1, stride=2, modulated=modulated)
        nn.init.normal_(conv.conv_offset.weight, std=0.1)
        x = torch.randn(4, 7, 9)
        out = conv(x)
        assert out.shape == (6, 4, 5)
        torch.testing.assert_close(out, conv(x[None])[0])
        plain = nn.Conv2d(4, 6, 3, padding=1)
        model = nn.Sequential(plain)
        expected = plain(x)
        assert convert_to_deformable(model) == ["0"]
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)

    def test_an_unbatched_input_to_the_external_module_takes_unbatched_offset_and_mask(self):
        torch.manual_seed(0)
        conv = DeformConv2dExternal(4, 6, 3, padding=1)
        x, offset, mask = torch.randn(4, 5, 6), torch.randn(18, 5, 6), torch.rand(9, 5, 6)
        out = conv(x, offset, mask)
        assert out.shape == (6, 5, 6)
        torch.testing.assert_close(out, conv(x[None], offset[None], mask[None])[0])
        torch.testing.assert_close(conv(x, offset), conv(x[None], offset[None])[0])

    @pytest.mark.parametrize("name", ["offset", "mask"])
    def test_a_batched_offset_or_mask_with_an_unbatched_input_is_refused(self, name):
        conv = DeformConv2dExternal(4, 6, 3, padding=1)
        tensors = {"offset": torch.zeros(18, 5, 5), "mask": torch.ones(9, 5, 5)}
        tensors[name] = tensors[name][None]
        shape = tuple(tensors[name].shape)
        message = (f"{name} must be 3-D (unbatched) for an unbatched input of shape "
                   f"(4, 5, 5), got shape {shape}")
        with pytest.raises(ValueError, match=re.escape(message)):
            conv(torch.randn(4, 5, 5), **tensors)


    @pytest.mark.parametrize("modulated", [False, True])
    def test_an_input_smaller_than_the_kernel_gets_the_ops_message(self, modulated):
        """The offset conv ran first and failed with torch's message about its own
        kernel ('Kernel size can't be greater than actual input size')."""
        conv = DeformConv2d(4, 6, 3, padding=1, dilation=(3, 1), modulated=modulated)
        message = ("input of spatial size (4, 5) is too small for kernel (3, 3) with padding "
                   "(1, 1) and dilation (3, 1): output size would be (0, 5)")
        with pytest.raises(ValueError, match=re.escape(message)):
            conv(torch.randn(2, 4, 4, 5))
        assert conv(torch.randn(2, 4, 5, 5)).shape == (2, 6, 1, 5)  # the smallest that fits


    @pytest.mark.parametrize(("kernel", "dilation", "padding"), [
        (3, 1, (1, 1)), (3, 2, (2, 2)), ((3, 5), (2, 1), (2, 2)), (4, 2, (3, 3)), (1, 1, (0, 0)),
    ])
    def test_same_padding_keeps_the_size_as_in_conv2d(self, kernel, dilation, padding):
        """padding='same' was refused ('padding must be an int or a pair of ints')."""
        conv = DeformConv2d(4, 6, kernel, padding="same", dilation=dilation)
        assert conv.padding == padding
        plain = nn.Conv2d(4, 6, kernel, padding="same", dilation=dilation)
        plain.load_state_dict({k: v for k, v in conv.state_dict().items() if "offset" not in k})
        x = torch.randn(2, 4, 9, 8)
        assert conv(x).shape == (2, 6, 9, 8)
        torch.testing.assert_close(conv(x), plain(x), rtol=1e-5, atol=1e-5)

    def test_valid_padding_is_zero(self):
        conv = DeformConv2d(4, 6, 3, stride=2, padding="valid")
        assert conv.padding == (0, 0) and conv(torch.randn(1, 4, 9, 8)).shape == (1, 6, 4, 3)

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"padding": "same", "stride": 2}, "padding='same' needs stride 1, as in nn.Conv2d, "
         "got stride=(2, 2)"),
        ({"padding": "same", "kernel_size": (3, 2)}, "padding='same' with kernel_size=(3, 2) "
         "and dilation=(1, 1) pads one side more than the other"),
        ({"padding": "full"}, "padding must be an int, a pair of ints, 'same' or 'valid', "
         "got 'full'"),
    ])
    def test_string_paddings_it_cannot_give_are_refused(self, kwargs, message):
        with pytest.raises(ValueError, match=re.escape(message)):
            DeformConv2d(4, 6, **{"kernel_size": 3, **kwargs})

    @pytest.mark.parametrize("cls", [DeformConv2d, DeformConv2dExternal])
    @pytest.mark.parametrize(("factory", "expected"), [
        ({"device": "meta"}, (torch.device("meta"), torch.float32)),
        ({"dtype": torch.float64}, (torch.device("cpu"), torch.float64)),
    ])
    def test_device_and_dtype_factory_kwargs(self, cls, factory, expected):
        """As nn.Conv2d's: they were refused ('unexpected keyword argument')."""
        conv = cls(4, 6, 3, padding=1, **factory)
        assert {(p.device, p.dtype) for p in conv.parameters()} == {expected}
        if factory.get("dtype") is torch.float64:  # built so, it still starts as the conv
            x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
            plain = F.conv2d(x, conv.weight, conv.bias, padding=1)
            out = conv(x) if cls is DeformConv2d else conv(x, x.new_zeros(1, 18, 5, 5))
            torch.testing.assert_close(out, plain)

    def test_a_conv2d_state_dict_loads_as_the_docstring_says(self):
        """The docstring claimed a Conv2d state_dict loads; DeformConv2d needs strict=False,
        with exactly its offset branch missing, and then computes the conv."""
        conv = nn.Conv2d(4, 6, 3, padding=1)
        deform = DeformConv2d(4, 6, 3, padding=1, offset_groups=2)
        with pytest.raises(RuntimeError, match=r"Missing key.*conv_offset\.weight"):
            deform.load_state_dict(conv.state_dict())
        missing = deform.load_state_dict(conv.state_dict(), strict=False).missing_keys
        assert set(missing) == offset_state_keys(deform)
        x = torch.randn(2, 4, 7, 6)
        torch.testing.assert_close(deform(x), conv(x), rtol=1e-5, atol=1e-5)
        DeformConv2d(4, 6, 3, padding=1, offset_groups=2).load_state_dict(deform.state_dict())
        DeformConv2dExternal(4, 6, 3, padding=1).load_state_dict(conv.state_dict())


    @pytest.mark.parametrize("modulated", [False, True])
    def test_an_mmcv_pack_state_dict_loads_strictly(self, modulated):
        """README's porting table: mmcv's DeformConv2dPack (no bias) and
        ModulatedDeformConv2dPack keep weight, bias and conv_offset.* with our shapes (3
        groups of 2x3 kernel points here)."""
        offsets = (3 if modulated else 2) * 3 * 6
        state = {"weight": torch.randn(8, 3, 2, 3), "conv_offset.weight": torch.randn(
            offsets, 6, 2, 3), "conv_offset.bias": torch.randn(offsets)}
        if modulated:
            state["bias"] = torch.randn(8)
        conv = DeformConv2d(6, 8, (2, 3), padding=1, groups=2, bias=modulated, offset_groups=3,
                            modulated=modulated)
        conv.load_state_dict(state)


class TestDeformConv2dExternal:
    def test_matches_reference_with_given_offset_and_mask(self):
        conv = DeformConv2dExternal(6, 4, (3, 2), stride=(2, 1), padding=(1, 0), groups=2)
        x = torch.randn(2, 6, 7, 6)
        offset = torch.randn(2, 2 * 3 * 6, 4, 5)
        mask = torch.rand(2, 3 * 6, 4, 5)
        expected = reference.deform_conv2d(x, offset, conv.weight, conv.bias, (2, 1), (1, 0),
                                           (1, 1), mask)
        torch.testing.assert_close(conv(x, offset, mask), expected, rtol=1e-4, atol=1e-5)

    def test_loads_conv2d_state_dict(self):
        plain = nn.Conv2d(4, 6, 3, padding=1)
        conv = DeformConv2dExternal(4, 6, 3, padding=1)
        conv.load_state_dict(plain.state_dict())
        x = torch.randn(1, 4, 5, 5)
        torch.testing.assert_close(conv(x, torch.zeros(1, 18, 5, 5)), plain(x),
                                   rtol=1e-5, atol=1e-5)

    def test_is_torchvisions_deform_conv2d_with_its_state_dict(self):
        """README's porting table: same arguments, state dict, forward and layouts."""
        torchvision = pytest.importorskip("torchvision")
        theirs = torchvision.ops.DeformConv2d(4, 6, 3, 1, 1, 1, 2, True)
        ours = DeformConv2dExternal(4, 6, 3, 1, 1, 1, 2, True)
        ours.load_state_dict(theirs.state_dict())
        x, offset, mask = (torch.randn(1, 4, 7, 7), torch.randn(1, 2 * 2 * 9, 7, 7),
                           torch.rand(1, 2 * 9, 7, 7))
        torch.testing.assert_close(ours(x, offset, mask), theirs(x, offset, mask),
                                   rtol=1e-5, atol=1e-5)

    def test_wrong_offset_shape_is_reported(self):
        conv = DeformConv2dExternal(4, 6, 3, padding=1)
        with pytest.raises(ValueError, match="offset"):
            conv(torch.randn(1, 4, 5, 5), torch.zeros(1, 17, 5, 5))

    @pytest.mark.parametrize(("groups", "channels"), [(1, 8), (2, 4)])
    def test_wrong_input_channels_are_refused(self, groups, channels):
        """The op reads the grouping from the input, so an 8-channel input to a 4-channel
        layer used to run as groups=2 (and 4 channels into an 8-channel groups=2 layer as
        groups=1)."""
        in_channels = 4 if groups == 1 else 8
        conv = DeformConv2dExternal(in_channels, 8, 3, padding=1, groups=groups)
        message = (f"input must have shape (N, {in_channels}, H, W) or, unbatched, "
                   f"({in_channels}, H, W) for in_channels={in_channels}, got "
                   f"(2, {channels}, 6, 6)")
        with pytest.raises(ValueError, match=re.escape(message)):
            conv(torch.randn(2, channels, 6, 6), torch.zeros(2, 18, 6, 6))

    def test_nan_offsets_given_are_refused(self):
        conv = DeformConv2dExternal(4, 6, 3, padding=1)
        offset = torch.zeros(1, 18, 5, 5)
        offset[0, 3, 2, 2] = math.nan
        with pytest.raises(NaNOffsetError, match="offset contains 1 NaN value"):
            conv(torch.randn(1, 4, 5, 5), offset)


@pytest.mark.parametrize("bad", [math.inf, math.nan])
@pytest.mark.parametrize("modulated", [False, True])
def test_a_non_finite_input_gives_nan_where_its_offsets_are_nan(bad, modulated):
    """Its offset branch turns a NaN or inf pixel into NaN offsets (0 * inf), which the op
    refuses: the module used to raise 'offset contains NaN', naming an argument its user
    never passed. Now the outputs those offsets move are NaN, as a conv propagates a
    non-finite input, and a loop that skips non-finite losses goes on."""
    torch.manual_seed(0)
    conv = DeformConv2d(4, 4, 3, padding=1, modulated=modulated)
    x = torch.randn(2, 4, 8, 8)
    x[1, 0, 3, 3] = bad
    x.requires_grad_()
    out = conv(x)
    nan_pixels = out.isnan().any(1)
    assert nan_pixels[1, 2:5, 2:5].all() and not nan_pixels[0].any()
    assert not nan_pixels[1, 6:].any() and not nan_pixels[1, :, 6:].any()
    out[0].sum().backward()
    assert torch.isfinite(x.grad[0]).all()


def test_compiles_whole_graph() -> None:
    conv = DeformConv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(torch.compile(conv, fullgraph=True, backend="eager")(x), conv(x))


@pytest.mark.parametrize("modulated", [False, True])
def test_fx_symbolic_trace_records_the_op_as_one_call(modulated: bool) -> None:
    """FX tracing (create_feature_extractor, timm's feature graphs) cannot run the op's
    argument checks on proxies: the op must appear as a leaf call, and the traced module
    compute what the module does."""
    torch.manual_seed(0)
    module = DeformConv2d(4, 6, 3, padding=1, modulated=modulated).eval()
    nn.init.normal_(module.conv_offset.weight, std=0.1)  # offsets that move the samples
    traced = torch.fx.symbolic_trace(module)
    calls = [node.target.__name__ for node in traced.graph.nodes if node.op == "call_function"]
    assert "deform_conv2d" in calls
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(traced(x), module(x), rtol=0, atol=0)
    external = DeformConv2dExternal(4, 6, 3, padding=1)
    offset = torch.randn(2, 18, 9, 9)
    torch.testing.assert_close(torch.fx.symbolic_trace(external)(x, offset), external(x, offset),
                               rtol=0, atol=0)


def test_torchvision_feature_extractor_on_a_converted_resnet() -> None:
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.feature_extraction import create_feature_extractor

    from deformconv.nn import convert_to_deformable

    model = torchvision.models.resnet18(weights=None).eval()
    convert_to_deformable(model, "layer4")
    features = create_feature_extractor(model, {"layer4": "c5"})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        expected = model.layer4(model.layer3(model.layer2(model.layer1(stem))))
        torch.testing.assert_close(features(x)["c5"], expected, rtol=0, atol=0)


def test_forward_mode_ad_is_refused_for_inputs_and_parameters():
    """torch.func.jvp gave a tangent without the deformable conv's part (zero from it)."""
    conv = DeformConv2d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 5, 5)
    message = r"forward-mode AD .* is not supported by deform_conv2d: input carries"
    with pytest.raises(NotImplementedError, match=message):
        torch.func.jvp(conv, (x,), (torch.ones_like(x),))
    params = dict(conv.named_parameters())
    tangents = {name: torch.ones_like(p) for name, p in params.items()}
    # the offset conv's parameters give the offset a tangent, the first that carries one
    with pytest.raises(NotImplementedError, match="deform_conv2d: offset carries"):
        torch.func.jvp(lambda p: torch.func.functional_call(conv, p, (x,)), (params,),
                       (tangents,))


@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (4, 8, 8)])
def test_an_input_of_another_dtype_is_refused_naming_weight_and_input(modulated, shape):
    """The offset conv ran first: torch's 'Input type (double) and bias type (float) should
    be the same' named no argument."""
    conv = DeformConv2d(4, 4, 3, modulated=modulated)
    message = ("weight has dtype torch.float32 but input has torch.float64; all tensors must "
               "share one dtype")
    with pytest.raises(TypeError, match=re.escape(message)):
        conv(torch.randn(shape, dtype=torch.float64))


def test_an_input_on_another_device_is_refused_naming_weight_and_input():
    with pytest.raises(RuntimeError, match=re.escape("weight is on cpu but input is on meta")):
        DeformConv2d(4, 4, 3)(torch.randn(1, 4, 8, 8, device="meta"))


@pytest.mark.parametrize("modulated", [False, True])
def test_low_precision_inputs_under_autocast_and_low_precision_modules_still_run(modulated):
    """Under autocast float32, float16 and bfloat16 mix (the op runs in float32); a module
    converted to a low-precision dtype takes input of that dtype; float64 does not mix."""
    conv = DeformConv2d(4, 4, 3, modulated=modulated)
    x = torch.randn(1, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x.bfloat16()).dtype == torch.float32
        assert conv.half()(x).dtype == torch.float32
        with pytest.raises(TypeError, match=re.escape("but input has torch.float64")):
            conv(x.double())
    for dtype in (torch.float16, torch.bfloat16):
        assert conv.to(dtype)(x.to(dtype)).dtype == dtype
