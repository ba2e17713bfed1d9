"""Building the ResNet backbone that the segmentation and detection models share."""

from __future__ import annotations

from typing import Any

from ..ops.arguments import boolean
from .resnet import PAPER_DEFORM_BLOCKS, PLAIN_DEFORM_BLOCKS, ResNet


def build_backbone(layers: tuple[int, int, int, int], deformable: bool,
                   backbone_kwargs: dict[str, Any] | None) -> ResNet:
    """Headless ResNet at output stride 16 with frozen BN, conv1 and res2 fixed and
    deformable res5 (the paper's setup, made for ImageNet-initialised fine-tuning; from
    random init pass ``{"norm_layer": "batch_norm", "frozen_stages": -1}``);
    ``backbone_kwargs`` override any :class:`ResNet` option but ``layers`` (the entry
    point's) and ``num_classes`` (0, headless); ``deformable=False`` always gives the plain
    twin."""
    for fixed in ("layers", "num_classes"):
        if fixed in (backbone_kwargs or {}):
            raise ValueError(
                f"backbone_kwargs cannot set {fixed}, which the entry point fixes (layers by "
                f"its name, num_classes=0: a headless backbone), got "
                f"{fixed}={backbone_kwargs[fixed]!r}")  # type: ignore[index]
    kwargs: dict[str, Any] = {
        "output_stride": 16,
        "norm_layer": "frozen_batch_norm",
        "frozen_stages": 1,
        "deform_blocks": PAPER_DEFORM_BLOCKS,
        **(backbone_kwargs or {}),
    }
    if not boolean(deformable, "deformable"):
        kwargs["deform_blocks"] = PLAIN_DEFORM_BLOCKS
    return ResNet(layers, 0, **kwargs)


def basic(backbone_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``backbone_kwargs`` of a basic-block ResNet (ResNet-18/34 entry points)."""
    return {"block": "basic", **(backbone_kwargs or {})}
