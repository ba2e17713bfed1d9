"""``deformconv demo --smoke``: three runs train, the report links real figures."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from deformconv.engine import decay_start

from .helpers import assert_valid_png, run_cli


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from deformconv.cli import main

    out = tmp_path_factory.mktemp("demo")
    config = out / "demo.toml"  # the config-file path, with a flag overriding it
    config.write_text("smoke = true\nval_size = 3\nseed = 5\n")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--config", str(config), "--val-size", "4", "--out", str(out)])
    assert code == 0
    return out, stdout.getvalue()


def test_demo_prints_the_comparison_table(demo_run: tuple[Path, str]) -> None:
    _, stdout = demo_run
    rows = [line.split("|")[1].strip() for line in stdout.splitlines()
            if line.startswith("| plain") or line.startswith("| deformable")]
    assert rows == ["plain", "deformable", "plain, equal time"]


def test_demo_metrics_json(demo_run: tuple[Path, str]) -> None:
    out, _ = demo_run
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["settings"]["seed"] == 5 and summary["settings"]["val_size"] == 4
    # channels-last by default: eval and viz rebuild the nets from their checkpoints so too
    assert summary["settings"]["channels_last"] is True
    runs = summary["runs"]
    assert [runs[k]["deformable"] for k in runs] == [False, True, False]
    for run in runs.values():
        assert 0.0 <= run["metrics"]["miou"] <= 1.0 and run["ms_per_image"] > 0
        assert run["train_seconds"] > 0
    assert runs["plain"]["iterations"] == runs["deformable"]["iterations"] == 4
    # the equal-time run gets the deformable run's time at the plain run's pace (the
    # ratio of the twins' step times, measured before training)
    steps = summary["step_seconds"]
    assert summary["step_ratio"] == pytest.approx(steps["deformable"] / steps["plain"])
    equal_time = runs["plain, equal time"]
    assert equal_time["iterations"] == max(1, round(4 * summary["step_ratio"]))
    # a longer run continues the plain one from its decay start, a shorter one starts afresh
    assert equal_time["branched_at"] == (decay_start(4, summary["settings"]["decay_share"])
                                         if equal_time["iterations"] >= 4 else None)
    assert runs["deformable"]["params"] > runs["plain"]["params"]  # the offset branches
    assert len(summary["class_weights"]) == len(summary["classes"]) + 1
    assert sum(b["objects"] for b in summary["recall_by_scale"]["plain"]) > 0
    assert {row["bucket"] for row in summary["dilation"]} >= {"small", "background"}
    gains = summary["example_gains"]
    assert gains[:-1] == sorted(gains[:-1], reverse=True) and gains[-1] <= min(gains[:-1])


def test_demo_report_links_valid_pngs(demo_run: tuple[Path, str]) -> None:
    out, _ = demo_run
    report = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"curves.png", "scales.png", "predictions.png"} <= set(links)
    assert any(re.fullmatch(r"offsets_sampling_\d+\.png", link) for link in links)
    for link in links:
        assert_valid_png(out / link)
    assert "Effective dilation by object size" in report
    assert "small below 4 visible pixels, large from 31" in report  # 32 px: 3.41, 30.72
    assert "at equal training time" in report


def test_demo_checkpoints_work_with_eval(capsys: pytest.CaptureFixture,
                                         demo_run: tuple[Path, str]) -> None:
    out, _ = demo_run
    summary = json.loads((out / "metrics.json").read_text())
    for folder, run in (("deformable", "deformable"), ("plain_equal_time", "plain, equal time")):
        code, _, err = run_cli(capsys, "eval", out / folder / "last.pt")
        assert code == 0, err
        result = json.loads((out / folder / "eval_last.json").read_text())
        assert result["metrics"]["miou"] == pytest.approx(summary["runs"][run]["metrics"]["miou"])


def test_demo_no_channels_last_flag() -> None:
    from deformconv.cli import build_parser
    from deformconv.cli.demo import settings_from_args

    parser, _ = build_parser()
    assert settings_from_args(parser.parse_args(["demo"])).channels_last
    assert not settings_from_args(parser.parse_args(["demo", "--no-channels-last"])).channels_last


def test_demo_rejects_bad_sizes(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "demo", "--smoke", "--image-size", "8", "--out", tmp_path)
    assert code == 2 and "--image-size must be >= 16" in err
    code, _, err = run_cli(capsys, "demo", "--smoke", "--deform-layers", "3", "--out", tmp_path)
    assert code == 2 and "--deform-layers must be at most 2" in err


def test_demo_refuses_settings_it_would_fail_on_before_training(
        capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """--deform-layers 0 trained all three runs, then failed with no report ("no deformable
    layers to plot"); a training set smaller than a batch died in the step timing with a
    bare StopIteration. Both are refused at once, nothing written."""
    out = tmp_path / "demo"
    code, stdout, err = run_cli(capsys, "demo", "--smoke", "--deform-layers", "0", "--out", out)
    assert code == 2 and "--deform-layers: expected an integer >= 1, got 0" in err
    code, stdout, err = run_cli(capsys, "demo", "--smoke", "--train-size", "1", "--out", out)
    assert code == 2 and "Traceback" not in err and "training" not in stdout
    assert "the training set has 1 samples, fewer than one batch of batch_size=2" in err
    assert not out.exists()
    from deformconv.runs import DemoSettings, run_demo

    with pytest.raises(ValueError, match=r"deform_layers must be at least 1 .*got 0"):
        run_demo(DemoSettings.smoke(deform_layers=0), out)


@pytest.mark.parametrize(("module", "message"), [
    ("matplotlib.figure", "deformconv demo's report needs matplotlib"),
    ("torchvision", "deformconv demo needs torchvision"),
])
def test_demo_without_an_extra_fails_before_rendering(
        capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        module: str, message: str) -> None:
    """Without matplotlib it trained the three runs, then failed writing the report (and a
    rerun was refused as an earlier demo in the folder); without torchvision it rendered
    every scene (3000 for the real demo) before the models' import failed."""
    monkeypatch.setitem(sys.modules, module, None)
    out = tmp_path / "demo"
    code, stdout, err = run_cli(capsys, "demo", "--smoke", "--no-progress", "--out", out)
    assert code == 2 and message in err and "deformconv[vision]" in err
    assert "rendering" not in stdout and not out.exists()


def test_a_rerun_needs_overwrite_and_replaces_the_earlier_demo(
        capsys: pytest.CaptureFixture, demo_run: tuple[Path, str], tmp_path: Path) -> None:
    """Nothing of the earlier demo stays beside the new one (its equal-time run and offset
    figures of other images used to); files that are not a demo's stay."""
    import shutil

    out = tmp_path / "demo"
    shutil.copytree(demo_run[0], out)
    (out / "offsets_sampling_99.png").write_bytes(b"an earlier figure")
    smoke = ["demo", "--smoke", "--no-equal-time", "--no-progress", "--out", out]
    code, _, err = run_cli(capsys, *smoke)
    assert code == 2 and f"{out} holds an earlier demo" in err and "--overwrite" in err
    assert (out / "plain_equal_time").is_dir()  # refused: nothing removed
    code, stdout, _ = run_cli(capsys, *smoke, "--overwrite")
    assert code == 0 and f"replacing the earlier demo in {out}" in stdout
    assert not (out / "plain_equal_time").exists() and (out / "demo.toml").is_file()
    report = (out / "report.md").read_text()
    figures = sorted(path.name for path in out.glob("offsets_sampling_*.png"))
    assert figures and all(name in report for name in figures)
    assert json.loads((out / "metrics.json").read_text())["settings"]["equal_time"] is False


def test_overwrite_keeps_the_earlier_demo_when_the_new_one_is_refused(
        capsys: pytest.CaptureFixture, demo_run: tuple[Path, str], tmp_path: Path) -> None:
    """--overwrite removed the earlier demo before a bad scene option refused the new one."""
    import shutil

    out = tmp_path / "demo"
    shutil.copytree(demo_run[0], out)
    before = sorted(str(path.relative_to(out)) for path in out.rglob("*"))
    code, stdout, err = run_cli(capsys, "demo", "--smoke", "--no-progress", "--out", out,
                                "--overwrite", "--scene", "bogus=1")
    assert code == 2 and "bogus" in err and "Traceback" not in err
    assert "replacing the earlier demo" not in stdout
    assert sorted(str(path.relative_to(out)) for path in out.rglob("*")) == before


def test_files_a_demo_did_not_write_are_never_replaced(capsys: pytest.CaptureFixture,
                                                      tmp_path: Path) -> None:
    """A training run in OUT/deformable is not an earlier demo, even with --overwrite."""
    (tmp_path / "deformable").mkdir()
    (tmp_path / "deformable" / "last.pt").write_bytes(b"a training run's checkpoint")
    code, _, err = run_cli(capsys, "demo", "--smoke", "--overwrite", "--out", tmp_path)
    assert code == 2 and "holds files a demo would replace (deformable) that no demo marked" in err
    assert (tmp_path / "deformable" / "last.pt").read_bytes() == b"a training run's checkpoint"


def test_a_stopped_demo_continues_with_resume(capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch,
                                              demo_run: tuple[Path, str],
                                              tmp_path: Path) -> None:
    """A demo stopped by Ctrl-C could only be retrained from the start (--overwrite); a
    rerun said to use --overwrite (overwrite=True). --resume keeps the finished plain run,
    continues the deformable one from its last.pt and reuses the measured step ratio."""
    import signal

    import deformconv.engine as engine

    train = engine.train

    def stop_the_deformable_run(config: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(config.out_dir).name == "deformable":
            kwargs["on_iteration_end"] = lambda done: (
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None) if done == 2 else None)
        return train(config, *args, **kwargs)

    out = tmp_path / "demo"
    smoke = ["demo", "--smoke", "--seed", "5", "--val-size", "4", "--no-progress", "--out", out]
    monkeypatch.setattr(engine, "train", stop_the_deformable_run)
    code, _, err = run_cli(capsys, *smoke)
    assert code == 130 and err.strip() == (
        f"deformconv demo: stopped by SIGINT after iteration 2/4; saved {out}/deformable/"
        "last.pt: continue with the same options and --resume")
    monkeypatch.setattr(engine, "train", train)
    code, _, err = run_cli(capsys, *smoke)
    assert code == 2 and "continue it, if it was stopped, with --resume" in err
    assert "overwrite=True" not in err
    code, _, err = run_cli(capsys, *smoke, "--resume", "--lr", "0.1")
    assert code == 2 and "--resume continues the demo" in err
    assert "give its options, --smoke --seed 5, instead of --smoke --lr 0.1 --seed 5;" in err
    ratio = json.loads((out / ".deformconv-demo").read_text())["step_ratio"]

    code, stdout, err = run_cli(capsys, *smoke, "--resume")
    assert code == 0, err
    assert "timing the twins" not in stdout
    summary = json.loads((out / "metrics.json").read_text())
    straight = json.loads((demo_run[0] / "metrics.json").read_text())
    assert summary["step_ratio"] == ratio
    for name in ("plain", "deformable"):  # as an uninterrupted demo's
        assert summary["runs"][name]["metrics"] == straight["runs"][name]["metrics"]
        assert summary["runs"][name]["iterations"] == 4
    assert summary["runs"]["plain, equal time"]["iterations"] == max(1, round(4 * ratio))


def test_an_out_under_a_file_is_refused_before_any_work(capsys: pytest.CaptureFixture,
                                                        tmp_path: Path) -> None:
    """A file in the way of --out failed with a raw errno after rendering and timing."""
    (tmp_path / "afile").write_text("not a folder")
    code, stdout, err = run_cli(capsys, "demo", "--smoke", "--no-progress", "--out",
                                tmp_path / "afile" / "d")
    assert code == 2 and "rendering" not in stdout and "Errno" not in err
    assert (f"cannot create the demo's folder {tmp_path}/afile/d: {tmp_path}/afile is a file, "
            "not a folder") in err


@pytest.mark.parametrize("exists", [True, False])
def test_an_out_where_no_file_can_be_created_is_refused_before_any_work(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        exists: bool) -> None:
    """A read-only --out failed only after rendering and timing (root ignores chmod: the
    refusal is simulated where the check creates its file)."""
    import tempfile

    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro / "d"
    if exists:
        out.mkdir()
    mkstemp = tempfile.mkstemp

    def denied(*args: Any, dir: Any = None, **kwargs: Any) -> Any:
        if dir is not None and Path(dir) in (ro, out):
            raise PermissionError(13, "Permission denied")
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    code, stdout, err = run_cli(capsys, "demo", "--smoke", "--no-progress", "--out", out)
    assert code == 2 and "rendering" not in stdout
    where = out if exists else ro
    assert f"cannot create files in {where}" in err and "make the folder writable" in err
    assert out.exists() == exists and not list(ro.rglob("*.lock"))


def _stopped_marker(out: Path, settings: Any, device: str = "cpu") -> None:
    """The marker of a demo with ``settings`` stopped before any run finished."""
    from dataclasses import asdict

    out.mkdir()
    (out / ".deformconv-demo").write_text(json.dumps(
        {"settings": asdict(settings), "device": device, "step_ratio": 1.5,
         "step_seconds": {"plain": 0.01, "deformable": 0.015}}))


def test_a_resume_with_other_settings_names_the_options_to_give(
        capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """The refusal named internal fields (widths [4, 4, 4] (now [24, 32, 48, 48, 48]),
    skip_layer, figures...) and never --smoke."""
    from deformconv.runs import DemoSettings

    out = tmp_path / "demo"
    _stopped_marker(out, DemoSettings.smoke(iterations=2000, progress=False))
    code, stdout, err = run_cli(capsys, "demo", "--resume", "--no-progress",
                                "--no-equal-time", "--out", out)
    assert code == 2 and "rendering" not in stdout
    assert (f"--resume continues the demo in {out} with the settings it was started with: "
            "give its options, --smoke --iterations 2000, instead of --no-equal-time (--smoke "
            "sets the small images") in err
    assert "widths" not in err and "skip_layer" not in err
    code, _, err = run_cli(capsys, "demo", "--resume", "--smoke", "--no-progress",
                           "--lr", "0.1", "--out", out)
    assert code == 2 and ("give its options, --smoke --iterations 2000, instead of --smoke "
                          "--lr 0.1; or start a new demo") in err


def test_the_options_of_a_refused_resume_read_back_as_its_settings(
        capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """--scene values were written as Python reprs (classes=['star', 'cross']), which do not
    read back: giving the suggested options was refused again, naming the same options."""
    import shlex
    from dataclasses import replace

    from deformconv.runs import DemoSettings

    out = tmp_path / "demo"
    smoke = DemoSettings.smoke(iterations=2000, progress=False)
    settings = replace(smoke, scene={**smoke.scene, "classes": ["star", "cross"],
                                     "clutter": "low key"})
    _stopped_marker(out, settings)
    code, _, err = run_cli(capsys, "demo", "--resume", "--no-progress", "--smoke",
                           "--out", out)
    assert code == 2
    options = err.split("give its options, ")[1].split(", instead of")[0]
    assert """--scene 'classes=["star", "cross"]'""" in options
    code, _, err = run_cli(capsys, "demo", "--resume", "--no-progress", "--out", out,
                           *shlex.split(options))
    assert code != 0 and "with the settings it was started with" not in err
    assert "clutter" in err  # past the settings: the scenes refuse the made-up option


def test_a_refused_resume_creates_no_folders(capsys: pytest.CaptureFixture,
                                             tmp_path: Path) -> None:
    """The demo's folder lock created --out with its parents; on the refusal only --out went,
    nx and nx/a stayed."""
    out = tmp_path / "nx" / "a" / "b"
    code, _, err = run_cli(capsys, "demo", "--smoke", "--resume", "--no-progress",
                           "--out", out)
    assert code == 2 and "holds no demo to resume" in err
    assert list(tmp_path.iterdir()) == []
