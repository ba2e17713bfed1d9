"""TrainConfig validation, offset-aware parameter groups, SGD/AdamW and the lr schedules."""

from __future__ import annotations

import math

import pytest
import torch
from _engine_toys import TinyClassifier
from torch import nn

from deformconv.engine import (
    OPTIMIZERS,
    SCHEDULES,
    TrainConfig,
    build_optimizer,
    build_scheduler,
    decay_start,
    lr_factor,
    param_groups,
)


class TestTrainConfig:
    def test_every_optimizer_and_schedule_the_engine_names_is_accepted(self):
        """OPTIMIZERS and SCHEDULES, the choices TrainConfig documents, came only from
        deformconv.engine.config."""
        for optimizer in OPTIMIZERS:
            for schedule in SCHEDULES:
                TrainConfig(optimizer=optimizer, schedule=schedule, milestones=[1])

    @pytest.mark.parametrize(
        ("field", "value", "match"),
        [
            ("task", "pose", "task must be one of"),
            ("schedule", "linear", "schedule must be one of"),
            ("optimizer", "adam", "optimizer must be one of"),
            ("batch_size", 0, "batch_size must be finite and > 0, got 0"),
            ("lr", -0.1, "lr must be finite and > 0"),
            # infinite values passed the comparisons
            ("lr", math.inf, "lr must be finite and > 0, got inf"),
            ("offset_lr_mult", math.inf, "offset_lr_mult must be finite and >= 0, got inf"),
            ("weight_decay", math.inf, "weight_decay must be finite and >= 0, got inf"),
            ("lr_mults", {"conv.": math.inf}, "lr_mults must map .* prefixes to finite"),
            ("class_weights", [1.0, math.inf], "class_weights must be a non-empty list of finite"),
            ("iterations", 0, "iterations must be finite and > 0"),
            ("offset_lr_mult", -1.0, "offset_lr_mult must be finite and >= 0"),
            ("warmup_factor", 0.0, "warmup_factor must be in"),
            ("milestones", [5, 3], "milestones must be positive and strictly increasing"),
            # passed sorted(): lr_factor(3) was gamma**2 at a repeated milestone 3
            ("milestones", [3, 3], r"milestones must be positive and strictly increasing, "
             r"got \[3, 3\]"),
            ("milestones", [0, 3], "milestones must be positive and strictly increasing"),
            ("grad_clip_norm", 0.0, "grad_clip_norm must be finite and > 0"),
            ("log_every", 0, "log_every must be >= 1"),
            ("momentum", 1.0, r"momentum must be in \[0, 1\), got 1.0"),
            ("lr_mults", {"conv.": -0.5}, "lr_mults must map parameter-name prefixes"),
            # types, as a YAML file gives them ("1e-3" is a string to PyYAML); these used
            # to fail later without the field's name, or to pass (5.5 iterations ran 6)
            ("lr", "1e-3", r"^lr must be a number, got '1e-3' \(str\)$"),
            ("checkpoint_every", "10", r"^checkpoint_every must be an int, got '10' \(str\)$"),
            ("iterations", 5.5, r"^iterations must be an int or None, got 5\.5 \(float\)$"),
            ("bf16", "no", r"^bf16 must be true or false, got 'no' \(str\)$"),
            ("class_weights", [1, "a"], r"^class_weights must be a list of numbers or None"),
        ],
    )
    def test_bad_values_name_the_field(self, field, value, match):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**{field: value})

    def test_dict_round_trip_and_unknown_keys(self):
        config = TrainConfig(task="segmentation", milestones=[10, 20], bf16=True)
        assert TrainConfig.from_dict(config.to_dict()) == config
        with pytest.raises(ValueError, match=r"unknown config key\(s\) \['learning_rate'\]"):
            TrainConfig.from_dict({"learning_rate": 0.1})


