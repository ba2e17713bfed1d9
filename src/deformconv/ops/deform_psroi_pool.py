"""deform_psroi_pool: deformable position-sensitive RoI pooling, as in the original code.

Dai et al., "Deformable Convolutional Networks", ICCV 2017 (https://arxiv.org/abs/1703.06211),
section 2.2, with the conventions of its DeformablePSROIPooling operator: rounded RoIs,
-0.5 pixel shifts, offsets on a part grid (class-specific when there are several classes),
samples outside the map skipped and the bin averaged over the samples taken
(docs/OPS.md). group_size = 1 gives the deformable RoI pooling of Faster R-CNN heads;
group_size = k gives R-FCN's position-sensitive pooling (Dai et al., NIPS 2016).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _dispatch
from ._checks import (
    check_compute_dtype,
    check_no_nan,
    check_rois_values,
    check_same_dtype_device,
    check_samples_per_side,
    check_tensor,
    compute_dtype,
    float32_under_autocast,
)
from ._library import OpParts, define_op, no_feature_cells, zeroed
from .arguments import count, finite_float, rois_to_tensor
from .geometry import round_half_away

__all__ = ["deform_psroi_pool"]


def _check_forward(input: Tensor, rois: Tensor, offset: Tensor | None, spatial_scale: float,
                   output_dim: int, group_size: int, pooled_size: int, part_size: int,
                   sample_per_part: int, trans_std: float) -> None:
    """Checks of the registered op itself: it can be called directly, and the kernels trust
    these shapes, dtypes and scalars. Values (RoI indices, NaN) are checked here, not while
    tracing."""
    for arg, value in (("output_dim", output_dim), ("group_size", group_size),
                       ("pooled_size", pooled_size), ("part_size", part_size),
                       ("sample_per_part", sample_per_part)):
        count(value, arg)
    check_samples_per_side(sample_per_part, "sample_per_part")
    finite_float(spatial_scale, "spatial_scale", positive=True)
    finite_float(trans_std, "trans_std")
    _check_arguments(input, rois_to_tensor(rois), offset, output_dim, group_size, part_size)
    check_compute_dtype(input, rois)
    check_rois_values(rois, input.shape[0])
    if offset is not None:
        check_no_nan("offset", offset)


def _forward_fake(input: Tensor, rois: Tensor, offset: Tensor | None, spatial_scale: float,
                  output_dim: int, group_size: int, pooled_size: int, *args
                  ) -> tuple[Tensor, Tensor]:
    shape = (rois.shape[0], output_dim, pooled_size, pooled_size)
    return input.new_empty(shape), input.new_empty(shape, dtype=compute_dtype(input.dtype))


def _forward(input: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    """Output and sample count, the count in the compute dtype: float16 holds whole numbers
    exactly up to 2048 only (and not 256² samples at all), bfloat16 up to 256."""
    if no_feature_cells(input):
        return zeroed(_forward_fake(input, *args))
    return _dispatch.run("deform_psroi_pool", "forward", (input, *args), in_compute_dtype=(1,))


def _check_backward(grad_out: Tensor, input: Tensor, rois: Tensor, offset: Tensor | None,
                    count: Tensor, spatial_scale: float, group_size: int, part_size: int,
                    sample_per_part: int, trans_std: float, *flags: bool) -> None:
    check_tensor("grad_out", grad_out, 4)
    output_dim, pooled_size = grad_out.shape[1], grad_out.shape[2]
    _check_forward(input, rois, offset, spatial_scale, output_dim, group_size, pooled_size,
                   part_size, sample_per_part, trans_std)
    expected = (rois.shape[0], output_dim, pooled_size, pooled_size)
    for name, tensor in (("grad_out", grad_out), ("count", count)):
        if tuple(tensor.shape) != expected:
            raise ValueError(f"{name}.shape is not valid: got {tuple(tensor.shape)}, "
                             f"expected {expected}")
    check_same_dtype_device("input", input, grad_out=grad_out)
    if count.device != input.device:
        raise RuntimeError(f"count is on {count.device} but input is on {input.device}; all "
                           "tensors must be on the same device")
    if count.dtype != compute_dtype(input.dtype):
        raise TypeError(f"count has dtype {count.dtype} but must have "
                        f"{compute_dtype(input.dtype)}, the compute dtype of input's "
                        f"{input.dtype} (as the forward returns it)")


def _backward_fake(grad_out: Tensor, input: Tensor, rois: Tensor, offset: Tensor | None,
                   *args) -> tuple[Tensor, Tensor]:
    grad_offset = torch.empty_like(offset) if offset is not None else input.new_empty(0)
    return torch.empty_like(input), grad_offset


def _backward(grad_out: Tensor, input: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    if no_feature_cells(input):
        return zeroed(_backward_fake(grad_out, input, *args))
    return _dispatch.run("deform_psroi_pool", "backward", (grad_out, input, *args))


def _setup_context(ctx, inputs, output) -> None:
    input, rois, offset, spatial_scale, _, group_size, _, part_size, samples, trans_std = inputs
    _, count = output
    ctx.mark_non_differentiable(count)
    ctx.save_for_backward(input, rois, offset, count)
    ctx.arguments = (spatial_scale, group_size, part_size, samples, trans_std)


def _gradient(backward_op, ctx, grad_out: Tensor, grad_count: Tensor | None):
    input, rois, offset, count = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad_input, grad_offset = backward_op(
        grad_out.contiguous(), input, rois, offset, count, *ctx.arguments, needs[0], needs[2],
    )
    return (grad_input, None, grad_offset if offset is not None else None, *([None] * 7))


_deform_psroi_pool, _deform_psroi_pool_backward = define_op(
    "deform_psroi_pool",
    OpParts("(Tensor input, Tensor rois, Tensor? offset, float spatial_scale, int output_dim, "
            "int group_size, int pooled_size, int part_size, int sample_per_part, "
            "float trans_std) -> (Tensor, Tensor)", _check_forward, _forward_fake, _forward),
    OpParts("(Tensor grad_out, Tensor input, Tensor rois, Tensor? offset, Tensor count, "
            "float spatial_scale, int group_size, int part_size, int sample_per_part, "
            "float trans_std, bool need_input, bool need_offset) -> (Tensor, Tensor)",
            _check_backward, _backward_fake, _backward),
    _setup_context, _gradient,
)


def _check_arguments(input: Tensor, rois: Tensor, offset: Tensor | None, output_dim: int,
                     group_size: int, part_size: int) -> None:
    check_tensor("input", input, 4)
    if rois.device != input.device:
        raise RuntimeError(f"rois is on {rois.device} but input is on {input.device}")
    if not rois.is_floating_point():
        raise TypeError(f"rois must be a floating point tensor, got {rois.dtype}")
    channels = output_dim * group_size**2
    if input.shape[1] != channels:
        raise ValueError(
            f"input.shape[1] is not valid: got {input.shape[1]}, expected "
            f"output_dim * group_size**2 = {output_dim} * {group_size}**2 = {channels}"
        )
    if offset is None:
        return
    check_tensor("offset", offset, 4)
    check_same_dtype_device("input", input, offset=offset)
    classes = offset.shape[1] // 2
    if offset.shape[1] < 2 or offset.shape[1] % 2:
        raise ValueError(
            f"offset.shape[1] is not valid: got {offset.shape[1]}, expected 2 * num_classes"
        )
    expected = (rois.shape[0], 2 * classes, part_size, part_size)
    if tuple(offset.shape) != expected:
        raise ValueError(
            f"offset.shape is not valid: got {tuple(offset.shape)}, expected {expected} "
            "(K, 2*num_classes, part_size, part_size)"
        )
    if output_dim % classes:
        raise ValueError(
            f"output_dim ({output_dim}) must be divisible by num_classes = offset.shape[1] // 2 "
            f"= {classes}"
        )


def deform_psroi_pool(
    input: Tensor,
    rois: Tensor | list[Tensor],
    offset: Tensor | None = None,
    *,
    spatial_scale: float,
    output_dim: int,
    group_size: int,
    pooled_size: int,
    part_size: int | None = None,
    sample_per_part: int = 4,
    trans_std: float = 0.0,
) -> Tensor:
    """Deformable (position-sensitive) RoI pooling of the original DeformablePSROIPooling.

    Args:
        input (Tensor[N, output_dim*group_size**2, H, W]): position-sensitive score maps.
        rois (Tensor[K, 5] or list of Tensor[Ki, 4]): ``[batch_index, x1, y1, x2, y2]`` rows,
            or one box tensor per image, in input-image coordinates (rounded to integers).
        offset (Tensor[K, 2*num_classes, part_size, part_size] or None): normalised offsets
            (Δx̂, Δŷ per class); output channel ``ctop`` uses class
            ``ctop // (output_dim // num_classes)``. None pools without offsets.
        spatial_scale (float): factor mapping RoI coordinates to feature coordinates.
        output_dim (int): output channels.
        group_size (int): side of the position-sensitive channel grid (1: none).
        pooled_size (int): side P of the output.
        part_size (int or None): side of the offset grid; defaults to ``pooled_size``.
        sample_per_part (int): samples per bin side, at most 8192.
        trans_std (float): offset scale γ (original code: 0.1).

    Returns:
        Tensor[K, output_dim, P, P] in the input's dtype. float16/bfloat16 accumulate
        in float32. RoI corners are rounded in the RoIs' dtype, then used in float32
        (float64 with a float64 input).

    Example::

        >>> x = torch.randn(1, 8 * 3 * 3, 20, 20)
        >>> rois = torch.tensor([[0.0, 16.0, 16.0, 200.0, 150.0]])
        >>> offset = torch.zeros(1, 2, 3, 3)
        >>> deform_psroi_pool(x, rois, offset, spatial_scale=1 / 16, output_dim=8,
        ...                   group_size=3, pooled_size=3, trans_std=0.1).shape
        torch.Size([1, 8, 3, 3])
    """
    output_dim = count(output_dim, "output_dim")
    group_size = count(group_size, "group_size")
    pooled_size = count(pooled_size, "pooled_size")
    part_size = count(pooled_size if part_size is None else part_size, "part_size")
    sample_per_part = count(sample_per_part, "sample_per_part")
    spatial_scale = finite_float(spatial_scale, "spatial_scale", positive=True)
    trans_std = finite_float(trans_std, "trans_std")
    rois = rois_to_tensor(rois)
    if isinstance(input, Tensor):
        input, rois, offset = float32_under_autocast(input.device.type, input, rois, offset)
    _check_arguments(input, rois, offset, output_dim, group_size, part_size)
    # Rounded in their own dtype before the cast, as documented: float64 corners within a
    # float32 step of a half rounded the other way in float32. The kernels round again,
    # a no-op (every integer below 2**24 is a float32, and every float32 above it an integer).
    rois = torch.cat([rois[:, :1], round_half_away(rois[:, 1:])], dim=1)
    out, _ = _deform_psroi_pool(
        input.contiguous(), rois.to(compute_dtype(input.dtype)).contiguous(),
        None if offset is None else offset.contiguous(),
        spatial_scale, output_dim, group_size, pooled_size, part_size, sample_per_part,
        trans_std,
    )
    return out
