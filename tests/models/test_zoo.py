"""Every registered model: plain-twin equivalence at init, a training step, eval outputs.

Models are built tiny (stem width 8, narrow heads, 64×80 images) so the suite stays fast;
the architecture code is the same as at full size. The ResNet-101 entry points differ from
the ResNet-50 ones only in blocks per stage, which ``test_resnet101_entry_points`` checks
without running them.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deformconv import models
from deformconv.models.resnet import BasicBlock, Bottleneck, ResNet
from deformconv.nn import DeformConv2d, OffsetBranchMixin, offset_param_groups, offset_state_keys

pytest.importorskip("torchvision")

NUM_CLASSES = 3
HEIGHT, WIDTH = 64, 80
DETECTION = {
    "min_size": HEIGHT, "max_size": WIDTH, "rpn_pre_nms_top_n_train": 100,
    "rpn_post_nms_top_n_train": 20, "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 20, "box_batch_size_per_image": 16, "box_score_thresh": -1.0,
}


def _tiny_kwargs(name: str) -> dict:
    task = models.model_task(name)
    if task == "classification":
        return {"base_channels": 8}
    backbone = {"backbone_kwargs": {"base_channels": 8}}
    if task == "segmentation":
        return {**backbone, "head_channels": 16}
    head = {"representation_size": 32} if name.startswith("faster_rcnn") else {}
    return {**backbone, **DETECTION, **head, "head_channels": 16}


def _build(name: str, deformable: bool = True) -> nn.Module:
    model = models.create(name, NUM_CLASSES, deformable=deformable, **_tiny_kwargs(name))
    # Random weights under frozen BN let activations double with every residual block;
    # damping the residual branches keeps outputs in a range where scores do not saturate.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (BasicBlock, Bottleneck)):
                module.last_norm().weight.mul_(0.2)
    return model


def _images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, HEIGHT, WIDTH)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 75.0, 60.0]]),
         "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 44.0]]), "labels": torch.tensor([2])},
    ]


def _forward(model: nn.Module, name: str, images: torch.Tensor):
    return model(list(images)) if models.model_task(name) == "detection" else model(images)


def _losses(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    task = models.model_task(name)
    images = _images()
    if task == "detection":
        return model(list(images), _targets())
    if task == "segmentation":
        masks = torch.randint(0, NUM_CLASSES, (2, HEIGHT, WIDTH))
        masks[:, :8] = 255
        return model(images, masks)
    return {"loss_cls": nn.functional.cross_entropy(model(images), torch.tensor([0, 2]))}


def test_registry_names_and_tasks():
    assert models.list_models() == sorted(
        [f"{arch}_resnet{depth}" if arch else f"resnet{depth}"
         for arch in ("", "deeplab", "faster_rcnn", "rfcn") for depth in (18, 34, 50, 101)]
        + ["compact_fcn"]
    )
    assert models.list_models("detection") == [
        f"{arch}_resnet{depth}" for arch in ("faster_rcnn", "rfcn") for depth in (101, 18, 34, 50)]
    with pytest.raises(ValueError, match="unknown model 'resnet152'; available: compact_fcn, "):
        models.create("resnet152", 10)
    with pytest.raises(ValueError, match="task must be one of"):
        models.list_models("tracking")
    with pytest.raises(TypeError, match="rpn_nms"):
        models.create("rfcn_resnet50", 3, rpn_nms=0.5)


NAMES_50 = [name for name in models.list_models() if name.endswith("resnet50")]


def _task_names(task: str) -> list[str]:
    return [name for name in NAMES_50 if models.model_task(name) == task]


@pytest.mark.parametrize("name", [n for n in models.list_models() if n.endswith("resnet101")])
def test_resnet101_entry_points(name):
    big = models.create(name, NUM_CLASSES, **_tiny_kwargs(name))
    small = models.create(name.replace("101", "50"), NUM_CLASSES, **_tiny_kwargs(name))
    body = big if isinstance(big, ResNet) else getattr(big.backbone, "body", big.backbone)
    assert [len(stage) for stage in body.stages()] == [3, 4, 23, 3]
    assert type(big) is type(small)
    # Same modules apart from the extra res4 blocks.
    extra = {f"layer3.{i}." for i in range(6, 23)}
    names = {n for n, _ in big.named_modules() if not any(f"{e}" in f"{n}." for e in extra)}
    assert names == {n for n, _ in small.named_modules()}


@pytest.mark.parametrize("name", [n for n in models.list_models() if n.endswith(("18", "34"))])
def test_basic_block_entry_points(name):
    model = models.create(name, NUM_CLASSES, **_tiny_kwargs(name))
    bottleneck = models.create(name[:-2] + "50", NUM_CLASSES, **_tiny_kwargs(name))
    body = model if isinstance(model, ResNet) else getattr(model.backbone, "body", model.backbone)
    assert type(model) is type(bottleneck)
    assert [len(stage) for stage in body.stages()] == ([2] * 4 if name.endswith("18")
                                                       else [3, 4, 6, 3])
    assert all(isinstance(block, BasicBlock) for stage in body.stages() for block in stage)
    deformable = [n for n, m in body.named_modules() if isinstance(m, DeformConv2d)]
    assert deformable == ["layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"] if \
        name.endswith("18") else ["layer4.1.conv2", "layer4.2.conv1", "layer4.2.conv2"]


@pytest.mark.parametrize("name", [*NAMES_50, "deeplab_resnet18", "faster_rcnn_resnet18",
                                  "rfcn_resnet18"])
def test_zero_init_deformable_model_equals_plain_twin(name):
    deformable = _build(name).eval()
    plain = _build(name, deformable=False).eval()
    keys = offset_state_keys(deformable)
    assert any(isinstance(m, DeformConv2d) for m in deformable.modules())
    assert not any(isinstance(m, OffsetBranchMixin) for m in plain.modules())
    # Same architecture and names: the deformable weights minus offsets load strictly.
    plain.load_state_dict({k: v for k, v in deformable.state_dict().items() if k not in keys})
    images = _images()
    detection = models.model_task(name) == "detection"
    if detection:
        # Random-init scores nearly tie: in float32 the two paths' rounding differences
        # could reorder proposals or flip NMS on another CPU; float64 leaves no such ties.
        deformable, plain, images = deformable.double(), plain.double(), images.double()
    with torch.no_grad():
        out, twin = _forward(deformable, name, images), _forward(plain, name, images)
    if not detection:
        torch.testing.assert_close(out, twin, rtol=1e-4, atol=1e-5)
        return
    for ours, theirs in zip(out, twin, strict=True):
        assert len(ours["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", NAMES_50)
def test_training_step_moves_offset_branches(name):
    model = _build(name).train()
    losses = _losses(model, name)
    loss = sum(losses.values())
    assert all(math.isfinite(v.item()) for v in losses.values()), losses
    branches = [m for m in model.modules() if isinstance(m, OffsetBranchMixin)]
    before = [[p.detach().clone() for p in m.offset_parameters()] for m in branches]
    optimizer = torch.optim.SGD(offset_param_groups(model, lr=0.01))
    optimizer.zero_grad()
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None or not param.requires_grad, param_name
    optimizer.step()
    for module, old in zip(branches, before, strict=True):
        assert any(not torch.equal(p, q) for p, q in zip(module.offset_parameters(), old,
                                                         strict=True)), module


@pytest.mark.parametrize("name", _task_names("detection"))
def test_detection_outputs_in_torchvision_format(name):
    model = _build(name).train()
    assert set(_losses(model, name)) == {"loss_classifier", "loss_box_reg", "loss_objectness",
                                         "loss_rpn_box_reg"}
    model.eval()
    with torch.no_grad():
        detections = model([torch.rand(3, 50, 70), torch.rand(3, 64, 80)])
    assert len(detections) == 2
    for det, (height, width) in zip(detections, [(50, 70), (64, 80)], strict=True):
        assert set(det) == {"boxes", "labels", "scores"}
        count = len(det["boxes"])
        assert det["boxes"].shape == (count, 4) and det["boxes"].dtype == torch.float32
        assert det["labels"].dtype == torch.int64 and det["scores"].shape == (count,)
        assert ((det["labels"] >= 1) & (det["labels"] < NUM_CLASSES)).all()
        assert (det["boxes"][:, 2:] <= torch.tensor([width, height])).all()
    with pytest.raises(AssertionError, match="targets should not be none"):
        model.train()(list(_images()))


@pytest.mark.parametrize("name", _task_names("segmentation"))
def test_segmentation_outputs_and_loss(name):
    model = _build(name).eval()
    images = _images()
    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (2, NUM_CLASSES, HEIGHT, WIDTH)
        assert torch.equal(model.predict(images), logits.argmax(1))
    masks = torch.full((2, HEIGHT, WIDTH), 255)
    masks[0, 0, 0] = 1
    expected = nn.functional.cross_entropy(logits[:1, :, :1, :1], torch.tensor([[[1]]]))
    torch.testing.assert_close(model.loss(logits, masks), expected)
    empty = model.loss(logits.requires_grad_(), torch.full((2, HEIGHT, WIDTH), 255))
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="targets must be"):
        model.loss(logits, masks[:, :10])


@pytest.mark.parametrize("name", _task_names("classification"))
def test_classification_logits(name):
    model = _build(name).eval()
    with torch.no_grad():
        assert model(_images()).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", ["faster_rcnn_resnet50", "rfcn_resnet50", "deeplab_resnet50"])
def test_modulated_variants_train(name):
    kwargs = _tiny_kwargs(name)
    kwargs["backbone_kwargs"] = {**kwargs["backbone_kwargs"], "modulated": True}
    if models.model_task(name) == "detection":
        kwargs["modulated_head"] = True
    model = models.create(name, NUM_CLASSES, **kwargs).train()
    branches = [m for m in model.modules() if isinstance(m, OffsetBranchMixin)]
    assert branches and all(m.modulated for m in branches)
    loss = sum(_losses(model, name).values())
    assert math.isfinite(loss.item())
    loss.backward()
    for module in branches:
        assert any(p.grad.abs().sum() > 0 for p in module.offset_parameters()), module


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("name", ["resnet50", "deeplab_resnet50", "rfcn_resnet50"])
def test_channels_last_model_matches_the_contiguous_one(name, float64_default):
    """``create(..., channels_last=True)``: the same state dict, conv weights and image
    batches stored channels-last, and the same losses and gradients (in float64: in float32
    the two layouts' summation orders differ by up to 1 % after 50 layers of batch norm)."""
    torch.manual_seed(0)
    contiguous = _build(name).train()
    torch.manual_seed(0)
    model = models.create(name, NUM_CLASSES, channels_last=True, **_tiny_kwargs(name))
    model.load_state_dict(contiguous.state_dict())
    model.train()
    assert model.state_dict().keys() == contiguous.state_dict().keys()
    convs = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, DeformConv2d))]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    spatial = [w for w in convs if w.shape[2:] != (1, 1)]  # 1×1 ones are both layouts
    assert spatial and not any(w.is_contiguous() for w in spatial)
    if models.model_task(name) != "detection":
        seen = []
        hook = model.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        model(_images())
        hook.remove()
        assert seen[0].is_contiguous(memory_format=torch.channels_last)
    results = []
    for net in (contiguous, model):
        torch.manual_seed(1)  # the detectors sample RoIs at random
        loss = sum(_losses(net, name).values())
        loss.backward()
        results.append((loss, {n: p.grad for n, p in net.named_parameters()
                               if p.grad is not None}))
    (want_loss, want), (got_loss, got) = results
    assert got_loss.dtype == torch.float64
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-9, atol=1e-9)
    assert got.keys() == want.keys()
    for key, grad in got.items():
        scale = max(1.0, want[key].abs().max().item())
        torch.testing.assert_close(grad, want[key], rtol=1e-7, atol=1e-8 * scale, msg=key)


def test_the_package_docstring_says_which_models_load_backbone_checkpoints():
    """It said every model has load_backbone_state_dict; compact_fcn (no ResNet) has none."""
    resnet_based = set(models.list_models()) - {"compact_fcn"}
    assert all(hasattr(_build(name), "load_backbone_state_dict") for name in resnet_based)
    assert not hasattr(models.create("compact_fcn", 3), "load_backbone_state_dict")
    assert "Every ResNet-based model (all but ``compact_fcn``) has" in " ".join(
        models.__doc__.split())