class TestParamGroups:
    def test_offset_parameters_get_reduced_lr(self):
        model = TinyClassifier()
        groups = param_groups(model, lr=0.2, offset_lr_mult=0.1)
        assert [g["lr"] for g in groups] == [0.2, pytest.approx(0.02)]
        offset_ids = {id(p) for p in model.offset_conv.parameters()}
        assert {id(p) for p in groups[1]["params"]} == offset_ids
        assert len(groups[0]["params"]) == 4  # conv and head, weight + bias each

    def test_name_prefixes_set_multipliers_and_offsets_keep_theirs(self):
        model = TinyClassifier()
        groups = param_groups(model, lr=0.2, offset_lr_mult=0.1,
                              lr_mults={"conv.": 0.5, "co": 3.0, "offset_conv.": 7.0})
        assert [(g["lr_mult"], len(g["params"])) for g in groups] == [
            (0.5, 2), (1.0, 2), (0.1, 2)]  # first match wins; offsets last, at their rate
        assert groups[0]["lr"] == pytest.approx(0.1)
        assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.conv.parameters()}
        config = TrainConfig(optimizer="adamw", lr=0.2, lr_mults={"head.": 0.0})
        optimizer = build_optimizer(model, config)
        assert sorted(g["lr"] for g in optimizer.param_groups) == pytest.approx([0.0, 0.02, 0.2])

    def test_without_one_multiplier_each_layer_keeps_its_own(self):
        """offset_lr_mult=None: each offset branch's own multiplier, as in a Faster R-CNN
        with the paper's 0.01 for its RoI pooling fc and 1 for its deformable convs (a
        model's own multipliers used to be ignored: every parameter named *offset* got the
        config's)."""
        model = TinyClassifier(offset_lr_mult=0.25)
        groups = param_groups(model, lr=0.2, offset_lr_mult=None)
        assert [(g["lr_mult"], len(g["params"])) for g in groups] == [(1.0, 4), (0.25, 2)]
        from deformconv import models

        detector = models.create("faster_rcnn_resnet18", 3, backbone_kwargs={
            "base_channels": 8, "deform_blocks": [0, 0, 0, 1]})
        names = {id(p): n for n, p in detector.named_parameters()}
        by_mult = {g["lr_mult"]: {names[id(p)] for p in g["params"]}
                   for g in build_optimizer(detector, TrainConfig(offset_lr_mult=None))
                   .param_groups}
        assert sorted(by_mult) == [0.01, 1.0]
        assert by_mult[0.01] == {n for n in names.values() if ".offset_fc." in n}
        assert sum(".conv_offset." in n for n in by_mult[1.0]) == 2
        one = build_optimizer(detector, TrainConfig(offset_lr_mult=0.1)).param_groups
        assert [g["lr_mult"] for g in one] == [1.0, 0.1]
        assert len(one[1]["params"]) == len(by_mult[0.01]) + 2

    def test_frozen_parameters_left_out_and_no_empty_group(self):
        model = nn.Linear(2, 2)
        model.bias.requires_grad_(False)
        groups = param_groups(model, lr=0.1, offset_lr_mult=0.1)
        assert len(groups) == 1 and groups[0]["params"] == [model.weight]

    def test_model_param_groups_method_is_preferred(self):
        class Custom(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

            def param_groups(self, base_lr):
                return [{"params": self.a.parameters(), "lr": base_lr},
                        {"params": self.b.parameters(), "lr": base_lr * 0.5}]

        groups = param_groups(Custom(), lr=0.4, offset_lr_mult=0.1)
        assert [g["lr"] for g in groups] == [0.4, 0.2]

    def test_bad_model_param_groups_raises(self):
        class Bad(nn.Linear):
            def param_groups(self, base_lr):
                return []

        with pytest.raises(TypeError, match="must return a non-empty list"):
            param_groups(Bad(2, 2), lr=0.1, offset_lr_mult=0.1)

    def test_optimizer_uses_config(self):
        config = TrainConfig(lr=0.3, momentum=0.8, weight_decay=1e-3, offset_lr_mult=0.5)
        opt = build_optimizer(TinyClassifier(), config)
        assert isinstance(opt, torch.optim.SGD)
        assert [(g["lr"], g["momentum"], g["weight_decay"]) for g in opt.param_groups] == [
            (0.3, 0.8, 1e-3), (0.15, 0.8, 1e-3)]

    def test_adamw_uses_config(self):
        config = TrainConfig(optimizer="adamw", lr=2e-3, weight_decay=0.05, offset_lr_mult=1.0)
        opt = build_optimizer(TinyClassifier(), config)
        assert isinstance(opt, torch.optim.AdamW)
        assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
            (2e-3, 0.05), (2e-3, 0.05)]


