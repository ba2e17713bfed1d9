"""Seeding, RNG snapshots and samplers: the pieces that make data order resumable."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from _engine_toys import ToyClassification

from deformconv.engine import (
    SeededSamples,
    ShardSampler,
    TrainSampler,
    get_rng_state,
    iters_per_epoch,
    seed_everything,
    set_rng_state,
    train_loader,
)
from deformconv.engine.seeding import sample_seed


def _draw() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_seed_everything_and_rng_snapshot():
    seed_everything(5)
    first = _draw()
    seed_everything(5)
    assert _draw() == first
    state = get_rng_state()
    after = _draw()
    assert _draw() != after
    set_rng_state(state)
    assert _draw() == after


def test_rng_snapshot_survives_weights_only_load(tmp_path):
    state = get_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = _draw()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draw() == expected


def test_sample_seed_is_a_fixed_mix():
    seeds = {sample_seed(0, e, i) for e in range(3) for i in range(100)}
    assert len(seeds) == 300 and all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(1, 2, 3) == sample_seed(1, 2, 3) != sample_seed(1, 3, 2)


def test_seeded_samples_repeat_and_leave_global_rng_alone():
    data = SeededSamples(ToyClassification(size=4), seed=1, epoch=0)
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    a = data[2][0]
    assert torch.equal(torch.rand(1), expected_next)  # global stream not consumed
    assert torch.equal(data[2][0], a)
    assert not torch.equal(SeededSamples(data.dataset, seed=1, epoch=1)[2][0], a)


class _ThreeGenerators(torch.utils.data.Dataset):
    """Samples drawn from torch's, numpy's and python's global RNGs."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> tuple:
        return _draw()


def test_seeded_batches_equal_seeded_samples_and_leave_every_rng_alone():
    data = SeededSamples(_ThreeGenerators(), seed=3, epoch=1)
    seed_everything(0)
    state = get_rng_state()
    expected_next = _draw()
    set_rng_state(state)
    batch = data.__getitems__([4, 1, 4])  # what a DataLoader fetches for a batch
    assert _draw() == expected_next  # no stream consumed or reseeded
    assert batch == [data[4], data[1], data[4]]
    assert batch[0] != batch[1]


class TestSamplers:
    def test_skip_continues_the_same_order(self):
        full = list(TrainSampler(range(10), world_size=1, rank=0, seed=3, epoch=2))
        assert sorted(full) == list(range(10))
        assert list(TrainSampler(range(10), 1, 0, seed=3, epoch=2, start=4)) == full[4:]
        assert list(TrainSampler(range(10), 1, 0, seed=3, epoch=3)) != full
        with pytest.raises(ValueError, match=r"start must be in \[0, 10\], got 11"):
            TrainSampler(range(10), 1, 0, seed=3, epoch=2, start=11)

    def test_ranks_interleave_the_single_process_order(self):
        # with no padding, rank r takes perm[r::2]: two ranks with batch B cover exactly
        # the samples of one process with batch 2B, batch by batch
        full = list(TrainSampler(range(12), 1, 0, seed=0, epoch=0))
        ranks = [list(TrainSampler(range(12), 2, r, seed=0, epoch=0)) for r in range(2)]
        assert ranks[0] == full[0::2] and ranks[1] == full[1::2]

    def test_shard_sampler_covers_each_index_once(self):
        shards = [list(ShardSampler(range(7), 3, r)) for r in range(3)]
        assert shards == [[0, 3, 6], [1, 4], [2, 5]]

    def test_iters_per_epoch(self):
        assert iters_per_epoch(20, 4) == 5
        assert iters_per_epoch(21, 4, world_size=2) == 2  # 11 per rank (padded)
        with pytest.raises(ValueError, match="3 samples, fewer than one batch of batch_size=4"):
            iters_per_epoch(3, 4)

    @pytest.mark.parametrize("num_workers", [0, 2])
    def test_resumed_loader_yields_the_remaining_batches(self, num_workers):
        data = ToyClassification(size=12)
        kw = {"seed": 7, "epoch": 1, "num_workers": num_workers}
        full = list(train_loader(data, "classification", 3, **kw))
        tail = list(train_loader(data, "classification", 3, start_batch=2, **kw))
        assert len(full) == 4 and len(tail) == 2
        for (xa, ya), (xb, yb) in zip(full[2:], tail, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batches_of_mixed_sizes_get_a_clear_error():
    data = [(torch.zeros(3, 4, 4), 0), (torch.zeros(3, 5, 4), 1)]
    loader = train_loader(data, "classification", 2, seed=0, epoch=0)
    shapes = r"shapes in this batch: \[\(3, 4, 4\), \(3, 5, 4\)\]; .* must share a size"
    with pytest.raises(RuntimeError, match=shapes):
        next(iter(loader))
