"""The registration of the ops: what every call of ``torch.ops.deformconv.*`` meets."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import deformconv.ops  # noqa: F401  (registers torch.ops.deformconv)

from .forward_ad_helpers import FORWARD_AD_APIS, tangent_of


def _calls() -> dict[str, tuple[object, list[object]]]:
    """Each registered op with valid arguments, the backward ops' built from a forward."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    ops = torch.ops.deformconv
    x, rois = randn(1, 4, 6, 6), torch.tensor([[0.0, 0.5, 1.0, 4.0, 4.5]], dtype=torch.float64)
    conv = [x[:, :2], randn(1, 18, 4, 4), randn(3, 2, 3, 3), randn(3), randn(1, 9, 4, 4),
            1, 1, 0, 0, 1, 1]
    roi = [x, rois, randn(1, 2, 2, 2), randn(1, 1, 2, 2), 2, 2, 1.0, 0, 0.1, True]
    psroi = [x, rois, randn(1, 2, 2, 2), 1.0, 1, 2, 2, 2, 2, 0.1]
    _, count = ops.deform_psroi_pool(*psroi)
    return {
        "deform_conv2d": (ops.deform_conv2d, conv),
        "deform_conv2d_backward": (ops.deform_conv2d_backward,
                                   [randn(1, 3, 4, 4), *conv[:3], conv[4], *conv[5:],
                                    True, True, True]),
        "deform_roi_pool": (ops.deform_roi_pool, roi),
        "deform_roi_pool_backward": (ops.deform_roi_pool_backward,
                                     [randn(1, 4, 2, 2), *roi, True, True]),
        "deform_psroi_pool": (ops.deform_psroi_pool, psroi),
        "deform_psroi_pool_backward": (ops.deform_psroi_pool_backward,
                                       [randn(1, 1, 2, 2), *psroi[:3], count, 1.0, 2, 2, 2, 0.1,
                                        True, True]),
    }


CALLS = _calls()


def _tensor_arguments() -> list[tuple[str, int, str]]:
    """(op, index, argument name) of every tensor argument of every call in ``CALLS``."""
    return [(name, index, argument.name)
            for name, (op, args) in CALLS.items()
            for index, (argument, value) in enumerate(
                zip(op.default._schema.arguments, args, strict=True))
            if isinstance(value, torch.Tensor)]


@pytest.mark.parametrize("api", FORWARD_AD_APIS)
@pytest.mark.parametrize(("name", "index", "argument"), _tensor_arguments())
def test_registered_ops_refuse_forward_mode_ad(api, name, index, argument):
    """Called directly, a registered op dropped a forward tangent silently (no tangent
    under forward_ad, zeros under torch.func.jvp); only the public functions refused it."""
    op, args = CALLS[name]

    def first_result(*a: object) -> torch.Tensor:
        out = op(*a)
        return out[0] if isinstance(out, tuple) else out

    with pytest.raises(NotImplementedError, match=re.escape(
            f"forward-mode AD (torch.func.jvp, jacfwd / torch.autograd.forward_ad) is not "
            f"supported by {name}: {argument} carries a forward tangent; use reverse mode")):
        tangent_of(api, first_result, args, index)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_registered_ops_run_under_a_dual_level_without_tangents(name):
    """The check refuses tangents, not the dual level: arguments without one pass."""
    op, args = CALLS[name]
    expected = op(*args)
    with torch.autograd.forward_ad.dual_level():
        got = op(*args)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


BACKWARD_OPS = sorted(name for name in CALLS if name.endswith("_backward"))
TOOLING = {
    "flop counter (a TorchDispatchMode)": lambda: FlopCounterMode(display=False),
    "saved-tensor hooks (activation offloading)": torch.autograd.graph.save_on_cpu,
    "inference mode": torch.inference_mode,
}


