"""Shared pieces of the RoI pooling op tests: awkward RoIs and gradient comparison."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor

# Kinds of RoI drawn by ``make_rois``, so every randomized case mixes them.
ROI_KINDS = ("inside", "partly_outside", "outside", "tiny", "huge", "degenerate")


def make_rois(gen: torch.Generator, k: int, batch: int, height: float, width: float,
              dtype: torch.dtype = torch.float64) -> Tensor:
    """``(k, 5)`` RoIs in image coordinates of a ``height × width`` image, kinds cycled.

    Coordinates are continuous draws (no sample lands exactly on a rule's boundary).
    """
    rows = []
    for i in range(k):
        kind = ROI_KINDS[i % len(ROI_KINDS)]
        u = torch.rand(4, generator=gen, dtype=torch.float64)
        if kind == "inside":
            x1, y1 = u[0] * width * 0.6, u[1] * height * 0.6
            x2, y2 = x1 + 1 + u[2] * width * 0.4, y1 + 1 + u[3] * height * 0.4
        elif kind == "partly_outside":
            x1, y1 = -3 + u[0] * width, -3 + u[1] * height
            x2, y2 = x1 + width * (0.5 + u[2]), y1 + height * (0.5 + u[3])
        elif kind == "outside":
            x1, y1 = width + 2 + u[0] * 3, height + 2 + u[1] * 3
            x2, y2 = x1 + 1 + u[2] * 3, y1 + 1 + u[3] * 3
        elif kind == "tiny":
            x1, y1 = u[0] * width, u[1] * height
            x2, y2 = x1 + 0.2 * u[2], y1 + 0.2 * u[3]
        elif kind == "huge":
            x1, y1 = -2 * width * u[0], -2 * height * u[1]
            x2, y2 = width * (2 + u[2]), height * (2 + u[3])
        else:  # degenerate: x2 < x1 and y2 < y1
            x2, y2 = u[0] * width, u[1] * height
            x1, y1 = x2 + 0.5 + 2 * u[2], y2 + 0.5 + 2 * u[3]
        b = int(torch.randint(batch, (1,), generator=gen))
        rows.append(torch.stack([torch.tensor(float(b), dtype=torch.float64), x1, y1, x2, y2]))
    if not rows:
        return torch.zeros(0, 5, dtype=dtype)
    return torch.stack(rows).to(dtype)


def integer_rois(gen: torch.Generator, k: int, batch: int, low: int, high: int,
                 dtype: torch.dtype) -> Tensor:
    """``(k, 5)`` RoIs with integer corners in ``[low, high)`` (``x1 <= x2``, ``y1 <= y2``).

    Unlike ``make_rois``' draws, many of their samples land exactly on a rule's boundary (the
    map's edges, RoIAlign's ``-1`` and ``H``, PS pooling's ``-0.5`` and ``H - 0.5``), where
    a position rounded differently (another dtype, another order of operations) changes
    the result.
    """
    corners = torch.randint(low, high, (k, 4), generator=gen, dtype=torch.float64)
    xs = corners[:, 0::2].sort(dim=1).values
    ys = corners[:, 1::2].sort(dim=1).values
    index = torch.randint(batch, (k,), generator=gen, dtype=torch.float64)
    return torch.stack([index, xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], dim=1).to(dtype)


def near_half_rois() -> Tensor:
    """float64 (K, 5) RoIs whose corners lie just below a half: cast to float32 they become
    the half, which rounds away from zero (the float64 corner towards zero)."""
    below = 0.5 - 1e-7
    corners = torch.tensor([[10, 40, 60, 70], [3, 2, 50, 33], [-2, 9, 20, 79]],
                           dtype=torch.float64)
    corners = corners + below * corners.sign().where(corners != 0, 1)
    return torch.cat([torch.zeros(3, 1, dtype=torch.float64), corners], dim=1)


@contextmanager
def below_autograd() -> Iterator[None]:
    """Run as a custom op's kernel runs: below autograd, where autograd records nothing.

    The device-agnostic backward kernels must work there (private torch API: the guard
    ``torch.library`` itself puts around a custom op's kernels).
    """
    with torch._C._AutoDispatchBelowAutograd():
        yield


def outputs_and_grads(fn: Callable[..., Tensor], leaves: Sequence[Tensor | None],
                      grad_out: Tensor | None = None) -> tuple[Tensor, list[Tensor | None]]:
    """``fn(*copies)`` and the gradients of ``(out * grad_out).sum()`` w.r.t. each leaf."""
    copies = [None if t is None else t.detach().clone().requires_grad_() for t in leaves]
    out = fn(*copies)
    if grad_out is None:
        grad_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    present = [t for t in copies if t is not None]
    grads = iter(torch.autograd.grad(out, present, grad_out, allow_unused=True)) if out.numel() \
        else iter([torch.zeros_like(t) for t in present])
    result = []
    for t in copies:
        if t is None:
            result.append(None)
            continue
        g = next(grads)
        result.append(torch.zeros_like(t) if g is None else g)
    return out.detach(), result


def assert_close_all(names: Sequence[str], actual: Sequence[Tensor | None],
                     expected: Sequence[Tensor | None], **tol) -> None:
    for name, a, e in zip(names, actual, expected, strict=True):
        if e is None:
            assert a is None, f"{name}: expected None"
            continue
        torch.testing.assert_close(a, e, msg=lambda m, name=name: f"{name}: {m}", **tol)


def assert_right_hand_slope(pool: Callable[[Tensor], Tensor], offset: Tensor,
                            channel: int) -> None:
    """Autograd's d sum(pool(offset)) / d offset[0, channel, 0, 0] equals the one-sided
    (right-hand) finite difference: the rule at the kinks of clamp-then-bilinear sampling."""
    leaf = offset.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(pool(leaf).sum(), leaf)
    step = torch.zeros_like(offset)
    step[0, channel] = 1e-7
    with torch.no_grad():
        right = (pool(offset + step).sum() - pool(offset).sum()) / 1e-7
    torch.testing.assert_close(grad[0, channel, 0, 0], right, rtol=1e-5, atol=1e-5)


Case = tuple[Callable[..., Tensor], list[Tensor | None]]  # (op on the leaves, leaves)
GRAD_NAMES = ("grad input", "grad offset", "grad mask")  # leaves come as (x, offset[, mask])


class RoIOpTester:
    """The tests every RoI pooling op shares (as torchvision's ``RoIOpTester``); a subclass
    ``Test<Op>`` supplies each test's case and adds the op's own tests.

    The generator passed to the hooks is the seeded ``generator`` fixture.
    """

    op_name: str  # the registered op, torch.ops.deformconv.<op_name>

    def many_rois_case(self, generator: torch.Generator) -> Case:
        """Many RoIs of one image, enough work for the kernels to run in parallel."""
        raise NotImplementedError

    def pushed_out_case(self, generator: torch.Generator) -> Case:
        """Offsets that move every sample off the map (float64 leaves)."""
        raise NotImplementedError

    def no_rois_case(self) -> tuple[Case, tuple[int, ...]]:
        """A case with zero RoIs and the output shape it must have."""
        raise NotImplementedError

    def gradcheck_cases(self, generator: torch.Generator) -> dict[str, Case]:
        """Named float64 cases for ``gradcheck``."""
        raise NotImplementedError

    def opcheck_arguments(self, generator: torch.Generator) -> list[tuple]:
        """Argument tuples of the registered op for ``torch.library.opcheck``."""
        raise NotImplementedError

    def compile_case(self, generator: torch.Generator) -> Case:
        """A small head around the op (RoIs as a list of boxes) for ``torch.compile``."""
        raise NotImplementedError

    def float32_case(self, generator: torch.Generator) -> Case:
        """float32 leaves (x, rois[, offset]) and the op applied to them."""
        raise NotImplementedError

    def test_parallel_kernels_match_serial(self, generator, monkeypatch):
        """Many RoIs of one image scatter into the same planes: threads must not race."""
        fn, leaves = self.many_rois_case(generator)
        serial = outputs_and_grads(fn, leaves)
        monkeypatch.setattr("deformconv.ops._numba.threads.SERIAL_WORK", 0)
        parallel = outputs_and_grads(fn, leaves)
        names = ["output", *GRAD_NAMES[:len(leaves)]]
        assert_close_all(names, [parallel[0], *parallel[1]], [serial[0], *serial[1]],
                         rtol=1e-9, atol=1e-9)

    def test_offsets_that_push_every_sample_out(self, generator):
        fn, leaves = self.pushed_out_case(generator)
        out, grads = outputs_and_grads(fn, leaves)
        for name, value in zip(["output", *GRAD_NAMES], [out, *grads], strict=False):
            assert torch.equal(value, torch.zeros_like(value)), name

    def test_no_rois(self):
        (fn, leaves), shape = self.no_rois_case()
        leaves = [t.requires_grad_() for t in leaves]
        out = fn(*leaves)
        assert out.shape == shape
        out.sum().backward()
        assert torch.equal(leaves[0].grad, torch.zeros_like(leaves[0]))
        for leaf in leaves[1:]:
            assert leaf.grad.shape == leaf.shape

    def test_empty_batch(self):
        """No image (N = 0), so no RoI: empty results and gradients, as roi_align gives
        (the Numba deform_roi_pool failed to reshape its 0-image input)."""
        (fn, leaves), shape = self.no_rois_case()
        leaves = [leaves[0][:0].clone(), *leaves[1:]]
        leaves = [t.requires_grad_() for t in leaves]
        out = fn(*leaves)
        assert out.shape == shape
        out.sum().backward()
        assert [leaf.grad.shape for leaf in leaves] == [leaf.shape for leaf in leaves]

    def test_gradcheck(self, generator):
        for name, (fn, leaves) in self.gradcheck_cases(generator).items():
            assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in leaves]), name

    def test_opcheck(self, generator):
        op = getattr(torch.ops.deformconv, self.op_name).default
        for args in self.opcheck_arguments(generator):
            torch.library.opcheck(op, args)

    @pytest.mark.parametrize("dynamic", [None, True])  # True: RoI counts vary by batch
    def test_compile_fullgraph(self, generator, dynamic):
        head, inputs = self.compile_case(generator)
        compiled = torch.compile(head, fullgraph=True, backend="aot_eager", dynamic=dynamic)
        torch.testing.assert_close(compiled(*inputs), head(*inputs))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_low_precision_computes_in_float32(self, dtype, generator):
        fn, leaves = self.float32_case(generator)
        rounded = [t.to(dtype) for t in leaves]
        out = fn(*rounded)
        expected = fn(*(t.float() for t in rounded))
        assert out.dtype == dtype
        torch.testing.assert_close(out, expected.to(dtype))
