"""experiments/dilation.py (paper Table 2, Fig. 5): smoke run, buckets, zero-offset check."""

from __future__ import annotations

import json

import pytest
import torch
from exp_scripts import load, run_args

from deformconv.runs import build_datasets
from deformconv.viz import SIZE_BUCKETS, paint_instances

dilation = load("dilation")
runner = load("runner")


def _val_set(size=8):
    sizes = runner.Sizes(image_size=48, batch_size=4, train_size=4, val_size=size,
                         base_channels=4, iterations=1, seeds=(0,))
    return sizes, build_datasets(sizes.data(), "segmentation", need_train=False)[1]


def test_area_tertiles_split_objects_in_thirds():
    _, val_set = _val_set(12)
    low, high = dilation.area_tertiles(val_set)
    assert 0 < low <= high
    areas = []
    for i in range(len(val_set)):
        masks = torch.from_numpy(val_set.scene(i).masks)
        counts = torch.bincount(paint_instances(masks).flatten(),
                                minlength=len(masks) + 1)[1:]
        areas += [float(a) for a in counts if a > 0]
    below = sum(a < low for a in areas) / len(areas)
    above = sum(a > high for a in areas) / len(areas)
    assert below == pytest.approx(1 / 3, abs=0.15) and above == pytest.approx(1 / 3, abs=0.15)


def test_zero_offsets_give_the_nominal_dilation():
    """An untrained deformable net samples the regular grid: every bucket of every layer
    has the layer's own dilation, with no spread."""
    sizes, val_set = _val_set()
    spec, plain = runner.segmentation_specs(sizes, val_set.num_classes, (0, 0, 0, 3))
    model = runner.twin_model(spec, plain, 0)
    nominal = dilation.nominal_dilation(model)
    assert len(nominal) == 3 and set(nominal.values()) == {4}  # res5 at output stride 8
    rows = dilation.dilation_rows(model, val_set, dilation.area_tertiles(val_set), 4)
    assert {(r["layer"], r["bucket"]) for r in rows} == {
        (layer, b) for layer in nominal for b in SIZE_BUCKETS}
    assert sum(r["count"] for r in rows if r["bucket"] == "background") > 0
    for r in rows:
        if r["count"]:
            assert r["mean"] == pytest.approx(nominal[r["layer"]])
            assert r["std"] == pytest.approx(0.0, abs=1e-9)


def test_pooled_matches_concatenated_pixels():
    a, b = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([3.0, 7.0])
    rows = [{"count": len(x), "mean": x.mean().item(), "std": x.std(unbiased=False).item()}
            for x in (a, b)] + [{"count": 0, "mean": None, "std": None}]
    both = torch.cat([a, b])
    out = dilation.pooled(rows)
    assert out["count"] == 5 and out["mean"] == pytest.approx(both.mean().item())
    assert out["std"] == pytest.approx(both.std(unbiased=False).item())


def test_smoke(tmp_path):
    assert dilation.main(run_args(tmp_path)) == 0
    summary = json.loads((tmp_path / "dilation" / "summary.json").read_text())
    assert summary["mode"] == "smoke" and summary["deform_blocks"] == [0, 0, 0, 3]
    assert len(summary["rows"]) == 3 * len(SIZE_BUCKETS)
    assert summary["figures"] and all((tmp_path / "dilation" / f).is_file()
                                      for f in summary["figures"])
    assert summary["thresholds"][0] <= summary["thresholds"][1]


def test_the_summary_records_the_pretraining_and_a_rerun_adds_it_without_training(
        tmp_path, monkeypatch, capsys):
    """The summary names the pretraining its runs fine-tuned (the cache's record); a
    finished study run again (its summary written before the record was kept) rewrites
    its summary with it, training nothing and keeping its figures."""
    from deformconv.runs import pretrain

    assert dilation.main(run_args(tmp_path)) == 0
    path = tmp_path / "dilation" / "summary.json"
    summary = json.loads(path.read_text())
    (cache,) = (tmp_path / "cache").glob("pretrain-*/pretrain.json")
    record = runner.pretraining_record(json.loads(cache.read_text()))
    assert summary["pretraining"] == record
    assert cache.parent.name == f"pretrain-{record['key']}" and record["resumed"] is False
    assert {"top1", "threads", "cpu_seconds", "seconds", "iterations"} <= set(record)

    del summary["pretraining"]
    path.write_text(json.dumps(summary))
    results = {p: p.read_bytes() for p in (tmp_path / "dilation").glob("seed*.json")}

    def no_training(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.setattr(dilation, "train_run", no_training)
    monkeypatch.setattr(pretrain, "_train_into", no_training)
    capsys.readouterr()
    assert dilation.main(run_args(tmp_path)) == 0
    assert "done before, skipped" in capsys.readouterr().out
    again = json.loads(path.read_text())
    assert again == {**summary, "pretraining": record}
    assert {p: p.read_bytes() for p in results} == results
    assert all((tmp_path / "dilation" / f).is_file() for f in again["figures"])
