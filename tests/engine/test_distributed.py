"""Single-process behaviour of the distributed helpers and device resolution."""

from __future__ import annotations

import pytest
import torch

from deformconv.engine import DistInfo, init_distributed, resolve_device
from deformconv.engine.distributed import all_gather_objects, all_reduce_sum


def test_without_torchrun_everything_is_local(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert info.is_main and not info.distributed
    assert not torch.distributed.is_initialized()
    t = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert all_gather_objects({"a": 1}) == [{"a": 1}]


def test_resolve_device():
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("cpu", local_rank=3) == torch.device("cpu")
    count = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"device cuda:{count} \(LOCAL_RANK={count}\) does not "
                                         rf"exist: {count} CUDA device\(s\) visible"):
        resolve_device("cuda", local_rank=count)
    with pytest.raises(ValueError, match="device must be 'auto' or a torch device string, got "
                                         "'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.parametrize("device", ["mps", "xpu:0", "meta"])
def test_a_device_this_machine_lacks_is_refused_up_front(device):
    """Only CUDA was checked: --device mps gave torch's traceback ("PyTorch is not linked
    with support for mps devices"), meta failed in the first step after making the folder."""
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() \
        else None
    if accelerator is not None and accelerator.type == device.split(":")[0]:
        pytest.skip(f"this machine has {device}")
    with pytest.raises(ValueError, match=rf"device '{device}' is not available here: this "
                                         r"machine and torch build offer cpu"):
        resolve_device(device)
