"""PixelClassifier: the segmentation models' loss, eager and compiled."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deformconv.models import CompactFCN

IGNORE = 255


def _reference_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss as it was: a Python branch on whether any pixel is labelled."""
    if not bool((targets != IGNORE).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets, ignore_index=IGNORE)


def _model(deform_layers: int = 0) -> CompactFCN:
    torch.manual_seed(0)
    return CompactFCN(3, widths=(4, 4), strides=(2, 1), deform_layers=deform_layers,
                      ignore_index=IGNORE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ignored", [0.0, 0.7, 1.0])
def test_loss_is_the_mean_over_labelled_pixels_and_zero_without_any(dtype, ignored) -> None:
    """Values and gradients as cross_entropy's mean; all ignored: 0 with a zero (not NaN)
    gradient."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 9, 11, generator=generator, dtype=dtype)
    targets = torch.randint(0, 3, (2, 9, 11), generator=generator)
    targets[torch.rand(targets.shape, generator=generator) < ignored] = IGNORE
    results = []
    for loss in (_model().loss, _reference_loss):
        leaf = logits.clone().requires_grad_()
        value = loss(leaf, targets)
        value.backward()
        results.append((value.detach(), leaf.grad))
    (value, grad), (expected, expected_grad) = results
    assert value.dtype == dtype
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, expected_grad)
    if ignored == 1.0:
        assert value.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))


def test_a_float16_loss_over_many_pixels_does_not_overflow() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 256, 256, generator=generator) * 4
    targets = torch.randint(0, 3, (1, 256, 256), generator=generator)
    loss = _model().loss(logits.half(), targets)
    assert loss.dtype == torch.float16
    torch.testing.assert_close(loss.float(), _reference_loss(logits, targets), rtol=2e-3,
                               atol=0)


def test_the_loss_path_compiles_as_one_graph() -> None:
    """A Python branch on whether any pixel is labelled failed torch.compile(fullgraph=True):
    'Could not guard on data-dependent expression'."""
    model = _model()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    images = torch.rand(1, 3, 16, 16)
    for targets in (torch.randint(0, 3, (1, 16, 16)), torch.full((1, 16, 16), IGNORE)):
        loss = compiled(images, targets)["loss_seg"]
        torch.testing.assert_close(loss, model(images, targets)["loss_seg"])
        loss.backward()
