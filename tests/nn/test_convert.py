"""convert_to_deformable: chosen convs swapped in place, weights kept, output unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deformconv.nn import (
    DeformConv2d,
    OffsetBranchMixin,
    convert_to_deformable,
    offset_lr_multipliers,
)
from deformconv.ops import deform_conv2d

torchvision = pytest.importorskip("torchvision")


def _resnet18() -> nn.Module:
    return torchvision.models.resnet18(weights=None, num_classes=5).eval()


def test_converts_chosen_convs_keeping_weights_and_output():
    model = _resnet18()
    x = torch.randn(1, 3, 64, 64)
    expected = model(x)
    chosen = ["layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1"]
    before = {name: model.get_submodule(name) for name in chosen}
    assert convert_to_deformable(model, ["layer4.0.*", "layer4.1.conv1"], offset_groups=4) == chosen
    for name, old in before.items():
        new = model.get_submodule(name)
        assert isinstance(new, DeformConv2d) and new.weight is old.weight
        assert (new.stride, new.padding, new.dilation) == (old.stride, old.padding, old.dilation)
        assert new.conv_offset.stride == old.stride
        assert new.offset_groups == 4 and not new.training
    assert model.layer4[0].conv1.stride == (2, 2)
    assert isinstance(model.layer4[1].conv2, nn.Conv2d)
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_default_converts_every_3x3_conv_once():
    model = _resnet18()
    count = sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules())
    assert len(convert_to_deformable(model)) == count == 16
    # The new offset convs are 3×3 too, but never converted themselves.
    assert convert_to_deformable(model) == []


def test_predicate_selector_and_modulated():
    model = _resnet18()
    names = convert_to_deformable(model, lambda name, conv: conv.in_channels == 64,
                                  modulated=True)
    assert names == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2",
                     "layer2.0.conv1"]
    assert all(model.get_submodule(n).modulated for n in names)


def test_stem_7x7_only_when_asked():
    model = _resnet18()
    assert convert_to_deformable(model, ["conv1"]) == ["conv1"]
    assert model.conv1.kernel_size == (7, 7) and model.conv1.padding == (3, 3)


@pytest.mark.parametrize(("offset_groups", "error", "message"), [
    (0, ValueError, r"^offset_groups must be > 0, got 0$"),  # was a ZeroDivisionError
    (2.0, TypeError, r"^offset_groups must be an int, got 2\.0$"),
])
def test_offset_groups_must_be_a_positive_int(offset_groups, error, message):
    model = _resnet18()
    with pytest.raises(error, match=message):
        convert_to_deformable(model, "layer4", offset_groups=offset_groups)
    assert not any(isinstance(m, DeformConv2d) for m in model.modules())


def test_modulated_must_be_a_bool():
    """modulated='no' made every converted conv modulated, halving its output."""
    model = _resnet18()
    with pytest.raises(TypeError, match=r"modulated must be a bool \(True or False\), got .no.$"):
        convert_to_deformable(model, "layer4", modulated="no")
    assert not any(isinstance(m, DeformConv2d) for m in model.modules())


def test_offset_groups_must_divide_channels():
    model = _resnet18()
    with pytest.raises(ValueError, match=r"offset_groups \(3\).*'layer1.0.conv1'"):
        convert_to_deformable(model, "layer1.*", offset_groups=3)
    assert not any(isinstance(m, DeformConv2d) for m in model.modules())  # nothing half-done


def test_a_module_name_takes_the_convs_inside_it():
    model = _resnet18()
    assert convert_to_deformable(model, "layer4") == [
        "layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]
    assert convert_to_deformable(model, "layer4") == []  # a second call finds them converted


def test_a_pattern_that_matches_no_module_is_an_error():
    model = _resnet18()
    with pytest.raises(ValueError, match=r"\['layr4\.\*'\] match no module.*'layer1\.0\.conv1'"):
        convert_to_deformable(model, ["layer1.0.conv1", "layr4.*"])
    assert not any(isinstance(m, DeformConv2d) for m in model.modules())  # nothing half-done


@pytest.mark.parametrize("include", [None, "*", lambda name, conv: True])
def test_a_model_that_is_a_conv_itself_is_an_error(include):
    """The root conv (name "") was skipped: [] came back and the conv stayed plain."""
    conv = nn.Conv2d(4, 4, 3, padding=1)
    with pytest.raises(ValueError, match=r"model is itself a conv \(Conv2d with kernel_size=\(3, "
                       r"3\)\).*cannot replace the model itself.*nn\.Sequential\(conv\)"):
        convert_to_deformable(conv, include)
    seq = nn.Sequential(conv)  # what the error suggests
    assert convert_to_deformable(seq, include) == ["0"]
    assert isinstance(seq[0], DeformConv2d) and seq[0].weight is conv.weight


@pytest.mark.parametrize("include", [0, 3.5, ["layer4", 1], (p for p in ["layer4"])])
def test_include_of_another_kind_is_an_error_naming_it(include):
    """include=0 raised Python's "'int' object is not iterable"; a generator converted
    nothing (emptied by the pattern check)."""
    model = _resnet18()
    with pytest.raises(TypeError, match=r"^include must be a glob pattern \(a str\), a list of "
                       r"them or a predicate \(name, conv\) -> bool, got "):
        convert_to_deformable(model, include)
    assert not any(isinstance(m, DeformConv2d) for m in model.modules())


@pytest.mark.parametrize(("mult", "error"), [(-1.0, ValueError), (float("nan"), ValueError),
                                             (True, TypeError)])
def test_offset_lr_mult_is_checked_when_no_conv_is_chosen(mult, error):
    """It was checked by DeformConv2d only: with nothing converted a bad value passed."""
    model = _resnet18()
    with pytest.raises(error, match=r"^offset_lr_mult must be a finite number >= 0"):
        convert_to_deformable(model, lambda name, conv: False, offset_lr_mult=mult)


class _StandardizedConv2d(nn.Conv2d):
    """A conv that standardises its weight in forward, as timm's StdConv2d does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-6)
        return self._conv_forward(x, w, self.bias)


