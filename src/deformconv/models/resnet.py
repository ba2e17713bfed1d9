"""ResNets whose chosen 3×3 convs are deformable: the DCN paper's bottleneck ResNet-50/101
and the basic-block ResNet-18/34.

One ResNet class: a deformable ResNet is this ResNet with ``DeformConv2d`` as the last
``deform_blocks[i]`` 3×3 convs of stage i, not a parallel class tree. The block type is an
argument (``block="bottleneck"`` or ``"basic"``, as timm's ResNet). Parameter names follow
torchvision's ResNet (``conv1``, ``bn1``, ``layer1.0.conv2`` ...), so its ImageNet
checkpoints load directly (:func:`load_backbone_state_dict`); stride sits on the first 3×3
conv of a stage as in torchvision (ResNet v1.5).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from ..nn import DeformConv2d, DeformConv2dBase, OffsetBranchMixin, offset_state_keys
from ..nn._offset import check_offset_lr_mult
from ..ops.arguments import boolean, count, counts, integer
from ._registry import register_model

__all__ = ["BLOCKS", "BasicBlock", "Bottleneck", "ResNet", "checkpoint_filter_fn",
           "load_backbone_state_dict", "resnet18", "resnet34", "resnet50", "resnet101"]

ConvLayer = Callable[..., nn.Module]

PAPER_DEFORM_BLOCKS = (0, 0, 0, 3)  # the three 3×3 convs of res5 (res5a/b/c) are deformable
PLAIN_DEFORM_BLOCKS = (0, 0, 0, 0)


def frozen_batch_norm(num_features: int) -> nn.Module:
    """torchvision's ``FrozenBatchNorm2d``: fixed statistics and affine, as the paper's
    detection and segmentation fine-tuning."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    return FrozenBatchNorm2d(num_features)


# Names a config file can give for ``norm_layer``.
NORM_LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "batch_norm": nn.BatchNorm2d,
    "frozen_batch_norm": frozen_batch_norm,
}


def _trainable_gamma(norm: nn.Module) -> nn.Parameter:
    """The scale of a residual branch's last norm, which ``zero_init_residual`` zeroes; a
    fixed one (frozen BN's buffer) would keep the branch at zero for good."""
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, nn.Parameter):
        raise ValueError(
            f"zero_init_residual needs norm layers with a trainable scale, got "
            f"{type(norm).__name__}: zeroed, a fixed scale would silence every residual "
            "branch for good (with frozen BN, load pretrained weights instead)")
    return weight


def _norm_layer(norm_layer: str | Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    if isinstance(norm_layer, str):
        if norm_layer not in NORM_LAYERS:
            raise ValueError(f"norm_layer must be one of {sorted(NORM_LAYERS)} or a callable, "
                             f"got {norm_layer!r}")
        return NORM_LAYERS[norm_layer]
    return norm_layer


class BasicBlock(nn.Module):
    """3×3 (carries stride) -> 3×3, plus shortcut (ResNet-18/34); both convs dilated.

    ``conv_layers``: the layer of each 3×3 conv, ``(conv1's, conv2's)``.
    """

    expansion = 1
    convs = 2  # 3×3 convs per block

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        conv_layers: Sequence[ConvLayer] = (nn.Conv2d, nn.Conv2d),
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        first, second = conv_layers
        self.conv1 = first(inplanes, planes, 3, stride=stride, padding=dilation,
                           dilation=dilation, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = second(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.relu(x + shortcut)

    def last_norm(self) -> nn.Module:
        """The norm closing the residual branch (zero-gamma init sets it to zero)."""
        return self.bn2


class Bottleneck(nn.Module):
    """1×1 -> 3×3 (carries stride and dilation) -> 1×1, plus shortcut (ResNet-50/101).

    ``conv_layers``: the layer of the one 3×3 conv, ``(conv2's,)``.
    """

    expansion = 4
    convs = 1  # 3×3 convs per block

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        conv_layers: Sequence[ConvLayer] = (nn.Conv2d,),
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        (conv_layer,) = conv_layers
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv_layer(planes, planes, 3, stride=stride, padding=dilation,
                                dilation=dilation, bias=False)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.relu(x + shortcut)

    def last_norm(self) -> nn.Module:
        """The norm closing the residual branch (zero-gamma init sets it to zero)."""
        return self.bn3


Block = type[BasicBlock] | type[Bottleneck]
# Names a config file can give for ``block``.
BLOCKS: dict[str, Block] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _block(block: str | Block) -> Block:
    if isinstance(block, str):
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)} or a block class, "
                             f"got {block!r}")
        return BLOCKS[block]
    return block


