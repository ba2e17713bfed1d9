"""ops.arguments: the argument checks shared by the ops, modules and models."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from deformconv.ops.arguments import (
    boolean,
    count,
    counts,
    finite_float,
    integer,
    pair,
    rois_to_tensor,
)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), np.bool_(False)])
def test_boolean_takes_python_and_numpy_bools(value) -> None:
    result = boolean(value, "flag")
    assert type(result) is bool and result == bool(value)


@pytest.mark.parametrize("value", ["no", "False", 1, 0, None, 1.0, np.int64(1)])
def test_boolean_refuses_anything_else_naming_the_argument(value) -> None:
    """bool('no') is True: a truthy string or number turned an option on."""
    with pytest.raises(TypeError, match=re.escape(
            f"flag must be a bool (True or False), got {value!r}")):
        boolean(value, "flag")


@pytest.mark.parametrize("value", [True, False, np.bool_(True), torch.tensor(True)])
def test_finite_float_refuses_bools_naming_the_argument(value) -> None:
    """True was taken as 1.0 (spatial_scale=True, gamma=True, offset_lr_mult=True)."""
    with pytest.raises(TypeError, match=re.escape(
            f"scale must be a finite number > 0, not a bool, got {value!r}")):
        finite_float(value, "scale", positive=True)


@pytest.mark.parametrize("value", [0.5, 2, np.float32(0.5), np.float64(0.5), np.int64(2),
                                   torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64)])
def test_finite_float_takes_numbers(value) -> None:
    result = finite_float(value, "scale", positive=True)
    assert type(result) is float and result == float(value)


def test_rois_list_promotes_dtypes_as_torch_cat() -> None:
    """Mixed dtypes were cast to rois[0]'s: float64 boxes after float16 ones lost digits."""
    coarse = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float16)
    fine = torch.tensor([[1000.1, 2.3, 1100.7, 4.9]], dtype=torch.float64)
    rois = rois_to_tensor([coarse, fine])
    assert rois.dtype == torch.float64 == torch.result_type(coarse, fine)
    assert torch.equal(rois[1], torch.tensor([1.0, 1000.1, 2.3, 1100.7, 4.9],
                                             dtype=torch.float64))
    assert torch.equal(rois[0], torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64))


def test_rois_list_on_several_devices_names_the_box_tensor() -> None:
    boxes = torch.zeros(1, 4)
    with pytest.raises(RuntimeError, match=re.escape(
            "rois[1] is on meta but rois[0] is on cpu; all boxes must be on one device")):
        rois_to_tensor([boxes, boxes.to("meta")])


def test_counts_gives_python_ints_of_any_iterable() -> None:
    assert counts([1, np.int64(2)], "sizes") == (1, 2)
    assert counts(np.array([0, 3]), "sizes", minimum=0, length=2) == (0, 3)
    assert counts((), "sizes") == ()


@pytest.mark.parametrize(("values", "kwargs", "error", "message"), [
    ((1, 2.5), {}, TypeError, "sizes[1] must be an int, got 2.5"),
    ((True,), {}, TypeError, "sizes[0] must be an int, got True"),
    ((0,), {}, ValueError, "sizes[0] must be > 0, got 0"),
    ((-1,), {"minimum": 0}, ValueError, "sizes[0] must be >= 0, got -1"),
    (2, {}, TypeError, "sizes must be a sequence of ints > 0, got 2"),
    ("12", {"hint": "one per layer"}, TypeError,
     "sizes must be a sequence of ints > 0, one per layer, got '12'"),
    ((1, 1), {"length": 3}, ValueError, "sizes must be a sequence of 3 ints > 0, got (1, 1)"),
])
def test_counts_refuses_naming_the_argument_and_the_entry(values, kwargs, error,
                                                          message) -> None:
    with pytest.raises(error, match=re.escape(message)):
        counts(values, "sizes", **kwargs)


@pytest.mark.parametrize(("value", "message"), [
    (2**63, "stride must be an int64, from -2**63 to 2**63 - 1, got 9223372036854775808"),
    ((1, 2**63), "stride[1] must be an int64, from -2**63 to 2**63 - 1, got "
                 "9223372036854775808"),
    ([-(2**63) - 1, 1], "stride[0] must be an int64, from -2**63 to 2**63 - 1, got "
                        "-9223372036854775809"),
    (np.uint64(2**63), "stride must be an int64, from -2**63 to 2**63 - 1, got "),
])
def test_pair_refuses_an_int_beyond_int64_naming_the_entry(value, message) -> None:
    """stride=2**63 raised "Expected a value of type 'int' for argument 'stride_h' but
    instead found type 'int'" from the op's schema, and an overflow inside conv2d from the
    module; padding=2**63 a wrong offset shape of (1, 18, 18446744073709551619, ...)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        pair(value, "stride")


def test_pair_takes_the_int64_extremes() -> None:
    assert pair(2**63 - 1, "stride") == (2**63 - 1, 2**63 - 1)
    assert pair((-(2**63), np.int64(2**63 - 1)), "padding") == (-(2**63), 2**63 - 1)
    assert all(type(v) is int for v in pair(np.int64(3), "stride"))


@pytest.mark.parametrize("name", ["stride", "padding", "dilation"])
def test_the_op_and_the_module_refuse_an_int_beyond_int64(name) -> None:
    from deformconv.nn import DeformConv2d
    from deformconv.ops import deform_conv2d

    x, weight = torch.zeros(1, 2, 5, 5), torch.zeros(3, 2, 3, 3)
    message = f"{name} must be an int64, from -2**63 to 2**63 - 1, got {2**63}"
    with pytest.raises(ValueError, match=re.escape(message)):
        deform_conv2d(x, torch.zeros(1, 18, 1, 1), weight, **{name: 2**63})
    with pytest.raises(ValueError, match=re.escape(message)):
        DeformConv2d(2, 3, 3, **{name: 2**63})
    assert deform_conv2d(x, torch.zeros(1, 18, 1, 1), weight,
                         stride=2**63 - 1).shape == (1, 3, 1, 1)


@pytest.mark.parametrize("check", [integer, count])
def test_single_ints_beyond_int64_are_refused_naming_the_argument(check) -> None:
    with pytest.raises(ValueError, match=re.escape(
            f"sampling_ratio must be an int64, from -2**63 to 2**63 - 1, got {2**63}")):
        check(2**63, "sampling_ratio")
    assert check(2**63 - 1, "sampling_ratio") == 2**63 - 1


def test_roi_pooling_refuses_a_sampling_ratio_beyond_int64() -> None:
    """deform_roi_pool(..., sampling_ratio=2**63) raised the schema's "Expected a value of
    type 'int' for argument 'sampling_ratio' but instead found type 'int'"."""
    from deformconv.ops import deform_roi_pool

    with pytest.raises(ValueError, match=r"^sampling_ratio must be an int64"):
        deform_roi_pool(torch.randn(1, 2, 4, 4), torch.tensor([[0, 0.0, 0.0, 2.0, 2.0]]),
                        None, output_size=2, sampling_ratio=2**63)
