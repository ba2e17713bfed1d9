"""``deformconv demo --smoke``: both models train, the report links real figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .helpers import assert_valid_png, run_cli


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from deformconv.cli import main

    out = tmp_path_factory.mktemp("demo")
    config = out / "demo.toml"  # the config-file path, with a flag overriding it
    config.write_text("smoke = true\nval_size = 3\nseed = 5\n")
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--config", str(config), "--val-size", "4", "--out", str(out)])
    assert code == 0
    return out, stdout.getvalue()


def test_demo_prints_the_comparison_table(demo_run: tuple[Path, str]) -> None:
    _, stdout = demo_run
    table = [line for line in stdout.splitlines() if line.startswith("| deeplab_resnet50")]
    assert len(table) == 2
    assert "(deformable)" in table[0] and "(plain)" in table[1]


def test_demo_metrics_json(demo_run: tuple[Path, str]) -> None:
    out, _ = demo_run
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["task"] == "segmentation"
    assert summary["settings"]["seed"] == 5 and summary["settings"]["val_size"] == 4
    deformable, plain = summary["models"]["deformable"], summary["models"]["plain"]
    assert deformable["deformable"] is True and plain["deformable"] is False
    for model in (deformable, plain):
        assert 0.0 <= model["metrics"]["miou"] <= 1.0
        assert model["iterations"] == 2 and model["ms_per_image"] > 0
    # the twins differ only by the offset branches
    assert deformable["params"] > plain["params"]
    assert {row["bucket"] for row in summary["dilation"]} >= {"small", "medium", "large"}


def test_demo_report_links_valid_pngs(demo_run: tuple[Path, str]) -> None:
    out, _ = demo_run
    report = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"loss.png", "predictions.png", "offsets_sampling_0.png"} <= set(links)
    for link in links:
        assert_valid_png(out / link)
    assert "Effective dilation by object size" in report
    assert "| deeplab_resnet50 (deformable) |" in report


def test_demo_checkpoints_work_with_eval(capsys: pytest.CaptureFixture,
                                         demo_run: tuple[Path, str]) -> None:
    out, _ = demo_run
    code, stdout, err = run_cli(capsys, "eval", out / "plain" / "last.pt")
    assert code == 0, err
    summary = json.loads((out / "metrics.json").read_text())
    result = json.loads((out / "plain" / "eval_metrics.json").read_text())
    assert result["metrics"]["miou"] == pytest.approx(summary["models"]["plain"]["metrics"]["miou"])


def test_demo_rejects_images_too_small(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "demo", "--smoke", "--image-size", "16", "--out", tmp_path)
    assert code == 2 and "--image-size must be >= 32" in err
