"""The trainer's cross-entropy losses (engine.tasks): F.cross_entropy's values, compiled."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deformconv import models
from deformconv.engine import compute_loss
from deformconv.engine.tasks import _cross_entropy, _segmentation_loss, ignore_index_of

IGNORE = 255
WEIGHTS = torch.tensor([0.3, 1.7, 0.0, 2.5])  # class 2 weighs nothing


def _segmentation_batch(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse logits (upsampled by the loss) and masks as the demo's, smaller: 10 % ignored;
    "all ignored"; "zero weight": every labelled pixel of class 2."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 4, 8, 8, generator=generator) * 3
    masks = torch.randint(0, 4, (4, 32, 32), generator=generator)
    masks[torch.rand(masks.shape, generator=generator) < 0.1] = IGNORE
    if case == "all ignored":
        masks.fill_(IGNORE)
    elif case == "zero weight":
        masks[masks != IGNORE] = 2
    return logits, masks


def _classification_batch(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 4, generator=generator) * 3
    targets = torch.randint(0, 4, (16,), generator=generator)
    if case == "zero weight":
        targets.fill_(2)
    return logits, targets


def _value_and_grad(loss, logits: torch.Tensor, targets: torch.Tensor,
                    weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = logits.clone().requires_grad_()
    value = loss(leaf, targets, weight)
    value.backward()
    return value.detach(), leaf.grad


def _upsampled_cross_entropy(logits, masks, weight):
    """What the segmentation loss computed for a batch with a labelled pixel of weight > 0."""
    logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), masks, weight=weight, ignore_index=IGNORE)


# (task, batch, weighted); classification has no ignored targets, and "zero weight" needs
# class weights
CASES = [("segmentation", "normal", False), ("segmentation", "normal", True),
         ("segmentation", "all ignored", False), ("segmentation", "all ignored", True),
         ("segmentation", "zero weight", True), ("classification", "normal", False),
         ("classification", "normal", True), ("classification", "zero weight", True)]


@pytest.mark.parametrize(("task", "case", "weighted"), CASES)
def test_the_loss_compiles_as_one_graph_with_eager_values_and_gradients(task, case,
                                                                        weighted) -> None:
    """A Python branch on whether any target weighs anything failed
    torch.compile(fullgraph=True) ('Could not guard on data-dependent expression'). The loss
    is cross_entropy's mean bit for bit (forward and gradient; the demo trains with it), and
    0 with a zero gradient where that mean would be 0/0 = nan."""
    logits, targets = (_segmentation_batch if task == "segmentation"
                       else _classification_batch)(case)
    weight = WEIGHTS if weighted else None
    loss = _segmentation_loss if task == "segmentation" else _cross_entropy
    value, grad = _value_and_grad(loss, logits, targets, weight)
    if case == "normal":
        reference = (_upsampled_cross_entropy if task == "segmentation"
                     else lambda x, t, w: F.cross_entropy(x, t, weight=w))
        expected, expected_grad = _value_and_grad(reference, logits, targets, weight)
        assert torch.equal(value, expected) and torch.equal(grad, expected_grad)
    else:
        assert value.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    compiled_value, compiled_grad = _value_and_grad(compiled, logits, targets, weight)
    torch.testing.assert_close(compiled_value, value)
    torch.testing.assert_close(compiled_grad, grad)


def test_class_255_of_a_classification_is_not_ignored() -> None:
    """255 is the ignored id of segmentation masks only."""
    logits = torch.zeros(2, 300)
    loss, _ = compute_loss("classification", lambda images: logits, None, torch.tensor([255, 0]))
    assert loss.item() == pytest.approx(torch.log(torch.tensor(300.0)).item())


def test_segmentation_leaves_out_the_models_ignore_index() -> None:
    """The loss used 255 whatever the model's ignore_index: with 0 it counted class 0's
    pixels (1.1252 against the model's own loss of 1.1170)."""
    torch.manual_seed(0)
    model = models.create("compact_fcn", 3, ignore_index=0)
    images, masks = torch.rand(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))
    loss, _ = compute_loss("segmentation", model, images, masks)
    assert loss.item() == pytest.approx(model(images, masks)["loss_seg"].item(), rel=1e-6)
    # 255 is then a class id the model cannot score: VOC's borders are refused, not ignored
    masks[0, 0, 0] = 255
    with pytest.raises(ValueError, match=re.escape(
            "outside [0, 3) other than 0 (ignored), the model's 3 outputs: [255]; 255 (VOC's "
            "void) is not ignored: the model's ignore_index is 0")):
        compute_loss("segmentation", model, images, masks)


def test_ignore_index_of_a_model_wrapped_or_without_one() -> None:
    model = nn.Conv2d(3, 2, 1)
    assert ignore_index_of(model) == ignore_index_of(None) == 255
    model.ignore_index = 0
    assert ignore_index_of(nn.DataParallel(model)) == 0
    model.ignore_index = 0.5
    with pytest.raises(TypeError, match=r"the model's ignore_index must be an int, got 0\.5"):
        ignore_index_of(model)