def test_convs_a_deformable_conv_cannot_reproduce_are_left_with_a_warning():
    model = nn.Sequential(
        _StandardizedConv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.utils.parametrizations.weight_norm(nn.Conv2d(4, 4, 3, padding=1)),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 4, 1),  # 1×1: never converted, no warning
    ).eval()
    hooked = nn.Conv2d(4, 4, 3, padding=1)
    hooked.register_forward_hook(lambda module, args, out: out * 2)
    model.append(hooked)
    x = torch.randn(1, 4, 8, 8)
    expected = model(x)
    with pytest.warns(UserWarning, match=r"left 4 selected conv\(s\) as they are.*"
                      r"0: its class _StandardizedConv2d computes its own forward; "
                      r"1: padding_mode='reflect'.*2: it has a parametrization.*"
                      r"5: it has forward hooks") as record:
        assert convert_to_deformable(model) == ["3"]
    assert len(record) == 1
    torch.testing.assert_close(model(x), expected)
    assert isinstance(model[0], _StandardizedConv2d) and not isinstance(model[5], DeformConv2d)


@pytest.mark.parametrize(("register", "kind"), [
    (lambda c, f: c.register_full_backward_hook(lambda *a: f.append(1)), "backward"),
    (lambda c, f: c.register_full_backward_pre_hook(lambda *a: f.append(1)), "backward pre"),
    (lambda c, f: c.register_state_dict_pre_hook(lambda *a: f.append(1)), "state_dict pre"),
    (lambda c, f: c.register_state_dict_post_hook(lambda *a: f.append(1)), "state_dict post"),
    (lambda c, f: c.register_load_state_dict_pre_hook(lambda *a: f.append(1)),
     "load_state_dict pre"),
    (lambda c, f: c.register_load_state_dict_post_hook(lambda *a: f.append(1)),
     "load_state_dict post"),
])
def test_a_conv_with_hooks_of_any_kind_is_left_with_a_warning_naming_them(register, kind):
    """Only forward (pre) hooks counted: a conv with a backward or state-dict hook was
    converted without a word, and its hook never ran again."""
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1))
    fired: list[int] = []
    register(model[0], fired)
    with pytest.warns(UserWarning, match=rf"0: it has {kind} hooks \("):
        assert convert_to_deformable(model) == []
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    model(x).sum().backward()
    model.load_state_dict(model.state_dict())
    assert type(model[0]) is nn.Conv2d and fired


def test_the_warning_names_every_kind_of_hook_a_conv_has():
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1))
    model[0].register_forward_pre_hook(lambda *a: None)
    model[0].register_full_backward_hook(lambda *a: None)
    with pytest.warns(UserWarning, match=r"0: it has forward pre, backward hooks \("):
        assert convert_to_deformable(model) == []


