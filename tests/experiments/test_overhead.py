"""experiments/overhead.py, run as a script the way the README says."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from exp_scripts import EXPERIMENTS, load, run_args

overhead = load("overhead")


def test_script_smoke(tmp_path):
    done = subprocess.run([sys.executable, str(EXPERIMENTS / "overhead.py"),
                           *run_args(tmp_path, training=False)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "overhead" / "summary.json").read_text())
    assert summary["mode"] == "smoke" and summary["threads"] == 1
    assert [r["model"] for r in summary["rows"]] == [m.label for m in overhead.SMOKE_MODELS]
    for row in summary["rows"]:
        assert row["params_deformable"] > row["params_plain"] > 0
        assert row["params_increase"] == row["params_deformable"] / row["params_plain"] - 1
        assert row["ms_plain"] > 0 and row["ms_deformable"] > 0


def test_twins_share_the_input_size():
    for m in overhead.MODELS:
        deformable, plain = m.specs()
        assert deformable.kwargs == plain.kwargs and deformable.deformable
        assert not plain.deformable
        if "min_size" in m.kwargs:  # detectors must not resize the image
            assert m.kwargs["min_size"] == m.kwargs["max_size"] == m.image_size


def test_more_than_one_seed_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        overhead.main(run_args(tmp_path, "--seeds", "5", "7", training=False))
    assert err.value.code == 2
    assert "--seeds: overhead measures with one seed, got [5, 7]" in capsys.readouterr().err
    assert not (tmp_path / "overhead").exists()


def test_help_describes_a_study_that_trains_nothing(capsys):
    """--help offered --keep-checkpoints, described --plan as timing training iterations
    and --seeds as taking several seeds, none of which overhead does."""
    with pytest.raises(SystemExit) as err:
        overhead.main(["--help"])
    assert err.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--keep-checkpoints" not in text and "--jobs" not in text
    assert "training" not in text and "each at most once" not in text
    assert "--plan print how long the study takes, and stop" in text
    assert "measure with this one seed instead of 0" in text
