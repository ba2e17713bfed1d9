"""FLOP counts of the registered ops for ``torch.utils.flop_counter.FlopCounterMode``.

``torch`` counts matrix products only (a conv as ``2 · N · Cout · Hout · Wout · Cin/groups ·
kh · kw``, not its im2col). ``deform_conv2d`` multiplies the same product over its sampled
columns, so it counts as that conv, its backward as one such product for the columns'
gradient (wanted for the input or the offset and mask gradients) and one for the weight's.
Its sampling is not counted, as a conv's im2col is not. The RoI poolings multiply no
matrices: they count 0, as ``torchvision.ops.roi_align`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from . import deform_conv  # noqa: F401  (registers the ops counted here)

Shape = Sequence[int]


@register_flop_formula(torch.ops.deformconv.deform_conv2d)
def _forward(input: Shape, offset: Shape, weight: Shape, *args: Any, out_shape: Shape,
             **kwargs: Any) -> int:
    return conv_flop_count(list(input), list(weight), list(out_shape))


@register_flop_formula(torch.ops.deformconv.deform_conv2d_backward)
def _backward(grad_out: Shape, input: Shape, offset: Shape, weight: Shape, mask: Shape | None,
              stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int,
              need_input: bool, need_offset_mask: bool, need_weight: bool, *,
              out_shape: Any = None, **kwargs: Any) -> int:
    products = int(need_input or need_offset_mask) + int(need_weight)
    return products * conv_flop_count(list(input), list(weight), list(grad_out))