def _stage_strides(output_stride: int) -> list[tuple[int, int]]:
    """(stride, dilation) of stages 1..4 for an output stride of 32, 16 or 8.

    Like the paper (and DeepLab), a stage whose stride is removed dilates *all* its 3×3
    convs; torchvision instead keeps the previous dilation in the stage's first block.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    plan = [(1, 1), (2, 1), (2, 1), (2, 1)]
    dilation = 1
    for stage in range(4 - {32: 0, 16: 1, 8: 2}[output_stride], 4):
        dilation *= 2
        plan[stage] = (1, dilation)
    return plan


def _make_stage(block: Block, inplanes: int, planes: int, blocks: int, stride: int,
                dilation: int, deformable: int, deform_layer: ConvLayer,
                norm_layer: Callable[[int], nn.Module]) -> nn.Sequential:
    """``blocks`` blocks whose last ``deformable`` 3×3 convs are ``deform_layer``."""
    outplanes = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != outplanes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), norm_layer(outplanes)
        )
    first_deformable = blocks * block.convs - deformable  # index of the stage's 3×3 convs
    stage = []
    for b in range(blocks):
        conv_layers = [deform_layer if b * block.convs + i >= first_deformable else nn.Conv2d
                       for i in range(block.convs)]
        first = b == 0
        stage.append(block(inplanes if first else outplanes, planes, stride if first else 1,
                           dilation, downsample if first else None, conv_layers, norm_layer))
    return nn.Sequential(*stage)


class ResNet(nn.Module):
    """ResNet with deformable 3×3 convs at chosen places.

    Args:
        layers: blocks per stage, ``(3, 4, 6, 3)`` for ResNet-50 (bottleneck) and
            ResNet-34 (basic), ``(2, 2, 2, 2)`` for ResNet-18 (basic).
        num_classes: classifier outputs; 0 drops the classifier (a backbone).
        in_chans: image channels.
        output_stride: 32, or 16 / 8 by removing the stride of the last stage(s) and
            dilating their 3×3 convs (paper: 16 for segmentation and detection).
        deform_blocks: per stage, how many of its last 3×3 convs are deformable (one per
            bottleneck block, two per basic block; paper: ``(0, 0, 0, 3)``, all of res5).
        offset_groups, modulated, offset_lr_mult: passed to each :class:`DeformConv2d`
            (paper: 4 offset groups in res5, DCN v1).
        norm_layer: normalisation after each conv, a callable ``(channels) -> module`` or a
            name in ``NORM_LAYERS`` ("batch_norm", "frozen_batch_norm"). Frozen BN suits
            fine-tuning from ImageNet weights; from random init it leaves activations
            unnormalised (they grow with depth), so train from scratch with "batch_norm".
        base_channels: width of the stem and of stage 1's 3×3 convs (64; smaller values
            make tiny test models, torchvision checkpoints need 64).
        block: ``"bottleneck"`` (ResNet-50/101), ``"basic"`` (ResNet-18/34) or a block
            class with ``expansion`` and ``convs`` (3×3 convs per block).
        zero_init_residual: start every residual branch's last norm at zero gamma, so each
            block starts as the identity (Goyal et al. 2017; torchvision's option); needs
            norms with a trainable scale (not frozen BN).
        frozen_stages: stop gradients for the stem (0) and stages 1..frozen_stages, whose
            norms also stay in eval mode (running statistics fixed); -1 freezes nothing
            (paper, detection and segmentation: 1, conv1 and res2).

    Shape:
        ``forward(images (N, in_chans, H, W)) -> logits (N, num_classes)``;
        ``forward_stages`` gives the four stage outputs
        ``(N, expansion*base_channels*2^i, h_i, w_i)`` at strides 4, 8, 16, 32 (capped by
        ``output_stride``); expansion is 4 for bottleneck, 1 for basic blocks.
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_classes: int = 1000,
        *,
        in_chans: int = 3,
        output_stride: int = 32,
        deform_blocks: Sequence[int] = PLAIN_DEFORM_BLOCKS,
        offset_groups: int = 4,
        modulated: bool = False,
        offset_lr_mult: float = 1.0,
        norm_layer: str | Callable[[int], nn.Module] = nn.BatchNorm2d,
        base_channels: int = 64,
        frozen_stages: int = -1,
        block: str | Block = "bottleneck",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        block = _block(block)
        base_channels = count(base_channels, "base_channels")
        in_chans = count(in_chans, "in_chans")
        num_classes = count(num_classes, "num_classes", minimum=0)
        output_stride = integer(output_stride, "output_stride")
        # the deformable layers' options are checked even with no deformable block
        offset_groups = count(offset_groups, "offset_groups")
        modulated = boolean(modulated, "modulated")
        check_offset_lr_mult(offset_lr_mult)
        zero_init_residual = boolean(zero_init_residual, "zero_init_residual")
        layers = counts(layers, "layers", length=4)
        # an entry 1.5 was truncated by range() (one deformable conv) and True taken as 1
        deform_blocks = counts(deform_blocks, "deform_blocks", minimum=0, length=4)
        convs = tuple(n * block.convs for n in layers)
        if any(d > n for d, n in zip(deform_blocks, convs, strict=True)):
            raise ValueError(
                f"deform_blocks must give 0..n deformable 3x3 convs for each of the 4 stages "
                f"(n = {convs}: {block.convs} per {block.__name__}), got {deform_blocks}"
            )
        frozen_stages = integer(frozen_stages, "frozen_stages")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in -1..4, got {frozen_stages!r}")
        if zero_init_residual and frozen_stages >= 1:
            raise ValueError(
                f"zero_init_residual with frozen_stages={frozen_stages} would leave the frozen "
                "blocks' residual branches at zero for good; load pretrained weights instead")
        norm_layer = _norm_layer(norm_layer)
        self.layers = layers
        self.deform_blocks = deform_blocks
        self.output_stride = output_stride
        self.num_classes = num_classes
        deform_layer = functools.partial(DeformConv2d, offset_groups=offset_groups,
                                         modulated=modulated, offset_lr_mult=offset_lr_mult)

        self.conv1 = nn.Conv2d(in_chans, base_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(base_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = base_channels
        self.stage_channels: list[int] = []  # output channels of stages 1..4
        plan = zip(_stage_strides(output_stride), layers, deform_blocks, strict=True)
        for i, ((stride, dilation), blocks, deformable) in enumerate(plan):
            planes = base_channels * 2**i
            stage = _make_stage(block, inplanes, planes, blocks, stride, dilation, deformable,
                                deform_layer, norm_layer)
            self.add_module(f"layer{i + 1}", stage)
            inplanes = planes * block.expansion
            self.stage_channels.append(inplanes)
        self.num_features = inplanes
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes) if num_classes else nn.Identity()
        self.zero_init_residual = zero_init_residual
        self.reset_parameters()
        self.frozen_stages = frozen_stages
        for module in self.frozen_modules():
            module.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        """The stem and stages 1..frozen_stages (none for -1)."""
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1, *self.stages()[: self.frozen_stages]]

    def train(self, mode: bool = True) -> ResNet:
        """As ``nn.Module.train``, but frozen modules stay in eval mode: their BatchNorm
        keeps its running statistics, and normalises with them, as a frozen stage should."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def reset_parameters(self) -> None:
        """torchvision's init (He normal, fan_out; zero-gamma residual norms if asked),
        offset branches back to zero."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, DeformConv2dBase)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.zero_init_residual:
            for stage in self.stages():
                for block in stage:
                    nn.init.zeros_(_trainable_gamma(block.last_norm()))
        for m in self.modules():
            if isinstance(m, OffsetBranchMixin):
                m.zero_init_offsets()

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Outputs of stages 1-4 (res2..res5), from (N, C2, H/4, W/4) to
        (N, num_features, H/s, W/s)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for stage in self.stages():
            x = stage(x)
            outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, in_chans, H, W) -> (N, num_features, H/s, W/s), s = output_stride."""
        return self.forward_stages(x)[-1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x).flatten(1)  # (N, num_features)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def load_backbone_state_dict(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Load a torchvision ResNet state_dict; see :func:`load_backbone_state_dict`."""
        return load_backbone_state_dict(self, state_dict)


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: ResNet) -> dict[str, Tensor]:
    """Map a torchvision ResNet state_dict (or a DataParallel one) onto ``model``'s keys.

    Drops a ``module.`` prefix, the classifier when ``model`` has none or a different
    number of classes, and BN batch counters a frozen BN has no room for; every other
    tensor must exist in ``model`` with the same shape.
    """
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    mismatched = []
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith("fc.") and (key not in own or own[key].shape != value.shape):
            continue
        if key.endswith(".num_batches_tracked") and key not in own:
            continue  # frozen BN keeps no counter
        if key not in own or own[key].shape != value.shape:
            expected = tuple(own[key].shape) if key in own else "absent"
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)}, model {expected}")
            continue
        out[key] = value
    if mismatched:
        raise ValueError("state_dict does not fit the ResNet:\n  " + "\n  ".join(mismatched))
    return out


