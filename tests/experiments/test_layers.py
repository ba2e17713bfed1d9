"""experiments/layers.py (paper Table 1) in smoke mode, continued runs, and its report."""

from __future__ import annotations

import json

from exp_scripts import load, run_args

layers = load("layers")
make_results = load("make_results")


def _summary(out, task):
    return json.loads((out / f"layers_{task}" / "summary.json").read_text())


def test_segmentation_smoke_then_continued(tmp_path, capsys):
    assert layers.main(["--task", "segmentation", *run_args(tmp_path, "--layers", "0", "6")]) == 0
    summary = _summary(tmp_path, "segmentation")
    assert summary["mode"] == "smoke" and summary["metrics"] == ["miou", "pixel_acc"]
    rows = {r["layers"]: r for r in summary["rows"]}
    assert set(rows) == {0, 6} and rows[6]["deform_blocks"] == [0, 0, 2, 4]
    assert rows[6]["params"] > rows[0]["params"]
    for row in rows.values():
        assert 0.0 <= row["miou"]["mean"] <= 1.0 and row["miou"]["values"] == [row["miou"]["mean"]]
    folder = tmp_path / "layers_segmentation"
    assert not (folder / "layers6_seed0" / "last.pt").exists()  # deleted once done
    stamp = (folder / "layers6_seed0.json").stat().st_mtime_ns
    capsys.readouterr()

    # continuing: the two runs are read back, the new configuration is trained
    assert layers.main(["--task", "segmentation", *run_args(tmp_path, "--layers", "0", "6",
                                                             "3")]) == 0
    printed = capsys.readouterr().out
    assert "layers0_seed0: done before, skipped" in printed
    assert "layers3_seed0: running" in printed
    assert (folder / "layers6_seed0.json").stat().st_mtime_ns == stamp
    assert [r["layers"] for r in _summary(tmp_path, "segmentation")["rows"]] == [0, 6, 3]

    report = tmp_path / "docs" / "RESULTS.md"
    assert make_results.main(["--runs", str(tmp_path), "--out", str(report)]) == 0
    text = report.read_text()
    assert "These are SMOKE results" in text and "SMOKE RUN" in text
    miou = _summary(tmp_path, "segmentation")["rows"][1]["miou"]["mean"]
    assert f"{miou:.3f} ± 0.000 ({miou:.3f})" in text
    assert ("Command: `python experiments/roi_pooling.py --detector rfcn`\n\n*Not run*: no "
            "summary" in text)
    # a smoke run's plain twin misses the floor, and one seed gives no spread to judge by
    assert "Table 1, segmentation: plain twin miou" in text and "(NOT met)" in text
    assert "3 deformable layers vs none" in text and "**undecided (one seed)**" in text
    assert "| layers_segmentation | smoke | – |" in text  # budget: no --plan made


def test_detection_smoke(tmp_path):
    assert layers.main(["--task", "detection", *run_args(tmp_path, "--layers", "0", "1")]) == 0
    rows = _summary(tmp_path, "detection")["rows"]
    assert [r["layers"] for r in rows] == [0, 1]
    for row in rows:
        assert 0.0 <= row["AP"]["mean"] <= row["AP50"]["mean"] + 1e-9 <= 1.0 + 1e-9
    assert rows[1]["params"] > rows[0]["params"]


def test_layer_counts_match_the_paper():
    """n layers: the network's last n 3x3 convs (1-3 in res5; 6: res5's four and the last
    two of res4 in our ResNet-18)."""
    assert {n: sum(b) for n, b in layers.LAYERS.items()} == {0: 0, 1: 1, 2: 2, 3: 3, 6: 6}
    assert layers.LAYERS[6] == (0, 0, 2, 4)


def test_plan_estimates_without_training(tmp_path):
    args = ["--task", "segmentation", *run_args(tmp_path, "--plan", "--jobs", "2",
                                                "--layers", "0", "3")]
    assert layers.main(args) == 0
    plan = json.loads((tmp_path / "layers_segmentation" / "plan.json").read_text())
    assert set(plan["seconds_per_iteration"]) == {"0 layers", "3 layers"}
    # two jobs: CPU seconds per step at one thread, the study as two processes side by side
    assert plan["threads"] == 1 and plan["processes"] == 2 and plan["clock"] == "cpu"
    # every configuration timed on the same batch, over more than 3 steps
    assert plan["timing"] == ("the median of 10 AdamW steps on one batch, after a warm-up "
                              "step, the configurations taking turns")
    # what make_results matches against the summary's
    assert plan["mode"] == "smoke" and plan["settings"]["layers"]["6"] == [0, 0, 2, 4]
    total = sum(plan["seconds_per_iteration"].values()) * plan["iterations"] * plan["seeds"]
    assert plan["estimated_minutes"] * 60 >= total / 2 > 0
    assert plan["pretraining_minutes"] > 0  # costed apart, not trained
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "layers_segmentation" / "summary.json").exists()
    assert not list((tmp_path / "layers_segmentation").glob("layers*_seed*.json"))


# What a smoke run shrinks; everything else is the full mode's recipe.
SIZE_FIELDS = {"image_size", "batch_size", "train_size", "val_size", "base_channels",
               "iterations", "seeds", "pretrain"}


def test_smoke_runs_the_full_recipe_at_tiny_sizes():
    """Smoke segmentation fine-tuned its backbone at 0.1 of the rate (the Sizes default),
    the full study at 1.0: the smoke run did not exercise the full recipe."""
    for task, full in layers.SIZES.items():
        smoke = layers.SMOKE[task]
        recipe = {k: v for k, v in vars(full).items() if k not in SIZE_FIELDS}
        assert {k: v for k, v in vars(smoke).items() if k not in SIZE_FIELDS} == recipe, task
    assert layers.SMOKE["segmentation"].backbone_lr_mult == 1.0
