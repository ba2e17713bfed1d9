"""experiments/scale.py (beyond the paper: generalisation across object scale), smoke mode."""

from __future__ import annotations

import json

import pytest
from exp_scripts import load, run_args

scale = load("scale")


def test_test_sets_hold_objects_of_one_size():
    sets = scale.test_sets(scale.SIZES, (8, 32))
    for size, data in sets.items():
        scene = data.scene(0)
        assert len(scene.scales) and all(abs(s - size) < 1e-3 for s in scene.scales)


def test_models_are_twins_of_one_network():
    specs = {name: scale.spec(name, 5, smoke=False) for name in scale.MODELS}
    assert not specs["plain"].deformable and specs["modulated (v2)"].kwargs["modulated"]
    assert {s.name for s in specs.values()} == {"compact_fcn"}
    assert specs["deformable (v1)"].kwargs["deform_layers"] == 3


def test_smoke(tmp_path):
    assert scale.main(run_args(tmp_path)) == 0
    summary = json.loads((tmp_path / "scale" / "summary.json").read_text())
    assert summary["mode"] == "smoke" and [r["model"] for r in summary["rows"]] == list(
        scale.MODELS)
    for row in summary["rows"]:
        assert set(row["by_scale"]) == {str(s) for s in scale.SMOKE_TEST_SCALES}
        assert all(0.0 <= v["mean"] <= 1.0 for v in row["by_scale"].values())
    assert (tmp_path / "scale" / summary["figure"]).is_file()


def test_a_result_without_its_test_sizes_is_an_error_line(tmp_path, capsys):
    """A run result without miou_by_scale (damaged) made the summary fail with a KeyError
    traceback; it is one error line naming the file and the field, exit 2."""
    assert scale.main(run_args(tmp_path)) == 0
    path = tmp_path / "scale" / "plain_seed0.json"
    saved = json.loads(path.read_text())
    del saved["result"]["miou_by_scale"]
    path.write_text(json.dumps(saved))
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        scale.main(run_args(tmp_path))
    assert err.value.code == 2
    assert capsys.readouterr().err == f"error: {path} is not a valid result file (no " \
        "result.miou_by_scale.8 in it); delete it to run it again\n"
