"""experiments/make_results.py: verdicts from summaries, labels, figures, missing studies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from exp_scripts import load

make_results = load("make_results")
runner = load("runner")


def _stat(values):
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return {"mean": mean, "std": std, "values": values}


def _write(folder, study, summary):
    (folder / study).mkdir(parents=True, exist_ok=True)
    (folder / study / "summary.json").write_text(json.dumps(summary))


SIZES = {"image_size": 64, "train_size": 10, "val_size": 4, "base_channels": 16, "lr": 0.002,
         "iterations": 100, "batch_size": 8}


def test_compare():
    assert make_results.compare(_stat([0.5, 0.52, 0.54]), _stat([0.3, 0.31, 0.32]))[1] \
        .startswith("higher")
    assert make_results.compare(_stat([0.3, 0.5, 0.7]), _stat([0.4, 0.5, 0.6]))[1] \
        .startswith("within")
    assert make_results.compare(_stat([0.1, 0.11]), _stat([0.3, 0.31]))[1].startswith("lower")
    one_seed = make_results.compare({"mean": 1, "std": 0, "values": [1]},
                                    {"mean": 0, "std": 0, "values": [0]})[1]
    assert one_seed.startswith("one seed")
    assert make_results.agrees(one_seed, "higher") == "undecided (one seed)"
    assert make_results.agrees("within seed noise (0.1)", "higher") == "inconclusive"
    assert make_results.agrees("lower by more than the seed noise (0.1)", "higher") \
        == "does not agree"


def test_a_gap_counts_only_when_every_seed_agrees():
    """The runs are paired by seed: a mean gap beyond the combined std, but with one seed a
    tie (Faster R-CNN's deformable conv vs plain: +0.050 / +0.001 / +0.027), used to be
    called "higher" and the paper's claim "agrees"; it is mixed, so inconclusive."""
    plain, deformable = _stat([0.641, 0.689, 0.663]), _stat([0.690, 0.690, 0.690])
    diff, verdict = make_results.compare(deformable, plain)
    assert round(diff, 3) == 0.026
    assert verdict == ("mixed: higher by more than the seed noise (0.024) but not in every "
                       "seed; per seed +0.049 / +0.001 / +0.027")
    assert make_results.agrees(verdict, "higher") == "inconclusive"
    # one seed the other way is mixed too; every seed beyond the tie agrees
    assert make_results.compare(_stat([0.5, 0.5, 0.6]), _stat([0.51, 0.2, 0.3]))[1] \
        .startswith("mixed: higher")
    consistent = make_results.compare(_stat([0.70, 0.695, 0.72]), plain)
    assert consistent[1] == ("higher by more than the seed noise (0.030) and in every "
                             "seed; per seed +0.059 / +0.006 / +0.057")
    assert make_results.agrees(consistent[1], "higher") == "agrees"
    assert make_results.compare(_stat([0.3, 0.5, 0.7]), _stat([0.4, 0.5, 0.6]))[1] \
        == "within seed noise (0.100); per seed -0.100 / +0.000 / +0.100"


def test_the_seed_noise_of_a_paired_gap_is_the_spread_of_its_differences():
    """A seed that moves both configurations alike (its data order, its heads) cancels in
    their difference: the noise was the seeds' combined std (0.1 here), which called a gap
    of +0.02 / +0.02 / +0.03 in every seed "within seed noise"; the per-seed differences'
    own std is 0.006 (the kept dilation study's layer4.0.conv2: +0.13 / +0.12 / +0.12 was
    inconclusive against a noise of 0.244)."""
    verdict = make_results.compare(_stat([0.52, 0.62, 0.73]), _stat([0.5, 0.6, 0.7]))[1]
    assert verdict == ("higher by more than the seed noise (0.006) and in every seed; "
                       "per seed +0.020 / +0.020 / +0.030")


def test_full_report_verdicts(tmp_path):
    runs = tmp_path / "runs"
    rows = [{"layers": n, "deform_blocks": [0, 0, 0, n], "params": 1000 + n,
             "seconds_per_iteration": 0.1 + n / 100,
             "cpu_seconds_per_iteration": 0.1 + n / 100, "miou": _stat(v),
             "pixel_acc": _stat([0.9, 0.9, 0.9])}
            for n, v in ((0, [0.30, 0.31, 0.32]), (3, [0.40, 0.41, 0.42]),
                         (6, [0.60, 0.61, 0.62]))]
    _write(runs, "layers_segmentation", {"mode": "full", "settings": {"sizes": SIZES},
                                         "seeds": [0, 1, 2], "metrics": ["miou", "pixel_acc"],
                                         "rows": rows})
    dil_rows = [{"layer": "layer4.2.conv2", "nominal": 4, "bucket": b, "count": 10,
                 "mean": m, "std": 0.5, "seed_means": [m - 0.1, m, m + 0.1]}
                for b, m in (("small", 4.5), ("medium", 5.0), ("large", 6.5),
                             ("background", 5.5))]
    (runs / "dilation" / "seed0").mkdir(parents=True)
    (runs / "dilation" / "seed0" / "fig5_sampling_0.png").write_bytes(b"\x89PNG fake")
    _write(runs, "dilation", {"mode": "full", "settings": {"sizes": SIZES},
                              "seeds": [0, 1, 2], "miou": [0.5, 0.5, 0.5],
                              "thresholds": [50.0, 200.0], "rows": dil_rows,
                              "figures": ["seed0/fig5_sampling_0.png"]})
    out = tmp_path / "docs" / "RESULTS.md"
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "SMOKE" not in text
    assert "3 deformable layers vs none, miou +0.100" in text and "**agrees**" in text
    # 6 clearly beats 3: the paper's saturation is not reproduced
    assert "6 vs 3 deformable layers, miou +0.200" in text
    assert "finds saturation at 3 (6 no better): **does not agree**" in text

    assert "plain twin miou 0.310 < 0.50 (NOT met)" in text
    assert "small / medium / large = 4.50 / 5.00 / 6.50 (large - small +2.00, higher" in text
    assert ("| 0 | (0, 0, 0, 0) | 1,000 | 0.310 ± 0.010 (0.300 / 0.310 / 0.320) | 0.900 ± "
            "0.000 (0.900 / 0.900 / 0.900) | 0.100 | 1.00 | – | – | 69.7 | 70.4 |") in text
    assert ("| 3 | (0, 0, 0, 3) | 1,003 | 0.410 ± 0.010 (0.400 / 0.410 / 0.420) | 0.900 ± "
            "0.000 (0.900 / 0.900 / 0.900) | 0.130 | 1.30 | – | – | 75.2 | 75.2 |") in text
    assert "![dilation_seed0_fig5_sampling_0](results/dilation_seed0_fig5_sampling_0.png)" in text
    assert (tmp_path / "docs" / "results" / "dilation_seed0_fig5_sampling_0.png").is_file()
    for command in ("layers.py --task detection", "roi_pooling.py --detector faster_rcnn",
                    "overhead.py", "scale.py"):
        assert f"Command: `python experiments/{command}`\n\n*Not run*: no summary" in text
    kept = json.loads((tmp_path / "docs" / "results" / "layers_segmentation.json").read_text())
    assert kept["rows"][1]["miou"]["values"] == [0.40, 0.41, 0.42]
    assert "[demo_seeds.md](demo_seeds.md), written by `python benchmarks/demo_seeds.py`" \
        in text


def test_partly_run_study(tmp_path):
    runs = tmp_path / "runs"
    (runs / "roi_pooling_rfcn").mkdir(parents=True)
    for run in ("plain_seed0", "both_seed0"):
        (runs / "roi_pooling_rfcn" / f"{run}.json").write_text(
            json.dumps({"result": {"seconds": 60.0, "cpu_seconds": 50.0}}))
    out = tmp_path / "RESULTS.md"
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "*Not finished*: 2 run(s) done; the command above continues" in text


def test_dilation_verdict_weighs_large_against_small_objects_over_seeds():
    def rows(seed_means):
        return [{"layer": "l", "bucket": b, "mean": sum(s) / len(s), "seed_means": s}
                for b, s in zip(("small", "medium", "large"), seed_means, strict=True)]

    verdict = make_results._dilation_verdict
    assert "grows small < medium < large in every seed) — the paper finds it grows with " \
        "object size: **agrees**" in verdict("l", rows([[1, 2], [3, 4], [5, 6]]))
    # large above small on average, by less than the seeds' spread
    assert "**inconclusive**" in verdict("l", rows([[1, 3], [2, 4], [2, 2.5]]))
    assert "**does not agree**" in verdict("l", rows([[5, 6], [3, 4], [1, 2]]))
    empty = [{"layer": "l", "bucket": "small", "mean": None, "seed_means": [None]},
             {"layer": "l", "bucket": "medium", "mean": 2.0, "seed_means": [2.0]},
             {"layer": "l", "bucket": "large", "mean": 3.0, "seed_means": [3.0]}]
    assert "**undecided**" in verdict("l", empty)


def test_models_under_the_floor_still_get_verdicts_with_the_floor_stated(tmp_path):
    """A verdict is "inconclusive" only within the seed spread; a plain twin under the issue's
    floor is reported as such, the verdicts are not withheld."""
    runs = tmp_path / "runs"
    rows = [{"config": name, "deformable_conv_layers": 3 * conv, "deformable_roi_pooling": roi,
             "params": 1000, "seconds_per_iteration": 0.2, "AP": _stat(ap),
             "AP50": _stat([v * 3 for v in ap])}
            for name, conv, roi, ap in (("plain", 0, False, [0.001, 0.002, 0.003]),
                                        ("deformable RoI pooling", 0, True, [0.02, 0.021, 0.022]),
                                        ("deformable conv", 1, False, [0.01, 0.01, 0.01]),
                                        ("both", 1, True, [0.03, 0.03, 0.03]))]
    _write(runs, "roi_pooling_rfcn", {"mode": "full", "settings": {"sizes": SIZES},
                                      "seeds": [0, 1, 2], "metrics": ["AP", "AP50"],
                                      "rows": rows})
    out = tmp_path / "RESULTS.md"
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "Table 3, R-FCN: plain twin AP50 0.006 < 0.50 (NOT met)." in text
    assert ("Table 3, R-FCN: deformable RoI pooling vs plain, AP50 +0.057 (higher by more "
            "than the seed noise") in text
    assert text.count("finds it higher: **agrees**") == 3


def test_scale_section_compares_outside_the_training_sizes(tmp_path):
    runs = tmp_path / "runs"

    def row(model, inside, outside):
        by_scale = {"8": _stat(outside), "16": _stat(inside), "32": _stat(outside)}
        return {"model": model, "params": 10, "seconds_per_iteration": 0.05,
                "cpu_seconds_per_iteration": 0.05 if model == "plain" else 0.1,
                "seeds": [0, 1, 2], "cpu_runs": 2 if model == "modulated (v2)" else 3,
                "by_scale": by_scale, "miou": _stat(inside)}

    (runs / "scale").mkdir(parents=True)
    (runs / "scale" / "scale_miou.png").write_bytes(b"\x89PNG fake")
    (runs / "scale" / "plan.json").write_text(json.dumps({
        "clock": "cpu", "iterations": 100, "seeds": 3, "estimated_minutes": 1.0,
        "seconds_per_iteration": {"plain": 0.03, "deformable (v1)": 0.06,
                                  "modulated (v2)": math.nan}}))
    _write(runs, "scale", {"mode": "full", "settings": {"sizes": SIZES}, "seeds": [0, 1, 2],
                           "train_scale": [12, 20], "test_scales": [8, 16, 32],
                           "figure": "scale_miou.png",
                           "rows": [row("plain", [0.6, 0.62, 0.64], [0.2, 0.21, 0.22]),
                                    row("deformable (v1)", [0.6, 0.6, 0.6], [0.3, 0.31, 0.32]),
                                    row("modulated (v2)", [0.6, 0.6, 0.6], [0.1, 0.3, 0.2])]})
    out = tmp_path / "RESULTS.md"
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert ("| plain | 10 | 0.050 | 1.00 | 0.030 | 1.00 | 0.210 ± 0.010 | 0.620 ± 0.020 | "
            "0.210 ± 0.010 |") in text
    assert "| deformable (v1) | 10 | 0.100 | 2.00 | 0.060 | 2.00 | 0.310 ± 0.010 |" in text
    assert "| modulated (v2) | 10 | 0.100 (2 runs) | 2.00 | – | – |" in text
    assert "deformable (v1) vs plain, mIoU outside the training sizes +0.100" in text
    assert "per test size: 8 px +0.100, 16 px -0.020, 32 px +0.100)" in text
    assert "modulated (v2) vs plain, mIoU outside the training sizes -0.010 (within" in text
    assert text.count("**agrees**") == 1 and text.count("**inconclusive**") == 1
    assert "![mIoU by test object size](results/scale_scale_miou.png)" in text


def test_saturation_within_the_seed_spread_is_inconclusive(tmp_path):
    runs = tmp_path / "runs"
    rows = [{"layers": n, "deform_blocks": [0, 0, 0, n], "params": 1000 + n,
             "seconds_per_iteration": 0.1, "miou": _stat(v)}
            for n, v in ((0, [0.30, 0.31, 0.32]), (3, [0.40, 0.42, 0.44]),
                         (6, [0.41, 0.415, 0.45]))]
    _write(runs, "layers_segmentation", {"mode": "full", "settings": {"sizes": SIZES},
                                         "seeds": [0, 1, 2], "metrics": ["miou"],
                                         "rows": rows})
    out = tmp_path / "RESULTS.md"
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert "finds saturation at 3 (6 no better): **inconclusive**" in out.read_text()
    _write(runs, "overhead", {"mode": "full", "threads": 1, "repeats": 2, "rows": [
        {"model": "m", "image_size": 32, "params_plain": 10, "params_deformable": 11,
         "params_increase": 0.1, "ms_plain": 1.0, "ms_deformable": 1.2, "time_increase": 0.2}]})
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert "Seeds" not in out.read_text()  # the overhead study has none
    for row in rows:
        row["miou"] = _stat(row["miou"]["values"][:2])
    _write(runs, "layers_segmentation", {"mode": "full", "settings": {"sizes": SIZES},
                                         "seeds": [0, 1], "metrics": ["miou"], "rows": rows})
    assert make_results.main(["--runs", str(runs), "--out", str(out), "--replace",
                              "layers_segmentation"]) == 0
    text = out.read_text()
    assert "Command: `python experiments/layers.py --task segmentation --seeds 0 1`" in text
    assert "**Seeds [0, 1] only, not 3**: the command above without `--seeds` trains the " \
        "missing" in text


def test_a_checkout_without_the_runs_reports_from_the_kept_copies(tmp_path):
    """The studies' summaries, plans and figures are kept beside the report: a checkout
    whose runs folder lacks them (another machine) regenerates the same report."""
    runs = tmp_path / "runs"
    rows = [{"layers": n, "deform_blocks": [0, 0, 0, n], "params": 1000 + n,
             "seconds_per_iteration": 0.1, "miou": _stat(v)}
            for n, v in ((0, [0.30, 0.31, 0.32]), (3, [0.40, 0.42, 0.44]))]
    _write(runs, "layers_segmentation", {"mode": "full", "settings": {"sizes": SIZES},
                                         "seeds": [0, 1, 2], "metrics": ["miou"],
                                         "rows": rows})
    (runs / "layers_segmentation" / "plan.json").write_text(json.dumps({
        "clock": "cpu", "iterations": 100, "seeds": 3, "estimated_minutes": 1.0,
        "seconds_per_iteration": {"0 layers": 0.03, "3 layers": 0.06}}))
    (runs / "scale").mkdir(parents=True)
    (runs / "scale" / "scale_miou.png").write_bytes(b"\x89PNG fake")
    scale_row = {"model": "plain", "params": 10, "seconds_per_iteration": 0.05,
                 "seeds": [0, 1], "by_scale": {"8": _stat([0.2, 0.3])}, "miou": _stat([0.6, 0.7])}
    _write(runs, "scale", {"mode": "full", "settings": {"sizes": SIZES}, "seeds": [0, 1],
                           "train_scale": [12, 20], "test_scales": [8],
                           "figure": "scale_miou.png", "rows": [scale_row]})
    out = tmp_path / "docs" / "RESULTS.md"
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    first = out.read_text()
    assert "| 0.030 | 1.00 |" in first and "| 0.060 | 2.00 |" in first  # the plan's steps
    assert "![mIoU by test object size](results/scale_scale_miou.png)" in first
    out.write_text("")
    assert make_results.main(["--runs", str(tmp_path / "elsewhere"), "--out", str(out)]) == 0
    assert out.read_text() == first


def test_a_missing_runs_folder_without_kept_copies_is_refused(tmp_path, capsys):
    out = tmp_path / "docs" / "RESULTS.md"
    with pytest.raises(SystemExit) as err:
        make_results.main(["--runs", str(tmp_path / "typo"), "--out", str(out)])
    assert err.value.code == 2 and not out.exists()
    assert "typo: no such folder, and no kept copies" in capsys.readouterr().err


def _layers_summary(runs, mode="full", layers=(0, 3)):
    rows = [{"layers": n, "deform_blocks": [0, 0, 0, n], "params": 1000 + n,
             "seconds_per_iteration": 0.1, "miou": _stat([0.3 + n / 100, 0.31, 0.32])}
            for n in layers]
    settings = {"sizes": {**SIZES, "pretrain": PRETRAIN}, "layers": {"0": [], "3": [], "6": []}}
    _write(runs, "layers_segmentation", {"mode": mode, "settings": settings,
                                         "seeds": [0, 1, 2], "metrics": ["miou"],
                                         "rows": rows, "measured": {"runs": 6, "wall": 12.0,
                                                                    "cpu": 10.0}})
    return settings


PRETRAIN = {"iterations": 3000, "batch_size": 32, "image_size": 64}


def _pretraining(runs, key, settings, top1, seconds, train_seconds):
    folder = runs / "cache" / f"pretrain-{key}"
    folder.mkdir(parents=True)
    (folder / "pretrain.json").write_text(json.dumps({
        "metrics": {"top1": top1}, "iterations": settings["iterations"], "settings": settings,
        "seconds": seconds, "train_seconds": train_seconds, "cpu_seconds": 120.0}))


def test_the_budget_names_the_pretraining_the_studies_used(tmp_path):
    """Another cached pretraining (a smoke run's, made later) is not the studies' one; a
    pretraining resumed part way says its CPU time covers its last part only."""
    runs = tmp_path / "runs"
    _layers_summary(runs)
    _pretraining(runs, "a", PRETRAIN, 0.842, seconds=600.0, train_seconds=2000.0)
    _pretraining(runs, "b", {**PRETRAIN, "iterations": 2}, 0.25, 1.0, 1.0)
    out = tmp_path / "RESULTS.md"
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| pretraining (top-1 0.842), once, shared by 1 studies | – | 1 × 3000 it. | 1 | " \
           "– | 2.0 (resumed: its last part only) | 10.0 |" in text
    assert "top-1 0.250" not in text


def test_a_plan_of_another_mode_or_a_subset_summary_is_marked(tmp_path):
    """A smoke ``plan.json`` does not time a full summary's rows, and a summary of some of the
    configurations says which are left out."""
    runs = tmp_path / "runs"
    settings = _layers_summary(runs)
    (runs / "layers_segmentation" / "plan.json").write_text(json.dumps({
        "mode": "smoke", "settings": settings, "clock": "cpu", "iterations": 2, "seeds": 1,
        "estimated_minutes": 0.1, "seconds_per_iteration": {"0 layers": 0.03,
                                                            "3 layers": 0.06}}))
    out = tmp_path / "RESULTS.md"
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| 0.030 |" not in text and "2 it." not in text
    assert "**Not every configuration**: this summary leaves out 6" in text


def test_a_kept_summary_beside_unfinished_new_runs_says_so(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    _layers_summary(runs, layers=(0, 3, 6))
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert "kept copy" not in out.read_text()
    (runs / "layers_segmentation" / "summary.json").unlink()
    (runs / "layers_segmentation" / "layers0_seed0.json").write_text(
        json.dumps({"result": {"seconds": 6.0, "cpu_seconds": 5.0}}))
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "**Below: the kept copy of an earlier full run** (`results/layers_segmentation" \
           ".json`); the runs folder holds 1 run(s) of an unfinished new one" in text
    assert "| layers_segmentation | full | – | 6 | – | 5.0 | 12.0 |" in text


def _full_layers(runs, mode="full", seeds=(0, 1, 2), layers=(0, 1, 2, 3, 6)):
    rows = [{"layers": n, "deform_blocks": [0, 0, 0, n], "params": 1000 + n,
             "seconds_per_iteration": 0.1, "seeds": list(seeds),
             "miou": {"mean": 0.3 + n / 100, "std": 0.0, "values": [0.3 + n / 100] * len(seeds)}}
            for n in layers]
    _write(runs, "layers_segmentation", {"mode": mode, "settings": {"sizes": SIZES},
                                         "seeds": list(seeds), "metrics": ["miou"],
                                         "rows": rows})


@pytest.mark.parametrize(("change", "why"), [
    ({"mode": "smoke", "seeds": (0,), "layers": (0,)},
     "smoke mode, the kept one full; without 1 layers, 2 layers, 3 layers, 6 layers; 1 "
     "seed(s), the kept one 3"),
    ({"seeds": (0,)}, "1 seed(s), the kept one 3"),
    ({"layers": (0, 3)}, "without 1 layers, 2 layers, 6 layers"),
])
def test_a_kept_summary_is_not_replaced_by_a_smoke_or_partial_one(tmp_path, capsys, change,
                                                                    why):
    """The kept copies in results/ are the only record of hours of runs: a summary of the
    other mode, of fewer seeds or of fewer configurations does not replace one, unless
    --replace says so; the report shows the kept one and says why."""
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    kept = tmp_path / "docs" / "results" / "layers_segmentation.json"
    _full_layers(runs)
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    before = kept.read_bytes()
    _full_layers(runs, **change)
    capsys.readouterr()
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert kept.read_bytes() == before
    source = runs / "layers_segmentation" / "summary.json"
    assert f"{kept}: kept, not replaced by {source} ({why}); pass --replace " \
        "layers_segmentation to replace it" in capsys.readouterr().err
    text = out.read_text()
    assert "SMOKE" not in text and "| 6 | (0, 0, 0, 6) |" in text
    assert ("**Below: the kept copy of an earlier full run** (`results/layers_segmentation"
            f".json`); the runs folder's summary was not kept ({why}): `python experiments/"
            f"make_results.py --runs {runs} --out {out} --replace layers_segmentation` would "
            "replace it.") in text
    assert make_results.main(["--runs", str(runs), "--out", str(out), "--replace",
                              "layers_segmentation"]) == 0
    assert kept.read_bytes() == source.read_bytes()
    # a summary that covers as much (other seeds, more configurations) replaces it
    _full_layers(runs, mode=change.get("mode", "full"), seeds=(3, 4, 5))
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert json.loads(kept.read_text())["seeds"] == [3, 4, 5]


def _dilation(runs, mode, figures, seeds=(0,)):
    rows = [{"layer": "l", "nominal": 4, "bucket": b, "count": 1, "mean": m, "std": 0.1,
             "seed_means": [m] * len(seeds)} for b, m in (("small", 1.0), ("medium", 2.0),
                                                           ("large", 3.0))]
    for name in figures:
        (runs / "dilation" / name).parent.mkdir(parents=True, exist_ok=True)
        (runs / "dilation" / name).write_bytes(f"PNG {mode} {name}".encode())
    _write(runs, "dilation", {"mode": mode, "settings": {"sizes": SIZES}, "seeds": list(seeds),
                              "miou": [0.5] * len(seeds), "thresholds": [1.0, 2.0],
                              "rows": rows, "figures": figures})



def test_a_full_summary_replaces_a_kept_smoke_one(tmp_path, capsys):
    """An upgrade is no accident: a full summary replaces a kept smoke one, even of fewer
    seeds and configurations, without --replace."""
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    kept = tmp_path / "docs" / "results" / "layers_segmentation.json"
    _full_layers(runs, mode="smoke")
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    _full_layers(runs, seeds=(0,), layers=(0, 3))
    capsys.readouterr()
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert kept.read_bytes() == (runs / "layers_segmentation" / "summary.json").read_bytes()
    assert "not replaced" not in capsys.readouterr().err
    assert "SMOKE" not in out.read_text()


def test_replace_names_the_studies_it_forces(tmp_path, capsys):
    """--replace STUDY forces that study's downgrade only, not another study's partial
    summary; an unknown study is refused, naming the valid ones."""
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    results = out.parent / "results"
    _full_layers(runs)
    _dilation(runs, "full", ["seed0/a.png"], seeds=(0, 1, 2))
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    dilation = (results / "dilation.json").read_bytes()
    _full_layers(runs, mode="smoke", seeds=(0,))
    _dilation(runs, "full", ["seed0/a.png"], seeds=(0,))
    assert make_results.main(["--runs", str(runs), "--out", str(out), "--replace",
                              "layers_segmentation"]) == 0
    assert json.loads((results / "layers_segmentation.json").read_text())["mode"] == "smoke"
    assert (results / "dilation.json").read_bytes() == dilation
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        make_results.main(["--runs", str(runs), "--out", str(out), "--replace", "dilatoin"])
    assert err.value.code == 2
    err = capsys.readouterr().err
    assert "argument --replace: invalid choice: 'dilatoin'" in err and "dilation" in err
    assert (results / "dilation.json").read_bytes() == dilation


def test_figures_follow_the_kept_summary(tmp_path):
    """A refused summary's figures do not replace the kept ones; a kept summary's figures
    replace them, and those it no longer names are removed."""
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    results = out.parent / "results"
    _dilation(runs, "full", ["seed0/a.png", "seed0/b.png"])
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert sorted(p.name for p in results.glob("*.png")) == ["dilation_seed0_a.png",
                                                             "dilation_seed0_b.png"]
    _dilation(runs, "smoke", ["seed0/a.png"])
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert (results / "dilation_seed0_a.png").read_bytes() == b"PNG full seed0/a.png"
    assert (results / "dilation_seed0_b.png").is_file()
    assert "results/dilation_seed0_b.png" in out.read_text()
    assert make_results.main(["--runs", str(runs), "--out", str(out), "--replace",
                              "dilation"]) == 0
    assert [p.name for p in results.glob("*.png")] == ["dilation_seed0_a.png"]
    assert (results / "dilation_seed0_a.png").read_bytes() == b"PNG smoke seed0/a.png"
    assert "dilation_seed0_b" not in out.read_text()


@pytest.mark.parametrize("text", ["", '{"study": "scale", "mo', '{"mode": "full"}'])
def test_a_damaged_summary_is_named_and_the_kept_copy_survives(tmp_path, capsys, text):
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    kept = tmp_path / "docs" / "results" / "layers_segmentation.json"
    _full_layers(runs)
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    before, report = kept.read_bytes(), out.read_text()
    source = runs / "layers_segmentation" / "summary.json"
    source.write_text(text)
    for replace in ([], ["--replace", "layers_segmentation"]):
        with pytest.raises(SystemExit) as err:
            make_results.main(["--runs", str(runs), "--out", str(out), *replace])
        assert err.value.code == 2
        assert f"error: {source} is not a valid layers_segmentation summary (" \
            in capsys.readouterr().err
        assert kept.read_bytes() == before and out.read_text() == report
    # a damaged kept copy is named too; --replace offered, and replaces it, only where the
    # runs hold a summary to put in its place
    kept.write_text(text)
    source.unlink()
    with pytest.raises(SystemExit):
        make_results.main(["--runs", str(runs), "--out", str(out)])
    err = capsys.readouterr().err
    assert f"error: {kept} is not a valid layers_segmentation summary (" in err
    assert err.rstrip().endswith("); restore it (git checkout)")
    _full_layers(runs)
    with pytest.raises(SystemExit):
        make_results.main(["--runs", str(runs), "--out", str(out)])
    assert "; restore it (git checkout), or pass --replace layers_segmentation to replace it " \
        "by the runs' one" in capsys.readouterr().err
    assert make_results.main(["--runs", str(runs), "--out", str(out), "--replace",
                              "layers_segmentation"]) == 0
    assert kept.read_bytes() == source.read_bytes()


@pytest.mark.parametrize(("study", "summary", "why"), [
    ("scale", {"mode": "full", "rows": []}, "no settings, test_scales, train_scale, seeds, "
     "figure in it"),
    ("overhead", {"mode": "full", "rows": [{"model": "resnet18"}],
                  "repeats": 3, "threads": 1}, "no image_size, params_plain"),
    ("layers_segmentation", {"mode": "full", "rows": [{"layers": 0, "deform_blocks": [],
                                                       "params": 1}],
                             "settings": {}, "metrics": ["miou"]}, "no miou in rows[0]"),
    ("dilation", {"mode": "full", "rows": [1], "settings": {}, "thresholds": [1, 2],
                  "seeds": [0], "miou": [0.5], "figures": []}, "rows is not a list of objects"),
])
def test_a_summary_without_what_its_section_reads_is_named(tmp_path, capsys, study, summary,
                                                           why):
    """A summary with "mode" and "rows" but not its study's keys passed the check and the
    report failed with a bare KeyError ('test_scales') and a traceback."""
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    (runs / study).mkdir(parents=True)
    source = runs / study / "summary.json"
    source.write_text(json.dumps(summary))
    with pytest.raises(SystemExit) as err:
        make_results.main(["--runs", str(runs), "--out", str(out)])
    assert err.value.code == 2 and not out.exists()
    assert f"error: {source} is not a valid {study} summary ({why}" in capsys.readouterr().err


def _plan(runs, mode="full", names=("0 layers", "1 layers", "2 layers", "3 layers", "6 layers"),
          seeds=3, minutes=20.0, pretraining=None):
    plan = {"mode": mode, "settings": {"sizes": SIZES}, "clock": "cpu", "iterations": 100,
            "seeds": seeds, "estimated_minutes": minutes,
            "seconds_per_iteration": {name: 0.03 for name in names}}
    if pretraining is not None:
        plan["pretraining_minutes"] = pretraining
    (runs / "layers_segmentation" / "plan.json").write_text(json.dumps(plan))



def test_a_damaged_kept_plan_is_replaced_with_replace(tmp_path, capsys):
    """The error on a damaged kept plan offers --replace: it replaces it by the runs' plan
    (it used to read the kept plan all the same and stop again)."""
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    kept = out.parent / "results" / "layers_segmentation_plan.json"
    _full_layers(runs)
    _plan(runs)
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    kept.write_text("")
    with pytest.raises(SystemExit) as err:
        make_results.main(["--runs", str(runs), "--out", str(out)])
    assert err.value.code == 2
    assert f"error: {kept} is not a valid plan (" in capsys.readouterr().err
    assert make_results.main(["--runs", str(runs), "--out", str(out), "--replace",
                              "layers_segmentation"]) == 0
    assert kept.read_bytes() == (runs / "layers_segmentation" / "plan.json").read_bytes()
    assert "| 0.030 | 1.00 |" in out.read_text()
    # a runs' plan that does not cover the summary cannot replace it: not offered
    kept.write_text("")
    _plan(runs, mode="smoke")
    with pytest.raises(SystemExit):
        make_results.main(["--runs", str(runs), "--out", str(out), "--replace",
                           "layers_segmentation"])
    assert capsys.readouterr().err.rstrip().endswith("); restore it (git checkout)")


@pytest.mark.parametrize("change", [{"mode": "smoke"}, {"names": ("0 layers", "3 layers")}])
def test_only_a_plan_that_covers_the_summary_is_kept(tmp_path, capsys, change):
    """A plan of the other mode or of a subset of the configurations is not the study's
    plan: it is neither kept nor used, and the kept one stays."""
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    kept = out.parent / "results" / "layers_segmentation_plan.json"
    _full_layers(runs)
    _plan(runs)
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    before = kept.read_bytes()
    assert "| layers_segmentation | full | 5 × 3 seeds × 100 it. | 0 | 20.0 |" in out.read_text()
    _plan(runs, minutes=1.0, **change)
    capsys.readouterr()
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert kept.read_bytes() == before
    assert "plan.json: not kept as the study's plan (" in capsys.readouterr().err
    assert "| layers_segmentation | full | 5 × 3 seeds × 100 it. | 0 | 20.0 |" in out.read_text()



def test_a_seed_added_to_a_finished_study_keeps_its_plan(tmp_path):
    """A step takes as long whatever the seed count: a 3-seed plan still gives the step
    columns of a 4-seed summary; its estimate says it was made for 3 seeds."""
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    _full_layers(runs, seeds=(0, 1, 2, 3))
    _plan(runs)
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| 0.030 | 1.00 |" in text
    assert "| layers_segmentation | full | 5 × 3 seeds × 100 it. | 0 | 20.0, for 3 seeds |" \
        in text
    _full_layers(runs)
    assert make_results.main(["--runs", str(runs), "--out", str(out), "--replace",
                              "layers_segmentation"]) == 0
    assert "| layers_segmentation | full | 5 × 3 seeds × 100 it. | 0 | 20.0 |" in out.read_text()


def test_the_budget_takes_the_largest_pretraining_estimate_and_lists_unfinished_studies(
        tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    _layers_summary(runs)
    settings = json.loads((runs / "layers_segmentation" / "summary.json").read_text())["settings"]
    names = ("0 layers", "3 layers")
    for study, minutes in (("layers_segmentation", 6.0), ("dilation", 9.0)):
        (runs / study).mkdir(exist_ok=True)
        (runs / study / "plan.json").write_text(json.dumps({
            "mode": "full", "settings": settings if study != "dilation" else {"sizes": {}},
            "clock": "cpu", "iterations": 10, "seeds": 3, "estimated_minutes": 1.0,
            "pretraining_minutes": minutes,
            "seconds_per_iteration": {n: 0.1 for n in names}}))
    _pretraining(runs, "a", PRETRAIN, 0.842, seconds=600.0, train_seconds=500.0)
    (runs / "scale").mkdir()
    (runs / "scale" / "plain_seed0.json").write_text(
        json.dumps({"result": {"seconds": 60.0, "cpu_seconds": 30.0}}))
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    # the largest plan's 9.0 min, not the first's 6.0, shared by the two studies
    assert "| pretraining (top-1 0.842), once, shared by 2 studies | – | 1 × 3000 it. | 1 | " \
           "9.0 |" in text
    assert "| dilation | full | 2 × 3 seeds × 10 it. | 0 | 5.5 (1.0 + 4.5) |" in text
    assert "| scale | – | – | 1 | – | 0.2 | 1.0 |" in text


def test_the_step_columns_say_how_their_plan_timed_them(tmp_path):
    """Plans that timed 3 steps each on another batch give a rough ratio, and the report
    says so; a plan that records its timing is quoted."""
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    _full_layers(runs)
    _plan(runs)
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "the cleaner ratio" not in text
    assert "The plan's steps: the median of only 3 steps, each on another batch: a rough " \
           "ratio." in text
    assert "0.98×" not in text  # detection's plan's example, in its own table only
    plan = json.loads((runs / "layers_segmentation" / "plan.json").read_text())
    plan["timing"] = "the median of 10 steps on one batch"
    (runs / "layers_segmentation" / "plan.json").write_text(json.dumps(plan))
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert "The plan's steps: the median of 10 steps on one batch." in out.read_text()
    assert make_results.step_note({}, "layers_detection").endswith(
        "a rough ratio (a detection step varies with the proposals of its batch; timed "
        "again, 3 deformable layers took 1.43× the plain step, not this plan's 0.98×).")
    assert make_results.step_note({}, "roi_pooling_rfcn").endswith(
        "a rough ratio (a detection step varies with the proposals of its batch).")



def test_a_damaged_summary_stops_the_run_before_anything_is_kept_or_written(tmp_path,
                                                                            monkeypatch):
    """Every file is read and checked first: a damaged summary of a later study leaves the
    kept copies, figures and report as they were (a new layers_segmentation summary was kept
    and dilation's old figures removed while RESULTS.md still showed the old ones); the
    report is written atomically."""
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    results = out.parent / "results"
    _full_layers(runs)
    _dilation(runs, "full", ["seed0/a.png"])
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in (out, *results.iterdir())}
    assert "seeds [0, 1, 2]" in before[out].decode()
    _full_layers(runs, seeds=(3, 4, 5))
    _dilation(runs, "full", ["seed0/b.png"])
    (runs / "scale").mkdir()
    (runs / "scale" / "summary.json").write_text('{"mode": "full", "ro')
    with pytest.raises(SystemExit) as err:
        make_results.main(["--runs", str(runs), "--out", str(out)])
    assert err.value.code == 2
    assert {p: p.read_bytes() for p in (out, *results.iterdir())} == before
    (runs / "scale" / "summary.json").unlink()
    written = []
    write = make_results.write_atomically
    monkeypatch.setattr(make_results, "write_atomically",
                        lambda path, how: written.append(path) or write(path, how))
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert out in written and "seeds [3, 4, 5]" in out.read_text()
    assert json.loads((results / "layers_segmentation.json").read_text())["seeds"] == [3, 4, 5]
    assert sorted(p.name for p in results.glob("*.png")) == ["dilation_seed0_b.png"]
    assert not list(out.parent.glob(".*.tmp"))


def test_the_report_states_its_verdict_rule(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    _full_layers(runs)
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "every seed's difference goes the same way (one smaller than 0.005 counts as a " \
        "tie" in text
    assert "With 3 seeds this is a consistency rule, not a significance test" in text
    assert "miou +0.030 (higher by more than the seed noise (0.000) and in every seed; per " \
        "seed +0.030 / +0.030 / +0.030)" in text


def _layers_rows():
    return [{"layers": n, "deform_blocks": [0, 0, 0, n], "params": 1000 + n,
             "miou": _stat([0.3 + n / 100, 0.31, 0.32])} for n in (0, 3)]


def _scale_summary():
    row = {"model": "plain", "params": 10, "seeds": [0, 1, 2],
           "by_scale": {"8": _stat([0.2, 0.3, 0.4]), "16": _stat([0.5, 0.6, 0.7])},
           "miou": _stat([0.6, 0.7, 0.8])}
    return {"mode": "full", "settings": {"sizes": SIZES}, "seeds": [0, 1, 2],
            "train_scale": [12, 20], "test_scales": [8, 16], "figure": "scale_miou.png",
            "rows": [row]}


def _damage(summary, change):
    exec(change, {"d": summary})  # the parametrized edits are the tests' own literals
    return summary


@pytest.mark.parametrize(("study", "change", "why"), [
    ("layers_segmentation", "d['rows'][0]['miou']['mean'] = 0.9",
     "rows[0].miou: mean 0.9, but its values' mean is 0.3"),
    ("layers_segmentation", "d['rows'][1]['miou']['std'] = 0.5",
     "rows[1].miou: std 0.5, but its values' std is 0.01"),
    ("layers_segmentation", "d['rows'][1]['miou']['values'] = [0.1]",
     "rows[1].miou: 1 value(s) for 3 seeds"),
    ("layers_segmentation", "d['rows'][0]['miou'] = {'mean': 0.5}",
     "rows[0].miou: no std, values in it"),
    ("layers_segmentation", "d['rows'][0]['miou']['values'] = ['a', 'b', 'c']",
     "rows[0].miou: not numbers"),
    ("layers_segmentation", "d['seeds'] = 3", "seeds is not a list of seeds: 3"),
    ("scale", "d['rows'][0]['by_scale']['8']['values'].pop()",
     "rows[0].by_scale.8: 2 value(s) for 3 seeds"),
    ("scale", "del d['rows'][0]['by_scale']['16']", "rows[0].by_scale.16: absent"),
    ("scale", "d['test_scales'] = 8", "test_scales is not a list of sizes: 8"),
    ("dilation", "d['miou'] = [0.5]", "miou: [0.5] is not one value per seed (3 seeds)"),
])
def test_a_summary_whose_statistics_do_not_hold_is_named(tmp_path, capsys, study, change,
                                                         why):
    """A summary's mean ± std is checked against its own values, one per seed: a mean that
    was not its values' was published as it was ("0.900 ± 0.011 (0.544 / 0.555 / 0.534)"),
    one value of a 3-seed study too, and a stat without std or a short by_scale list ended
    in a KeyError or ValueError traceback."""
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    if study == "scale":
        summary = _scale_summary()
    elif study == "dilation":
        _dilation(runs, "full", [], seeds=(0, 1, 2))
        summary = json.loads((runs / "dilation" / "summary.json").read_text())
    else:
        summary = {"mode": "full", "settings": {"sizes": SIZES}, "seeds": [0, 1, 2],
                   "metrics": ["miou"], "rows": _layers_rows()}
    _write(runs, study, _damage(summary, change))
    with pytest.raises(SystemExit) as err:
        make_results.main(["--runs", str(runs), "--out", str(out)])
    assert err.value.code == 2 and not out.exists()
    error = capsys.readouterr().err
    source = runs / study / "summary.json"
    assert f"error: {source} is not a valid {study} summary ({why}" in error
    assert "Traceback" not in error


def test_a_kept_summary_is_checked_too(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    _write(runs, "scale", _scale_summary())
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    kept = out.parent / "results" / "scale.json"
    kept.write_text(json.dumps(_damage(json.loads(kept.read_text()),
                                       "d['rows'][0]['miou']['mean'] = 0.1")))
    report = out.read_text()
    with pytest.raises(SystemExit):
        make_results.main(["--runs", str(tmp_path / "elsewhere"), "--out", str(out)])
    assert f"error: {kept} is not a valid scale summary (rows[0].miou: mean 0.1" \
        in capsys.readouterr().err
    assert out.read_text() == report


@pytest.mark.parametrize(("study", "summary", "command"), [
    # overhead measured at 1 thread: its default is 2
    ("overhead", {"settings": {"threads": 1, "seed": 0}},
     "python experiments/overhead.py --threads 1"),
    ("overhead", {"settings": {"threads": 2, "seed": 3}},
     "python experiments/overhead.py --seeds 3"),
    ("overhead", {"mode": "smoke", "settings": {"threads": 2, "seed": 0}},
     "python experiments/overhead.py --smoke"),
    ("layers_segmentation", {"seeds": [0, 1, 2]},
     "python experiments/layers.py --task segmentation"),
    ("layers_segmentation", {"seeds": [1, 2, 3]},
     "python experiments/layers.py --task segmentation --seeds 1 2 3"),
    ("layers_segmentation", {"mode": "smoke", "seeds": [0]},
     "python experiments/layers.py --task segmentation --smoke"),
    ("layers_segmentation", {"seeds": [0, 1, 2], "settings": {"layers": {"0": [], "3": [],
                                                                          "6": []}}},
     "python experiments/layers.py --task segmentation --layers 0 3"),
    ("roi_pooling_rfcn", {"seeds": [0, 1, 2], "settings": {"configs": {"plain": 1, "both": 2}},
                          "rows": [{"config": "plain"}]},
     "python experiments/roi_pooling.py --detector rfcn --configs plain"),
    ("roi_pooling_faster_rcnn", {"mode": "smoke", "seeds": [0, 1],
                                 "settings": {"configs": {"plain": 1, "deformable conv": 2}},
                                 "rows": [{"config": "deformable conv"}]},
     "python experiments/roi_pooling.py --detector faster_rcnn --smoke --seeds 0 1 "
     "--configs 'deformable conv'"),
    ("scale", {"seeds": [0, 1, 2]}, "python experiments/scale.py"),
    ("dilation", {"mode": "smoke", "seeds": [0, 1]},
     "python experiments/dilation.py --smoke --seeds 0 1"),
])
def test_a_study_command_carries_the_options_its_summary_was_made_with(study, summary,
                                                                       command):
    """RESULTS.md said `python experiments/overhead.py` under a table measured at 1 thread
    (--threads defaults to 2): following it did not reproduce the table."""
    data = {"mode": "full", "settings": {}, "rows": [{"layers": 0}, {"layers": 3}], **summary}
    assert make_results.command(study, data) == command
    assert make_results.command(study, None) == make_results.COMMANDS[study]


def test_the_budget_does_not_halve_a_one_process_study(tmp_path):
    """overhead.py runs in one process; its CPU time was halved as if it ran as two
    shards (1.4 min shown as 0.7)."""
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    _write(runs, "overhead", {"mode": "full", "threads": 1, "repeats": 2,
                              "settings": {"threads": 1, "seed": 0},
                              "measured": {"runs": 6, "wall": 1.5, "cpu": 1.4}, "rows": [
        {"model": "m", "image_size": 32, "params_plain": 10, "params_deformable": 11,
         "params_increase": 0.1, "ms_plain": 1.0, "ms_deformable": 1.2,
         "time_increase": 0.2}]})
    _layers_summary(runs)
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| overhead | full | – | 6 | – | 1.4 (one process: not halved) | 1.5 |" in text
    assert "| layers_segmentation | full | – | 6 | – | 5.0 | 12.0 |" in text
    assert "Command: `python experiments/overhead.py --threads 1`" in text


def test_replace_without_a_runs_summary_is_refused(tmp_path, capsys):
    """--replace of studies the runs folder has nothing of did nothing and said nothing."""
    runs, out = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    _full_layers(runs)
    with pytest.raises(SystemExit) as err:
        make_results.main(["--runs", str(runs), "--out", str(out), "--replace",
                           "layers_segmentation", "scale", "overhead"])
    assert err.value.code == 2 and not out.exists()
    assert f"--replace scale overhead: no summary.json or plan.json of them in {runs}" \
        in capsys.readouterr().err
    assert make_results.main(["--runs", str(runs), "--out", str(out), "--replace",
                              "layers_segmentation"]) == 0


def test_the_replace_advice_names_a_runs_folder_other_than_the_default(tmp_path,
                                                                      monkeypatch):
    runs = tmp_path / "runs"
    _full_layers(runs)
    report = make_results.Report(runs, tmp_path / "R.md")
    assert report.generate("--replace", "scale") == (
        f"python experiments/make_results.py --runs {runs} --out {tmp_path / 'R.md'} "
        "--replace scale")
    monkeypatch.chdir(tmp_path)
    default = make_results.Report(make_results.DEFAULT_RUNS, make_results.DEFAULT_REPORT)
    assert default.generate("--replace", "scale") == \
        "python experiments/make_results.py --replace scale"


def _with_pretraining(runs, study, record):
    """The study's summary in ``runs``, recording ``record`` as its pretraining."""
    path = runs / study / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "pretraining": record}))


def _record(runs, key):
    return runner.pretraining_record(
        json.loads((runs / "cache" / f"pretrain-{key}" / "pretrain.json").read_text()))


def _dilation_with_3_layers(runs):
    """A dilation summary of the segmentation study's sizes: Table 1's 3-layer model."""
    rows = [{"layer": "layer4.2.conv2", "nominal": 4, "bucket": b, "mean": 4.0, "std": 0.1}
            for b in ("small", "medium", "large")]
    _write(runs, "dilation", {"mode": "full", "seeds": [0, 1, 2], "miou": [0.5, 0.6, 0.7],
                              "settings": {"sizes": {**SIZES, "pretrain": PRETRAIN},
                                           "deform_blocks": [0, 0, 0, 3]},
                              "thresholds": [50.0, 200.0], "rows": rows, "figures": [],
                              "measured": {"runs": 3, "wall": 9.0, "cpu": 8.0}})



def _kept_without_records(tmp_path: Path) -> tuple[Path, Path]:
    """docs/RESULTS.md and its kept pretraining.json (top-1 0.842) made from a segmentation
    summary written before summaries recorded their pretraining."""
    first, out = tmp_path / "first", tmp_path / "docs" / "RESULTS.md"
    _layers_summary(first)
    _pretraining(first, "a", PRETRAIN, 0.842, seconds=600.0, train_seconds=500.0)
    assert make_results.main(["--runs", str(first), "--out", str(out)]) == 0
    return out, tmp_path / "docs" / "results" / "pretraining.json"


def test_a_study_of_another_pretraining_keeps_the_kept_one_and_says_so(tmp_path):
    """Kept summaries without the record fine-tuned the kept pretraining; a new study that
    records another one (same settings, trained again) pays all of it in its row, its
    section says so with the shared configuration's scores side by side, and the kept
    record stays; once every study records the new one, it replaces the kept record."""
    out, kept = _kept_without_records(tmp_path)
    old = kept.read_bytes()

    runs = tmp_path / "runs"
    _dilation_with_3_layers(runs)
    _pretraining(runs, "a", {**PRETRAIN}, 0.858, seconds=1200.0, train_seconds=1100.0)
    pretrain = runs / "cache" / "pretrain-a" / "pretrain.json"
    pretrain.write_text(json.dumps({**json.loads(pretrain.read_text()), "threads": 2,
                                    "cpu_seconds": 1266.0}))
    _with_pretraining(runs, "dilation", _record(runs, "a"))
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert kept.read_bytes() == old
    assert "| pretraining (top-1 0.842), once, shared by 1 studies |" in text
    assert "| layers_segmentation | full | – | 6 | – | 7.0 (5.0 + 2.0) |" in text
    assert "| dilation | full | – | 3 | – | 25.1 (4.0 + 21.1 own pretraining, one " \
           "process) |" in text
    assert "Summaries written before the record was kept (layers_segmentation) do not " \
           "say which pretraining they fine-tuned" in text
    assert ("**Another pretraining**: this study fine-tuned a pretraining of its own "
            "(top-1 0.858, trained at 2 threads), not the one the other studies share "
            "(top-1 0.842, its thread count not recorded)") in text
    assert ("the model with deform_blocks (0, 0, 0, 3) scores mIoU 0.600 ± 0.100 "
            "(0.500 / 0.600 / 0.700) here and 0.320 ± 0.010 (0.330 / 0.310 / 0.320) in "
            "Table 1's segmentation table.") in text
    assert text.count("**Another pretraining**") == 1

    # the segmentation study run again on the new pretraining: no one keeps the old one
    _layers_summary(runs)
    _with_pretraining(runs, "layers_segmentation", _record(runs, "a"))
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert kept.read_bytes() == pretrain.read_bytes()
    assert "| pretraining (top-1 0.858), once, shared by 2 studies |" in text
    assert "Another pretraining" not in text and "own pretraining" not in text
    assert "Summaries written before the record was kept" not in text


def test_a_new_summary_without_the_record_beside_another_cached_pretraining_is_named(
        tmp_path, capsys):
    """A runs' summary written before the record was kept is taken to have fine-tuned the
    kept pretraining, which stays; the runs' other cached one is named, with the way to
    record which it was."""
    out, kept = _kept_without_records(tmp_path)
    old = kept.read_bytes()
    runs = tmp_path / "runs"
    _dilation_with_3_layers(runs)
    _pretraining(runs, "a", PRETRAIN, 0.858, seconds=1200.0, train_seconds=1100.0)
    capsys.readouterr()
    assert make_results.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert kept.read_bytes() == old
    assert "| pretraining (top-1 0.842), once, shared by 2 studies |" in out.read_text()
    err = capsys.readouterr().err
    assert "dilation/summary.json does not say which pretraining it fine-tuned: taken to " \
           "be the kept one (top-1 0.842, its thread count not recorded)" in err
    assert "(top-1 0.858, its thread count not recorded); run the study again to record " \
           "it (it trains nothing)" in err