def load_backbone_state_dict(model: ResNet, state_dict: Mapping[str, Tensor]) -> list[str]:
    """Load a torchvision ResNet state_dict into ``model``, strict on every backbone tensor.

    Returns:
        Keys left at their initial value: the offset branches (zero) and, when the
        checkpoint's classifier does not fit, ``fc.*``. Any other missing key raises.
    """
    filtered = checkpoint_filter_fn(state_dict, model)
    missing = model.load_state_dict(filtered, strict=False).missing_keys
    allowed = offset_state_keys(model) | {k for k in missing if k.startswith("fc.")}
    absent = [k for k in missing if k not in allowed]
    if absent:
        raise ValueError(f"state_dict lacks backbone tensors: {absent}")
    return missing


def _resnet(name: str, layers: tuple[int, int, int, int], num_classes: int, deformable: bool,
            kwargs: dict[str, Any], block: str = "bottleneck") -> ResNet:
    """The ResNet of entry point ``name``; its name fixes ``layers`` and ``block``."""
    for fixed in ("block", "layers"):
        if fixed in kwargs:
            raise ValueError(
                f"{name} is a {block}-block ResNet with layers {layers}, so {fixed} is not one "
                f"of its options, got {fixed}={kwargs[fixed]!r}; build ResNet(layers, "
                "num_classes, block=...) directly for another")
    kwargs.setdefault("deform_blocks", PAPER_DEFORM_BLOCKS)
    if not boolean(deformable, "deformable"):
        kwargs["deform_blocks"] = PLAIN_DEFORM_BLOCKS
    return ResNet(layers, num_classes, block=block, **kwargs)


