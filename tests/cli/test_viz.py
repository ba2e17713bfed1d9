"""deformconv viz: which files in --out it may replace, with a fresh model (seconds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deformconv.viz import report

from .helpers import run_cli

FRESH = ["viz", "--model", "compact_fcn", "--image-size", "32", "--val-size", "4"]


def test_an_older_viz_runs_folder_is_replaced(capsys: pytest.CaptureFixture,
                                              tmp_path: Path) -> None:
    """Versions before the .deformconv-viz list wrote none: viz refused its own default
    --out ("holds offsets.md, sampling_0.png, sampling_1.png, ..., that no viz run wrote
    there")."""
    out = tmp_path / "viz"
    code, _, err = run_cli(capsys, *FRESH, "--count", "2", "--out", out)
    assert code == 0, err
    (out / ".deformconv-viz").unlink()  # what an older viz left
    code, stdout, err = run_cli(capsys, *FRESH, "--index", "2", "--count", "1", "--out", out)
    assert code == 0, err
    assert f"removed 2 figure(s) of an earlier viz run from {out}: sampling_0.png, " \
           "sampling_1.png" in stdout
    assert sorted(path.name for path in out.iterdir()) == [
        ".deformconv-viz", "offsets.md", "sampling_2.png"]
    assert (out / ".deformconv-viz").read_text() == "sampling_2.png\noffsets.md\n"
    # without a list, an offsets.md that viz did not write keeps the folder not viz's
    (out / ".deformconv-viz").unlink()
    (out / "offsets.md").write_text("# My offsets\n")
    code, _, err = run_cli(capsys, *FRESH, "--count", "1", "--out", out)
    assert code == 2
    assert f"--out {out} holds offsets.md, sampling_2.png, named as viz names its files, " \
           "that are not in its .deformconv-viz list: written by an older viz or not by " \
           "viz;" in err
    assert (out / "offsets.md").read_text() == "# My offsets\n"


def test_each_figure_is_listed_before_it_is_written(capsys: pytest.CaptureFixture,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The list was written after all figures: a run that died part way left figures that
    the next run refused as no viz run's."""
    out = tmp_path / "viz"
    plot = report.plot_stacked_sampling
    written: list[Path] = []

    def plot_then_die(image: object, records: object, units: object, path: Path,
                      **kwargs: object) -> Path:
        assert path.name in (out / ".deformconv-viz").read_text().split()
        if written:
            raise KeyboardInterrupt
        written.append(plot(image, records, units, path, **kwargs))
        return written[-1]

    monkeypatch.setattr(report, "plot_stacked_sampling", plot_then_die)
    code, _, _ = run_cli(capsys, *FRESH, "--count", "2", "--out", out)
    assert code == 130 and [path.name for path in written] == ["sampling_0.png"]
    assert (out / "sampling_0.png").is_file() and not (out / "offsets.md").exists()
    monkeypatch.setattr(report, "plot_stacked_sampling", plot)
    code, _, err = run_cli(capsys, *FRESH, "--index", "1", "--count", "1", "--out", out)
    assert code == 0, err
    assert sorted(path.name for path in out.iterdir()) == [
        ".deformconv-viz", "offsets.md", "sampling_1.png"]


def test_viz_without_matplotlib_creates_nothing(capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """It gave the hint, but only after creating --out with its .deformconv-viz list."""
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    out = tmp_path / "viz"
    result = run_cli(capsys, *FRESH, "--out", out)
    assert not out.exists()
    assert result == (2, "", "deformconv viz: error: deformconv viz needs matplotlib, part of "
                             "the vision extra: pip install 'deformconv[vision]'\n")
