"""Deformable convolution modules: with an external offset, and with their own offset conv.

Dai et al., "Deformable Convolutional Networks", ICCV 2017 (https://arxiv.org/abs/1703.06211);
Zhu et al., "Deformable ConvNets v2", CVPR 2019 (https://arxiv.org/abs/1811.11168).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..ops import deform_conv2d
from ..ops.arguments import boolean, pair
from ..ops.deform_conv import output_size
from ._offset import (
    OffsetBranchMixin,
    ZeroInitConv2d,
    check_counts,
    check_matches_parameters,
    check_positive,
    nan_offsets_propagate,
    zero_init_last,
)

__all__ = ["DeformConv2d", "DeformConv2dBase", "DeformConv2dExternal"]

# FX symbolic tracing (torchvision's create_feature_extractor, timm's feature graphs) records
# the op as one call instead of tracing into its argument checks, which need real tensors.
torch.fx.wrap("deform_conv2d")


def same_padding(kernel_size: tuple[int, int], dilation: tuple[int, int]
                 ) -> tuple[int, int] | None:
    """The (ph, pw) padding on both sides that keeps a stride-1 conv's output at its input
    size (``padding="same"``); None where that needs one side padded more (an odd
    ``dilation * (kernel_size - 1)``)."""
    totals = [d * (k - 1) for d, k in zip(dilation, kernel_size, strict=True)]
    return None if any(t % 2 for t in totals) else (totals[0] // 2, totals[1] // 2)


def _is_unbatched(input: Tensor) -> bool:
    """Whether ``input`` is one unbatched (C, H, W) sample, which the modules run as a batch
    of one, as ``nn.Conv2d`` does (a Proxy of FX tracing counts as batched)."""
    return isinstance(input, Tensor) and input.dim() == 3


class DeformConv2dBase(nn.Module):
    """The weight, bias and geometry of a deformable conv; subclasses say where the offsets
    come from (:class:`DeformConv2dExternal`: the caller, :class:`DeformConv2d`: its own
    offset conv).

    Parameters ``weight`` and ``bias`` have ``nn.Conv2d``'s names, shapes and init, so a
    Conv2d's state_dict loads as it is into :class:`DeformConv2dExternal`. It lacks the
    offset branch of :class:`DeformConv2d`: load it there with ``strict=False``, and expect
    exactly :func:`deformconv.nn.offset_state_keys` missing (the branch keeps its zero init,
    so a non-modulated layer computes the conv); a strict load refuses it, as it refuses
    any checkpoint of the plain twin::

        >>> conv = nn.Conv2d(8, 4, 3, padding=1)
        >>> deform = DeformConv2d(8, 4, 3, padding=1)
        >>> deform.load_state_dict(conv.state_dict(), strict=False).missing_keys
        ['conv_offset.weight', 'conv_offset.bias']

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as in
            ``nn.Conv2d`` (zero padding only). ``padding="valid"`` is 0; ``padding="same"``
            needs stride 1 and an odd ``dilation * (kernel_size - 1) + 1`` (a kernel padded
            equally on both sides); ``self.padding`` holds the pair either resolves to.
        device, dtype: of the parameters, as in ``nn.Conv2d`` (keyword-only).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_counts(in_channels=in_channels, out_channels=out_channels, groups=groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                f"divisible by groups ({groups})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        check_positive(kernel_size=self.kernel_size, stride=self.stride,
                       dilation=self.dilation)
        self.padding = self._padding(padding)
        if min(self.padding) < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")
        self.groups = groups
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size, **factory)
        )
        has_bias = boolean(bias, "bias")
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if has_bias else None
        self.reset_parameters()

    def _padding(self, padding: int | tuple[int, int] | str) -> tuple[int, int]:
        """``padding`` as (ph, pw), ``"valid"`` and ``"same"`` resolved as ``nn.Conv2d``
        resolves them (``"same"``: stride 1 only, and here an even padded total only)."""
        if not isinstance(padding, str):
            return pair(padding, "padding")
        if padding == "valid":
            return (0, 0)
        if padding != "same":
            raise ValueError(f"padding must be an int, a pair of ints, 'same' or 'valid', "
                             f"got {padding!r}")
        if self.stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1, as in nn.Conv2d, got stride="
                             f"{self.stride}")
        same = same_padding(self.kernel_size, self.dilation)
        if same is None:
            raise ValueError(
                f"padding='same' with kernel_size={self.kernel_size} and dilation="
                f"{self.dilation} pads one side more than the other (dilation * (kernel_size - "
                "1) is odd); the deformable conv pads both sides equally")
        return same

    def reset_parameters(self) -> None:
        # nn.Conv2d's default init, so deformable and plain twins start from the same law.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def check_input(self, input: Tensor) -> None:
        """Refuse an input that is neither (N, Cin, H, W) nor unbatched (Cin, H, W), or of
        another channel count, as ``nn.Conv2d`` does (the op would take it as another
        grouping), or smaller than the dilated kernel, or of another dtype or device than
        ``weight`` (outside autocast), with the op's messages, before an offset conv fails
        on it with torch's; a Proxy (FX tracing) has no shape to check."""
        if not isinstance(input, Tensor):
            return
        channels = self.in_channels
        if input.dim() not in (3, 4) or input.shape[-3] != channels:
            raise ValueError(f"input must have shape (N, {channels}, H, W) or, unbatched, "
                             f"({channels}, H, W) for in_channels={channels}, got "
                             f"{tuple(input.shape)}")
        output_size((input.shape[-2], input.shape[-1]), self.kernel_size, self.stride,
                    self.padding, self.dilation)
        check_matches_parameters(self, input=input)

    def deform_conv(self, input: Tensor, offset: Tensor, mask: Tensor | None) -> Tensor:
        """:func:`deformconv.ops.deform_conv2d` with this layer's weight, bias and geometry."""
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, mask)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        defaults = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1}
        for name, default in defaults.items():
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)}"
        if self.bias is None:
            text += ", bias=False"
        return text


