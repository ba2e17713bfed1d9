"""The registered models on a GPU (Triton ops): same outputs as on the CPU, and a
training step. Skipped without CUDA."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from deformconv import models
from deformconv.nn import OffsetBranchMixin

from .test_zoo import NAMES_50, _build, _forward, _images, _targets

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return [_to(v, device) for v in value]


@pytest.mark.parametrize("name", NAMES_50)
def test_cuda_matches_cpu_in_eval(name):
    cpu = _build(name).eval()
    gpu = copy.deepcopy(cpu).cuda()
    images = _images()
    with torch.no_grad():
        expected = _forward(cpu, name, images)
        out = _forward(gpu, name, images.cuda())
    torch.testing.assert_close(_to(out, "cpu"), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", NAMES_50)
def test_cuda_training_step(name):
    model = _build(name).cuda().train()
    task = models.model_task(name)
    images = _images().cuda()
    if task == "detection":
        losses = model(list(images), _to(_targets(), "cuda"))
    elif task == "segmentation":
        losses = model(images, torch.randint(0, 3, (2, *images.shape[-2:]), device="cuda"))
    else:
        labels = torch.tensor([0, 2], device="cuda")
        losses = {"loss": torch.nn.functional.cross_entropy(model(images), labels)}
    loss = sum(losses.values())
    assert math.isfinite(loss.item())
    loss.backward()
    for module in model.modules():
        if isinstance(module, OffsetBranchMixin):
            assert any(p.grad.abs().sum() > 0 for p in module.offset_parameters()), module