@register_model("classification")
def resnet18(num_classes: int = 1000, deformable: bool = True, **kwargs) -> ResNet:
    """ResNet-18 (basic blocks); deformable: the last three 3×3 convs of res5, as the paper's
    res5 (``deform_blocks=(0, 0, 0, 3)``; res5 has four).

    ``forward(images (N, 3, H, W)) -> logits (N, num_classes)``. ``deformable=False`` is
    the plain twin whatever ``deform_blocks`` says. ``kwargs`` are :class:`ResNet` options
    but ``layers`` and ``block``, which the name fixes (``ValueError``).
    """
    return _resnet("resnet18", (2, 2, 2, 2), num_classes, deformable, kwargs, "basic")


@register_model("classification")
def resnet34(num_classes: int = 1000, deformable: bool = True, **kwargs) -> ResNet:
    """ResNet-34 (basic blocks), otherwise as :func:`resnet18`."""
    return _resnet("resnet34", (3, 4, 6, 3), num_classes, deformable, kwargs, "basic")


@register_model("classification")
def resnet50(num_classes: int = 1000, deformable: bool = True, **kwargs) -> ResNet:
    """ResNet-50; deformable: the three res5 3×3 convs (``deform_blocks=(0, 0, 0, 3)``).

    ``forward(images (N, 3, H, W)) -> logits (N, num_classes)``. ``deformable=False`` is
    the plain twin whatever ``deform_blocks`` says. ``kwargs`` are :class:`ResNet` options
    but ``layers`` and ``block``, which the name fixes (``ValueError``).
    """
    return _resnet("resnet50", (3, 4, 6, 3), num_classes, deformable, kwargs)


@register_model("classification")
def resnet101(num_classes: int = 1000, deformable: bool = True, **kwargs) -> ResNet:
    """ResNet-101, otherwise as :func:`resnet50`."""
    return _resnet("resnet101", (3, 4, 23, 3), num_classes, deformable, kwargs)
