"""A compact fully convolutional segmentation network, sized to train in minutes on a CPU.

A stack of 3×3 conv + BN + ReLU layers: the first ones with stride 2, then layers at the
encoder's stride whose last ``deform_layers`` are deformable. The deformable layers sit on
the smallest maps, where they are cheap, and at the top, where a plain layer's receptive
field is largest yet still fixed: their offsets can stretch it to the object at hand.
Optionally a decoder (as in DeepLabv3+, Chen et al. 2018) upsamples the top features to an
earlier layer's finer map, concatenates that layer's output and mixes both with one 3×3
conv, for the outlines of small objects. A 1×1 classifier and a bilinear upsampling to the
input size end it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..conventions import IGNORE_INDEX
from ..nn import DeformConv2d
from ..ops.arguments import boolean, count, counts, integer
from ._registry import register_model
from ._segmentation import PixelClassifier

__all__ = ["CompactFCN", "compact_fcn"]


class CompactFCN(PixelClassifier):
    """Segmentation: ``forward(images (N, 3, H, W)) -> logits (N, classes, H, W)``,
    ``forward(images, masks) -> {"loss_seg": loss}`` (see :class:`PixelClassifier`).

    Args:
        num_classes: classes, background included.
        widths: output channels of each 3×3 conv layer.
        strides: stride of each layer (1 or 2); the output stride is their product.
        deform_layers: how many of the last layers are deformable (0 = the plain twin).
            Deformable layers must all have stride 1.
        skip_layer: index of the layer whose output the decoder fuses (None: no decoder,
            the classifier reads the top layer).
        decoder_width: output channels of the decoder's 3×3 conv.
        modulated: DCN v2 modulation masks in the deformable layers.
        offset_groups: offset groups of the deformable layers.
        ignore_index: mask value left out of the loss.
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = (24, 32, 48, 48, 48),
                 strides: Sequence[int] = (2, 2, 1, 1, 1), deform_layers: int = 3, *,
                 skip_layer: int | None = None, decoder_width: int = 32,
                 modulated: bool = False, offset_groups: int = 1,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        # the deformable layers' and the decoder's options are checked even without them
        modulated = boolean(modulated, "modulated")
        offset_groups = count(offset_groups, "offset_groups")
        decoder_width = count(decoder_width, "decoder_width")
        num_classes = count(num_classes, "num_classes")
        widths = counts(widths, "widths")
        strides = counts(strides, "strides")
        if len(widths) != len(strides) or not widths:
            raise ValueError(f"widths and strides must be non-empty and of one length, got "
                             f"{len(widths)} widths and {len(strides)} strides")
        if any(s not in (1, 2) for s in strides):
            raise ValueError(f"strides must be 1 or 2, got {strides}")
        deform_layers = integer(deform_layers, "deform_layers")
        if not 0 <= deform_layers <= len(widths):
            raise ValueError(f"deform_layers must be in [0, {len(widths)}], got {deform_layers}")
        if skip_layer is not None:
            skip_layer = integer(skip_layer, "skip_layer")
            if not 0 <= skip_layer < len(widths) - 1:
                raise ValueError(f"skip_layer must be None or in [0, {len(widths) - 2}], got "
                                 f"{skip_layer}")
        first_deformable = len(widths) - deform_layers
        if any(s != 1 for s in strides[first_deformable:]):
            raise ValueError(f"deformable layers need stride 1: strides {tuple(strides)} with "
                             f"the last {deform_layers} deformable")
        self.num_classes = num_classes
        self.strides = strides
        self.ignore_index = integer(ignore_index, "ignore_index")
        self.deform_layers = deform_layers
        layers: list[nn.Module] = []
        channels = 3
        for i, (width, layer_stride) in enumerate(zip(widths, strides, strict=True)):
            if i >= first_deformable:
                conv: nn.Module = DeformConv2d(channels, width, 3, padding=1, bias=False,
                                               modulated=modulated, offset_groups=offset_groups)
            else:
                conv = nn.Conv2d(channels, width, 3, stride=layer_stride, padding=1, bias=False)
            layers.append(nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True)))
            channels = width
        self.features = nn.Sequential(*layers)
        self.skip_layer = skip_layer
        self.decoder: nn.Module | None = None
        if skip_layer is not None:
            self.decoder = nn.Sequential(
                nn.Conv2d(channels + widths[skip_layer], decoder_width, 3, padding=1,
                          bias=False),
                nn.BatchNorm2d(decoder_width), nn.ReLU(inplace=True))
            channels = decoder_width
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    @property
    def receptive_field(self) -> int:
        """Side in input pixels of the widest window that can reach one classifier input of
        the plain twin, over all its positions (the theoretical receptive field, every layer
        3×3 on its regular grid; with a decoder, the top map's bilinear upsampling and the
        decoder's 3×3 conv on the skip layer's grid are included), for an input whose sides
        are multiples of the output stride (other sides make the upsampling's scale differ
        from the stride ratio, and some windows one top-map step wider). A deformable
        layer's offsets can reach beyond it."""
        size, step = 1, 1
        for layer_stride in self.strides:
            size += 2 * step
            step *= layer_stride
        if self.skip_layer is not None:
            # The decoder's 3×3 conv reads 3 skip-grid pixels, whose bilinear samples span
            # 2 top-map steps at most (3 top pixels: of the same grid, of overlapping pairs
            # at a ratio of 2, or at some positions of a ratio >= 4); the skip layer's own
            # window lies inside theirs.
            size += 2 * step
        return size

    def forward_features(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) -> the classifier's input (N, C, H/s, W/s): the top layer's output,
        or the decoder's at the skip layer's stride s."""
        x = images
        skip = None
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self.skip_layer:
                skip = x
        if self.decoder is None or skip is None:
            return x
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.decoder(torch.cat([x, skip], dim=1))

    def scores(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, classes, H/s, W/s)."""
        return self.classifier(self.forward_features(images))


@register_model("segmentation")
def compact_fcn(num_classes: int = 21, deformable: bool = True, **kwargs: object
                ) -> CompactFCN:
    """:class:`CompactFCN` (five 3×3 layers at widths 24-48, output stride 4, the last three
    deformable); ``deformable=False`` gives the plain twin (``deform_layers=0``)."""
    if not boolean(deformable, "deformable"):
        kwargs["deform_layers"] = 0
    return CompactFCN(num_classes, **kwargs)  # type: ignore[arg-type]