class DeformConv2dExternal(DeformConv2dBase):
    """Deformable conv whose offsets (and mask) are given to ``forward``.

    The drop-in for ``torchvision.ops.DeformConv2d``; arguments as in ``nn.Conv2d`` (see
    :class:`DeformConv2dBase`).

    Shape:
        ``forward(input (N, Cin, H, W), offset (N, 2*G*kh*kw, Hout, Wout),
        mask (N, G*kh*kw, Hout, Wout) or None) -> (N, Cout, Hout, Wout)``; the offset groups
        ``G`` are read from ``offset``. Unbatched, as ``nn.Conv2d`` takes it (torchvision's
        takes 4-D only), all three lack the N: ``input (Cin, H, W)``, ``offset
        (2*G*kh*kw, Hout, Wout)``, ``mask (G*kh*kw, Hout, Wout)`` -> ``(Cout, Hout, Wout)``.

    Example::

        >>> conv = DeformConv2dExternal(8, 4, 3, padding=1)
        >>> x = torch.randn(2, 8, 10, 10)
        >>> conv(x, torch.zeros(2, 18, 10, 10)).shape
        torch.Size([2, 4, 10, 10])
    """

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        self.check_input(input)
        if not _is_unbatched(input):
            return self.deform_conv(input, offset, mask)
        for name, tensor in (("offset", offset), ("mask", mask)):
            if isinstance(tensor, Tensor) and tensor.dim() != 3:
                raise ValueError(f"{name} must be 3-D (unbatched) for an unbatched input of "
                                 f"shape {tuple(input.shape)}, got shape {tuple(tensor.shape)}")
        offset, mask = (t.unsqueeze(0) if isinstance(t, Tensor) else t for t in (offset, mask))
        return self.deform_conv(input.unsqueeze(0), offset, mask).squeeze(0)


class DeformConv2d(DeformConv2dBase, OffsetBranchMixin):
    """Deformable conv that predicts its own offsets (DCN v1) and mask (DCN v2, ``modulated``).

    The offset branch ``conv_offset`` is a conv with the main conv's kernel, stride, padding
    and dilation and ``2*G*kh*kw`` outputs (``+ G*kh*kw`` mask logits when ``modulated``),
    initialised to zero. With zero offsets the module equals ``nn.Conv2d`` with the same
    weight. A modulated one starts at ``(conv(x) - bias) / 2 + bias``: DCN v2's initial
    mask is ``sigmoid(0) = 0.5`` (Zhu et al. 2019), and it scales the samples, not the bias.
    ``conv_offset`` is an ``nn.Conv2d``: after an init loop over ``nn.Conv2d`` layers, call
    :meth:`zero_init_offsets` to zero it again.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            device, dtype: as in ``nn.Conv2d`` (see :class:`DeformConv2dBase`).
        offset_groups: G, groups of input channels sharing one offset field.
        modulated: also predict a per-sample modulation mask (DCN v2).
        offset_lr_mult: learning-rate multiplier (finite, >= 0) of the offset branch, applied by
            :func:`deformconv.nn.offset_param_groups` and the engine (see
            :class:`OffsetBranchMixin`) (paper: 1).

    Shape:
        ``forward(input (N, Cin, H, W)) -> (N, Cout, Hout, Wout)``; an unbatched
        ``(Cin, H, W)`` input, as ``nn.Conv2d`` takes it, gives ``(Cout, Hout, Wout)``.

    Example::

        >>> conv = DeformConv2d(8, 4, 3, padding=1, offset_groups=2, modulated=True)
        >>> conv(torch.randn(2, 8, 10, 10)).shape
        torch.Size([2, 4, 10, 10])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        offset_groups: int = 1,
        modulated: bool = False,
        offset_lr_mult: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, device=device, dtype=dtype)
        check_counts(offset_groups=offset_groups)
        if in_channels % offset_groups:
            raise ValueError(
                f"in_channels ({in_channels}) must be divisible by offset_groups ({offset_groups})"
            )
        self.offset_groups = offset_groups
        self.modulated = boolean(modulated, "modulated")
        self.offset_lr_mult = offset_lr_mult
        points = offset_groups * self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = ZeroInitConv2d(
            in_channels, (3 if self.modulated else 2) * points, self.kernel_size, self.stride,
            self.padding, self.dilation, device=device, dtype=dtype,
        )

    @property
    def offset_branch(self) -> nn.Module:
        return self.conv_offset

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "conv_offset"):
            zero_init_last(self.conv_offset)

    def forward(self, input: Tensor) -> Tensor:
        self.check_input(input)  # before the offset conv, whose error would name its weight
        if _is_unbatched(input):
            return self.forward(input.unsqueeze(0)).squeeze(0)
        out = self.conv_offset(input)  # (N, 2*G*kk [+ G*kk], Hout, Wout)
        points = self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        offset = out[:, : 2 * points]
        mask = out[:, 2 * points :].sigmoid() if self.modulated else None
        return nan_offsets_propagate(lambda o: self.deform_conv(input, o, mask), offset)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.offset_groups != 1:
            text += f", offset_groups={self.offset_groups}"
        if self.modulated:
            text += ", modulated=True"
        if self.offset_lr_mult != 1.0:
            text += f", offset_lr_mult={self.offset_lr_mult}"
        return text