@pytest.mark.parametrize(("kernel", "dilation"), [(3, 1), (3, 2), (5, 1), ((3, 5), 1)])
def test_same_and_valid_string_paddings_are_converted(kernel, dilation):
    model = nn.Sequential(nn.Conv2d(4, 6, kernel, padding="same", dilation=dilation),
                          nn.Conv2d(6, 4, kernel, padding="valid")).eval()
    x = torch.randn(2, 4, 11, 9)
    expected = model(x)
    assert convert_to_deformable(model, lambda name, conv: True) == ["0", "1"]
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_same_padding_of_an_even_kernel_is_left_with_a_warning():
    model = nn.Sequential(nn.Conv2d(4, 4, 2, padding="same"))
    with pytest.warns(UserWarning, match="padding='same' pads one side more"):
        assert convert_to_deformable(model, "0") == []


def test_an_uninitialised_lazy_conv_is_left_with_a_warning_saying_what_to_do():
    """Its initialising pre-hook made it 'a parametrization or forward hooks (weight_norm,
    spectral_norm, ...)'; once initialised it converts as any conv."""
    model = nn.Sequential(nn.LazyConv2d(8, 3, padding=1))
    with pytest.warns(UserWarning, match=r"0: it is an uninitialised lazy module: run one "
                                         r"forward pass first to initialise it"):
        assert convert_to_deformable(model) == []
    x = torch.randn(1, 2, 6, 6)
    expected = model(x)
    assert convert_to_deformable(model) == ["0"]
    torch.testing.assert_close(model(x), expected)


def test_a_shared_conv_becomes_one_shared_deformable_layer_at_each_name() -> None:
    """named_modules() lists a shared module once: the conv was converted under its first
    name only (the other use stayed plain), and a pattern naming the second use matched
    nothing."""
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    x = torch.randn(1, 4, 6, 6)
    expected = model(x)
    assert convert_to_deformable(model) == ["0", "2"]
    assert isinstance(model[0], DeformConv2d) and model[2] is model[0]
    torch.testing.assert_close(model(x), expected)
    second = nn.Sequential(conv, nn.ReLU(), conv)
    assert convert_to_deformable(second, "2") == ["2"]
    assert isinstance(second[2], DeformConv2d) and second[2].weight is conv.weight


class _UserDeformable(nn.Module, OffsetBranchMixin):
    """A deformable layer written with the public mixin, its offset conv a plain Conv2d."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4, 3, 3))
        self.offset_lr_mult = 0.1
        self.offset_branch = nn.Conv2d(4, 18, 3, padding=1)
        self.zero_init_offsets()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, self.offset_branch(x), self.weight, padding=1)


def test_the_offset_branch_of_a_users_offset_branch_mixin_layer_is_never_converted():
    """Only DeformConv2dBase layers were skipped: a user's offset conv became a DeformConv2d
    (with its own offset branch, trained at multiplier 1.0 instead of the layer's 0.1)."""
    model = nn.Sequential(_UserDeformable(), nn.Sequential(_UserDeformable()),
                          nn.Conv2d(4, 4, 3, padding=1))
    assert convert_to_deformable(model) == ["2"]
    assert type(model[0].offset_branch) is nn.Conv2d
    assert type(model[1][0].offset_branch) is nn.Conv2d
    assert set(offset_lr_multipliers(model).values()) == {0.1, 1.0}
    assert offset_lr_multipliers(model)["0.offset_branch.weight"] == 0.1


def test_conversion_draws_no_random_numbers_and_keeps_dtype_and_flags():
    """The twin drew a Kaiming init for a weight it then discarded: a seeded plain and
    converted model initialised every module built after the conversion differently."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(8, 8, 3, bias=False), nn.Conv2d(8, 8, 3)).double()
    plain[1].weight.requires_grad_(False)
    after_plain = torch.randn(4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, bias=False), nn.Conv2d(8, 8, 3)).double()
    model[1].weight.requires_grad_(False)
    assert convert_to_deformable(model) == ["0", "1"]
    assert torch.equal(torch.randn(4), after_plain)
    assert model[0].bias is None and not model[1].weight.requires_grad
    for layer in model:
        assert layer.weight.dtype == torch.float64 and layer.weight.device.type == "cpu"
        branch = layer.conv_offset
        assert branch.weight.dtype == torch.float64 and branch.weight.device.type == "cpu"
        assert branch.weight.requires_grad and not branch.weight.any() and not branch.bias.any()
    x = torch.randn(1, 8, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(model(x), plain(x))
