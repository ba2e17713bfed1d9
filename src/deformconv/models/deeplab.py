"""DeepLab on a deformable ResNet (DCN paper, section 4: semantic segmentation).

Backbone at output stride 16 (res5 dilated by 2), then the head of the original DCN code:
a 1×1 conv to 1024 channels + ReLU and a 3×3 atrous conv (dilation 6) to class scores,
bilinearly upsampled to the input size.

Optionally a decoder as in DeepLabv3+ (Chen et al. 2018): the head's 1×1 features
upsampled to res2 (stride 4), concatenated with a 1×1 projection of res2, mixed by a 3×3
conv and classified by a 1×1 conv. On small images, where the stride-8 or -16 score map
holds a few cells per object, it gives the outlines back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..conventions import IGNORE_INDEX
from ..ops.arguments import count, integer
from ._backbone import basic, build_backbone
from ._registry import register_model
from ._segmentation import PixelClassifier
from .resnet import ResNet

__all__ = ["DeepLab", "deeplab_resnet18", "deeplab_resnet34", "deeplab_resnet50",
           "deeplab_resnet101"]


class DeepLab(PixelClassifier):
    """Semantic segmentation: ``forward(images (N, 3, H, W)) -> logits (N, classes, H, W)``,
    ``forward(images, masks) -> {"loss_seg": loss}`` (see :class:`PixelClassifier`).

    Args:
        backbone: a headless :class:`ResNet` (``num_classes=0``).
        num_classes: classes, background included.
        head_channels: width of the 1×1 conv after the backbone (paper: 1024).
        atrous_rate: dilation of the 3×3 classifier conv (paper: 6; unused with a decoder).
        decoder_channels: width of the DeepLabv3+ decoder's 3×3 conv (0: no decoder, the
            paper's head); res2 is projected to half of it.
        ignore_index: mask value left out of the loss.
    """

    def __init__(self, backbone: ResNet, num_classes: int, head_channels: int = 1024,
                 atrous_rate: int = 6, decoder_channels: int = 0,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        num_classes = count(num_classes, "num_classes")
        ignore_index = integer(ignore_index, "ignore_index")
        head_channels = count(head_channels, "head_channels")
        atrous_rate = count(atrous_rate, "atrous_rate")
        decoder_channels = count(decoder_channels, "decoder_channels", minimum=0)
        self.backbone = backbone
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        features = [nn.Conv2d(backbone.num_features, head_channels, 1), nn.ReLU(inplace=True)]
        self.decoder: nn.ModuleDict | None = None
        if decoder_channels:
            self.head = nn.Sequential(*features)
            skip = decoder_channels // 2 or 1
            self.decoder = nn.ModuleDict({
                "skip": nn.Sequential(nn.Conv2d(backbone.stage_channels[0], skip, 1, bias=False),
                                      nn.BatchNorm2d(skip), nn.ReLU(inplace=True)),
                "fuse": nn.Sequential(nn.Conv2d(head_channels + skip, decoder_channels, 3,
                                                padding=1, bias=False),
                                      nn.BatchNorm2d(decoder_channels), nn.ReLU(inplace=True)),
                "classifier": nn.Conv2d(decoder_channels, num_classes, 1),
            })
        else:
            self.head = nn.Sequential(*features, nn.Conv2d(
                head_channels, num_classes, 3, padding=atrous_rate, dilation=atrous_rate))
        for m in self.head:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def scores(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, classes, H/s, W/s): s is the backbone's output stride, or 4
        with the decoder."""
        if self.decoder is None:
            return self.head(self.backbone.forward_features(images))
        res2, *_, top = self.backbone.forward_stages(images)
        top = F.interpolate(self.head(top), size=res2.shape[-2:], mode="bilinear",
                            align_corners=False)
        fused = self.decoder["fuse"](torch.cat([top, self.decoder["skip"](res2)], dim=1))
        return self.decoder["classifier"](fused)

    def load_backbone_state_dict(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Load a torchvision ResNet checkpoint into the backbone; see ``ResNet``."""
        return self.backbone.load_backbone_state_dict(state_dict)


def _deeplab(layers: tuple[int, int, int, int], num_classes: int, deformable: bool,
             backbone_kwargs: dict[str, Any] | None, **kwargs: Any) -> DeepLab:
    return DeepLab(build_backbone(layers, deformable, backbone_kwargs), num_classes, **kwargs)


@register_model("segmentation")
def deeplab_resnet18(num_classes: int = 21, deformable: bool = True,
                     backbone_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> DeepLab:
    """DeepLab on the basic-block ResNet-18, otherwise as :func:`deeplab_resnet50` (the
    deformable twin: the last three 3×3 convs of res5)."""
    return _deeplab((2, 2, 2, 2), num_classes, deformable, basic(backbone_kwargs), **kwargs)


@register_model("segmentation")
def deeplab_resnet34(num_classes: int = 21, deformable: bool = True,
                     backbone_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> DeepLab:
    """DeepLab on the basic-block ResNet-34, otherwise as :func:`deeplab_resnet18`."""
    return _deeplab((3, 4, 6, 3), num_classes, deformable, basic(backbone_kwargs), **kwargs)


@register_model("segmentation")
def deeplab_resnet50(num_classes: int = 21, deformable: bool = True,
                     backbone_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> DeepLab:
    """DeepLab on ResNet-50 (output stride 16, frozen BN, deformable res5 3×3 convs).

    ``backbone_kwargs`` go to :class:`ResNet`, other ``kwargs`` to :class:`DeepLab`.
    """
    return _deeplab((3, 4, 6, 3), num_classes, deformable, backbone_kwargs, **kwargs)


@register_model("segmentation")
def deeplab_resnet101(num_classes: int = 21, deformable: bool = True,
                      backbone_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> DeepLab:
    """DeepLab on ResNet-101, otherwise as :func:`deeplab_resnet50`."""
    return _deeplab((3, 4, 23, 3), num_classes, deformable, backbone_kwargs, **kwargs)
