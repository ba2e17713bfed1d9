"""deform_roi_pool: deformable RoI pooling (RoIAlign whose bins move by learned offsets).

Dai et al., "Deformable Convolutional Networks", ICCV 2017 (https://arxiv.org/abs/1703.06211),
section 2.2, eq. (6); the optional mask is the modulated pooling of Zhu et al.,
"Deformable ConvNets v2", CVPR 2019 (https://arxiv.org/abs/1811.11168).
Without offset it equals ``torchvision.ops.roi_align`` (docs/OPS.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _dispatch
from ._checks import (
    MAX_SAMPLES_PER_BIN,
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
from .arguments import boolean, finite_float, integer, pair, rois_to_tensor
from .geometry import roi_align_grid

__all__ = ["deform_roi_pool"]

_ARGUMENTS = ("int pooled_h, int pooled_w, float spatial_scale, int sampling_ratio, "
              "float gamma, bool aligned")




def _check_forward(input: Tensor, rois: Tensor, offset: Tensor | None, mask: Tensor | None,
                   pooled_h: int, pooled_w: int, spatial_scale: float, sampling_ratio: int,
                   gamma: float, aligned: bool) -> None:
    """Checks of the registered op itself: it can be called directly, and the kernels trust
    these shapes and dtypes. Values (RoI indices, NaN, sample counts) are checked here, not
    while tracing."""
    _check_arguments(input, rois_to_tensor(rois), offset, mask, (pooled_h, pooled_w))
    finite_float(spatial_scale, "spatial_scale", positive=True)
    finite_float(gamma, "gamma")
    check_compute_dtype(input, rois)
    check_rois_values(rois, input.shape[0])
    _check_sample_count(rois, (pooled_h, pooled_w), spatial_scale, sampling_ratio, aligned)
    if offset is not None:
        check_no_nan("offset", offset)


def _check_sample_count(rois: Tensor, pooled: tuple[int, int], spatial_scale: float,
                        sampling_ratio: int, aligned: bool) -> None:
    """Refuse a ``sampling_ratio``, or RoIs whose adaptive sampling grid, that exceeds
    ``MAX_SAMPLES_PER_BIN``."""
    if sampling_ratio > 0:
        check_samples_per_side(sampling_ratio, "sampling_ratio")
        return
    if rois.numel() == 0:
        return
    grid = roi_align_grid(rois.double(), pooled, spatial_scale, sampling_ratio, aligned)
    samples = grid.bin_h.ceil().clamp(min=0) * grid.bin_w.ceil().clamp(min=0)
    row = int(samples.argmax())
    if samples[row] > MAX_SAMPLES_PER_BIN:
        raise ValueError(
            f"rois: row {row} {rois[row].tolist()} spans {grid.roi_h[row]:.4g} x "
            f"{grid.roi_w[row]:.4g} feature cells at spatial_scale={spatial_scale}, so adaptive "
            f"sampling (sampling_ratio <= 0) would take {samples[row]:.3g} samples per bin, more "
            f"than {MAX_SAMPLES_PER_BIN}: check the RoI coordinates and spatial_scale, or pass "
            "sampling_ratio > 0"
        )


def _forward(input: Tensor, rois: Tensor, offset: Tensor | None, mask: Tensor | None,
             pooled_h: int, pooled_w: int, *args) -> Tensor:
    if no_feature_cells(input):
        return zeroed(_forward_fake(input, rois, offset, mask, pooled_h, pooled_w))
    return _dispatch.run("deform_roi_pool", "forward",
                         (input, rois, offset, mask, (pooled_h, pooled_w), *args))


def _forward_fake(input: Tensor, rois: Tensor, offset: Tensor | None, mask: Tensor | None,
                  pooled_h: int, pooled_w: int, *args) -> Tensor:
    return input.new_empty(rois.shape[0], input.shape[1], pooled_h, pooled_w)


def _check_backward(grad_out: Tensor, input: Tensor, rois: Tensor, offset: Tensor | None,
                    mask: Tensor | None, pooled_h: int, pooled_w: int, *args) -> None:
    _check_forward(input, rois, offset, mask, pooled_h, pooled_w, *args[:4])  # not the needs
    expected = (rois.shape[0], input.shape[1], pooled_h, pooled_w)
    if tuple(grad_out.shape) != expected:
        raise ValueError(f"grad_out.shape is not valid: got {tuple(grad_out.shape)}, "
                         f"expected {expected}")
    check_same_dtype_device("input", input, grad_out=grad_out)


def _backward(grad_out: Tensor, input: Tensor, rois: Tensor, offset: Tensor | None,
              mask: Tensor | None, pooled_h: int, pooled_w: int, *args
              ) -> tuple[Tensor, Tensor, Tensor]:
    if no_feature_cells(input):
        return zeroed(_backward_fake(grad_out, input, rois, offset, mask))
    return _dispatch.run("deform_roi_pool", "backward",
                         (grad_out, input, rois, offset, mask, (pooled_h, pooled_w), *args))


def _backward_fake(grad_out: Tensor, input: Tensor, rois: Tensor, offset: Tensor | None,
                   mask: Tensor | None, *args) -> tuple[Tensor, Tensor, Tensor]:
    grad_offset = torch.empty_like(offset) if offset is not None else input.new_empty(0)
    grad_mask = torch.empty_like(mask) if mask is not None else input.new_empty(0)
    return torch.empty_like(input), grad_offset, grad_mask


def _setup_context(ctx, inputs, output) -> None:
    input, rois, offset, mask, *arguments = inputs
    ctx.save_for_backward(input, rois, offset, mask)
    ctx.arguments = arguments


def _gradient(backward_op, ctx, grad_out: Tensor):
    input, rois, offset, mask = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad_input, grad_offset, grad_mask = backward_op(
        grad_out.contiguous(), input, rois, offset, mask, *ctx.arguments,
        needs[0], needs[2] or needs[3],
    )
    return (grad_input, None, grad_offset if offset is not None else None,
            grad_mask if mask is not None else None, *([None] * 6))


_deform_roi_pool, _deform_roi_pool_backward = define_op(
    "deform_roi_pool",
    OpParts(f"(Tensor input, Tensor rois, Tensor? offset, Tensor? mask, {_ARGUMENTS}) -> Tensor",
            _check_forward, _forward_fake, _forward),
    OpParts(f"(Tensor grad_out, Tensor input, Tensor rois, Tensor? offset, Tensor? mask, "
            f"{_ARGUMENTS}, bool need_input, bool need_offset_mask) -> (Tensor, Tensor, Tensor)",
            _check_backward, _backward_fake, _backward),
    _setup_context, _gradient,
)


def _check_arguments(input: Tensor, rois: Tensor, offset: Tensor | None, mask: Tensor | None,
                     pooled: tuple[int, int]) -> None:
    check_tensor("input", input, 4)
    if rois.device != input.device:
        raise RuntimeError(f"rois is on {rois.device} but input is on {input.device}")
    if not rois.is_floating_point():
        raise TypeError(f"rois must be a floating point tensor, got {rois.dtype}")
    if min(pooled) < 1:
        raise ValueError(f"output_size must be positive, got {pooled}")
    expected = (rois.shape[0], 2, *pooled)
    if offset is not None:
        check_tensor("offset", offset, 4)
        if tuple(offset.shape) != expected:
            raise ValueError(
                f"offset.shape is not valid: got {tuple(offset.shape)}, expected {expected} "
                "(K, 2, ph, pw)"
            )
    if mask is not None:
        check_tensor("mask", mask, 4)
        expected = (rois.shape[0], 1, *pooled)
        if tuple(mask.shape) != expected:
            raise ValueError(
                f"mask.shape is not valid: got {tuple(mask.shape)}, expected {expected} "
                "(K, 1, ph, pw)"
            )
    check_same_dtype_device("input", input, offset=offset, mask=mask)


def deform_roi_pool(
    input: Tensor,
    rois: Tensor | list[Tensor],
    offset: Tensor | None = None,
    output_size: int | tuple[int, int] | None = None,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
    aligned: bool = True,
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable RoI pooling: RoIAlign bins shifted by ``gamma * offset * (roi_w, roi_h)``.

    Args:
        input (Tensor[N, C, H, W]): feature map.
        rois (Tensor[K, 5] or list of Tensor[Ki, 4]): ``[batch_index, x1, y1, x2, y2]`` rows,
            or one box tensor per image, in input-image coordinates.
        offset (Tensor[K, 2, ph, pw] or None): normalised bin offsets; channel 0 is Δx̂,
            channel 1 is Δŷ. None pools without offsets (plain RoIAlign).
        output_size (int or (int, int)): ``(ph, pw)``; required.
        spatial_scale (float): factor mapping RoI coordinates to feature coordinates.
        sampling_ratio (int): samples per bin side; 0 or less (torchvision's -1) picks
            ``ceil(roi_size / output_size)``; at most 8192.
        gamma (float): offset scale γ (paper: 0.1).
        aligned (bool): shift RoIs by -0.5 pixel (torchvision's ``aligned=True``; its
            ``roi_align`` defaults to False).
        mask (Tensor[K, 1, ph, pw] or None): multiplies each bin (modulated pooling, DCN v2).

    Returns:
        Tensor[K, C, ph, pw] in the input's dtype. float16/bfloat16 accumulate in
        float32 (RoIs are used in float32).

    Example::

        >>> x = torch.randn(1, 16, 32, 32)
        >>> rois = torch.tensor([[0.0, 2.0, 3.0, 20.0, 25.0]])
        >>> offset = torch.zeros(1, 2, 7, 7)
        >>> deform_roi_pool(x, rois, offset, output_size=7, spatial_scale=0.5).shape
        torch.Size([1, 16, 7, 7])
    """
    if offset is not None and not isinstance(offset, Tensor):
        # roi_align(input, boxes, output_size, spatial_scale, ...) ported positionally
        raise TypeError(
            f"offset must be a torch.Tensor or None, got {type(offset).__name__} {offset!r}; "
            "offset is deform_roi_pool's third argument (torchvision's roi_align takes "
            "output_size there): pass output_size=... and the rest by keyword")
    if output_size is None:
        raise TypeError("deform_roi_pool() missing required argument: 'output_size'")
    pooled = pair(output_size, "output_size")
    sampling_ratio = integer(sampling_ratio, "sampling_ratio")
    spatial_scale = finite_float(spatial_scale, "spatial_scale", positive=True)
    gamma = finite_float(gamma, "gamma")
    aligned = boolean(aligned, "aligned")
    rois = rois_to_tensor(rois)
    if isinstance(input, Tensor):
        input, rois, offset, mask = float32_under_autocast(
            input.device.type, input, rois, offset, mask)
    _check_arguments(input, rois, offset, mask, pooled)
    return _deform_roi_pool(
        input.contiguous(), rois.to(compute_dtype(input.dtype)).contiguous(),
        None if offset is None else offset.contiguous(),
        None if mask is None else mask.contiguous(),
        *pooled, spatial_scale, sampling_ratio, gamma, aligned,
    )
