"""experiments/roi_pooling.py (paper Table 3) in smoke mode, both detectors."""

from __future__ import annotations

import json

import pytest
from exp_scripts import load, run_args

roi_pooling = load("roi_pooling")


@pytest.mark.parametrize("detector", ["faster_rcnn", "rfcn"])
def test_smoke(tmp_path, detector):
    args = run_args(tmp_path, "--detector", detector, "--configs", "plain",
                    "deformable RoI pooling")
    assert roi_pooling.main(args) == 0
    folder = tmp_path / f"roi_pooling_{detector}"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["detector"] == detector
    rows = {r["config"]: r for r in summary["rows"]}
    assert set(rows) == {"plain", "deformable RoI pooling"}
    assert rows["deformable RoI pooling"]["deformable_roi_pooling"] is True
    assert rows["deformable RoI pooling"]["deformable_conv_layers"] == 0
    # the head's offset branch is the only addition
    assert rows["deformable RoI pooling"]["params"] > rows["plain"]["params"]
    assert all(0.0 <= r["AP"]["mean"] <= 1.0 and r["seconds_per_iteration"] > 0
               for r in rows.values())
    assert (folder / "deformable_RoI_pooling_seed0.json").exists()