@pytest.mark.parametrize("tool", sorted(TOOLING))
@pytest.mark.parametrize("name", BACKWARD_OPS)
def test_torch_backend_backwards_run_under_torch_tooling(monkeypatch, name, tool):
    """The torch backend's backwards differentiated with torch.func.vjp, whose wrapped
    tensors broke under a dispatch mode ("Cannot access storage of TensorWrapper") and
    refused saved-tensor hooks: FLOP counting or offloading failed the backward. Under
    inference mode (arguments made there too) autograd may save no inference tensor."""
    monkeypatch.setenv("DEFORMCONV_BACKEND", "torch")
    op, args = CALLS[name]
    expected = op(*args)
    with TOOLING[tool]():
        got = op(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", BACKWARD_OPS)
def test_torch_backend_backwards_keep_their_graph_out_of_saved_tensor_hooks(monkeypatch, name):
    """The backward's recomputed forward lives only inside the backward: a user's hooks
    (save_on_cpu, offloading to the CPU) packed its tensors too, 14 of them for one op."""
    monkeypatch.setenv("DEFORMCONV_BACKEND", "torch")
    op, args = CALLS[name]
    packed = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        packed.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        op(*args)
    assert packed == []


@pytest.mark.parametrize("name", BACKWARD_OPS)
def test_torch_backend_backwards_pass_the_schema_check(monkeypatch, name):
    """opcheck's test_schema failed on every torch-backend backward (see above)."""
    monkeypatch.setenv("DEFORMCONV_BACKEND", "torch")
    op, args = CALLS[name]
    torch.library.opcheck(op, args, test_utils="test_schema")


def test_torch_backend_trains_under_the_flop_counter(monkeypatch):
    """A user's FLOP count of a deformable layer's forward and backward: the backward ran,
    with the gradients of a run without the counter."""
    from deformconv.ops import deform_conv2d

    monkeypatch.setenv("DEFORMCONV_BACKEND", "torch")
    op_args = CALLS["deform_conv2d"][1]
    x, offset, weight = (t.clone().requires_grad_() for t in op_args[:3])
    deform_conv2d(x, offset, weight).sum().backward()
    expected = x.grad, offset.grad, weight.grad
    x.grad = offset.grad = weight.grad = None
    with FlopCounterMode(display=False):
        deform_conv2d(x, offset, weight).sum().backward()
    torch.testing.assert_close((x.grad, offset.grad, weight.grad), expected, rtol=0, atol=0)


@pytest.mark.parametrize("groups", [1, 2])
def test_flop_counter_counts_deform_conv2d_as_its_conv(groups):
    """FlopCounterMode counted a deformable layer as 0 FLOPs: a deformable network's count
    left its deformable convs out. Forward and backward count as conv2d's (its matrix
    products; the sampling, like a conv's im2col, is not counted)."""
    from deformconv.ops import deform_conv2d

    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    weight = torch.randn(6, 4 // groups, 3, 3, requires_grad=True)
    offset = torch.zeros(2, 18, 5, 5, requires_grad=True)
    counts = []
    for conv in (lambda: deform_conv2d(x, offset, weight, stride=2, padding=1),
                 lambda: torch.nn.functional.conv2d(x, weight, stride=2, padding=1,
                                                    groups=groups)):
        with FlopCounterMode(display=False) as counter:
            out = conv()
        forward = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            out.sum().backward()
        counts.append((forward, counter.get_total_flops()))
    forward, backward = counts[0]
    assert forward == counts[1][0] == 2 * 2 * 6 * 25 * (4 // groups) * 9
    assert backward == 2 * forward  # the columns' and the weight's gradients
    if groups == 1:  # torch counts a grouped conv's input gradient as ungrouped
        assert backward == counts[1][1]


@pytest.mark.parametrize("counter_first", [False, True])
def test_flop_counts_whichever_is_imported_first(counter_first):
    """The formulas are registered when the FLOP counter is imported (importing it with the
    ops would import triton, 0.2 s of every start): before or after ``deformconv``, and
    with a name bound by ``from ... import``."""
    imports = ["import deformconv.ops",
               "from torch.utils.flop_counter import FlopCounterMode"]
    script = "\n".join([*(imports[::-1] if counter_first else imports), """
import sys, torch
from deformconv.ops import deform_conv2d
x, weight = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
with FlopCounterMode(display=False) as counter:
    deform_conv2d(x, torch.zeros(1, 18, 3, 3), weight)
print(counter.get_total_flops(), "triton" in sys.modules)
"""])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(2 * 3 * 9 * 2 * 9), "True"]


def test_flop_counts_survive_a_probe_and_reloads():
    """The import hook was used up by an ``importlib.util.find_spec`` probe (the real import
    then counted 0 FLOPs), a reload of the counter dropped the formulas, and one of
    ``deformconv.ops`` (IPython's autoreload) failed: 'duplicate registrations'."""
    script = """
import importlib, importlib.util, torch
import deformconv.ops as ops
assert importlib.util.find_spec("torch.utils.flop_counter") is not None
import torch.utils.flop_counter as counter

def flops():
    x, weight = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    with counter.FlopCounterMode(display=False) as mode:
        ops.deform_conv2d(x, torch.zeros(1, 18, 3, 3), weight)
    return mode.get_total_flops()

counts = [flops()]
importlib.reload(ops)
counts.append(flops())
importlib.reload(counter)
counts.append(flops())
print(*counts)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(2 * 3 * 9 * 2 * 9)] * 3
