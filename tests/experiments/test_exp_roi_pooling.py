"""experiments/roi_pooling.py (paper Table 3) in smoke mode."""

from __future__ import annotations

import json

from exp_scripts import load, run_args

roi_pooling = load("roi_pooling")


def test_smoke(tmp_path):
    args = run_args(tmp_path, "--configs", "plain", "deformable RoI pooling")
    assert roi_pooling.main(args) == 0
    summary = json.loads((tmp_path / "roi_pooling" / "summary.json").read_text())
    rows = {r["config"]: r for r in summary["rows"]}
    assert set(rows) == {"plain", "deformable RoI pooling"}
    assert rows["deformable RoI pooling"]["deformable_roi_pooling"] is True
    assert rows["deformable RoI pooling"]["deformable_conv_layers"] == 0
    # the head's offset fc is the only addition
    assert rows["deformable RoI pooling"]["params"] > rows["plain"]["params"]
    assert all(0.0 <= r["AP"]["mean"] <= 1.0 for r in rows.values())
    assert (tmp_path / "roi_pooling" / "deformable_RoI_pooling_seed0.json").exists()