class TestSchedule:
    def test_warmup_then_steps(self):
        config = TrainConfig(warmup_iters=4, warmup_factor=0.2, milestones=[6, 8], gamma=0.5)
        # warm-up: 0.2 * (1 - i/4) + i/4 for i < 4; then 1, and 0.5 ** (milestones passed)
        expected = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
        got = [lr_factor(i, config, total_iters=10) for i in range(10)]
        assert got == pytest.approx(expected)

    def test_cosine_with_floor(self):
        config = TrainConfig(schedule="cosine", min_lr_ratio=0.1)
        total = 8
        for i in (0, 2, 4, 6, 8):
            expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / total))
            assert lr_factor(i, config, total) == pytest.approx(expected)
        assert lr_factor(4, config, total) == pytest.approx(0.55)

    def test_onecycle_warms_up_then_anneals_over_the_rest(self):
        config = TrainConfig(schedule="onecycle", warmup_iters=2, warmup_factor=0.5,
                             min_lr_ratio=0.0)
        total = 6  # warm-up 0, 1; cosine over iterations 2..6
        got = [lr_factor(i, config, total) for i in range(total + 1)]
        cosine = [0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(5)]
        assert got == pytest.approx([0.5, 0.75, *cosine])
        assert got[2] == 1.0 and got[-1] == pytest.approx(0.0, abs=1e-12)

    def test_onecycle_stretches_with_the_run(self):
        """The same shape at any length: a run twice as long reaches each lr twice as late."""
        short = TrainConfig(schedule="onecycle", warmup_iters=10)
        long = TrainConfig(schedule="onecycle", warmup_iters=20)
        for i in range(0, 100, 7):
            assert lr_factor(2 * i, long, 200) == pytest.approx(lr_factor(i, short, 100))

    def test_wsd_warms_up_holds_then_decays_linearly(self):
        config = TrainConfig(schedule="wsd", warmup_iters=2, warmup_factor=0.5,
                             decay_share=0.4, min_lr_ratio=0.2)
        total = 10  # decay over iterations 6..10 from 1 to 0.2
        got = [lr_factor(i, config, total) for i in range(total + 1)]
        assert got == pytest.approx([0.5, 0.75, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2])
        assert decay_start(total, config.decay_share) == 6

    def test_wsd_longer_run_shares_the_shorter_ones_schedule_until_its_decay(self):
        """What lets a longer run continue a shorter one's checkpoint from its decay start."""
        config = TrainConfig(schedule="wsd", warmup_iters=5)
        for short, long in ((100, 101), (100, 173), (7, 8)):
            start = decay_start(short, config.decay_share)
            assert decay_start(long, config.decay_share) >= start
            assert [lr_factor(i, config, long) for i in range(start + 1)] == [
                lr_factor(i, config, short) for i in range(start + 1)]
        assert decay_start(3, 0.01) == 2  # at least one decaying step

    def test_decay_share_checked(self):
        with pytest.raises(ValueError, match="decay_share must be in"):
            TrainConfig(decay_share=0.0)

    def test_scheduler_keeps_offset_ratio(self):
        config = TrainConfig(lr=1.0, offset_lr_mult=0.1, milestones=[2], gamma=0.1)
        opt = build_optimizer(TinyClassifier(), config)
        sched = build_scheduler(opt, config, total_iters=4)
        lrs = []
        for _ in range(3):
            lrs.append([g["lr"] for g in opt.param_groups])
            opt.step()
            sched.step()
        assert lrs == [pytest.approx([1.0, 0.1]), pytest.approx([1.0, 0.1]),
                       pytest.approx([0.1, 0.01])]


def test_lr_mults_prefixes_that_match_nothing_are_refused():
    """A typo used to train the whole model at the full rate without a word."""
    with pytest.raises(ValueError, match=r"lr_mults prefixes \['backbone\.'\] match no "
                                         r"parameter of TinyClassifier"):
        param_groups(TinyClassifier(), 0.1, None, {"conv.": 0.5, "backbone.": 0.1})


def test_a_wrapper_keeping_its_net_as_module_gets_all_its_parameters():
    """Only DDP and DataParallel are unwrapped: a user's wrapper with its own head and the
    net as ``.module`` used to lose the head's parameters from the optimizer."""
    wrapper = nn.Module()
    wrapper.module, wrapper.head = TinyClassifier(), nn.Linear(3, 2)
    grouped = {id(p) for g in param_groups(wrapper, 0.1, None) for p in g["params"]}
    assert grouped == {id(p) for p in wrapper.parameters()}
