"""``deformconv bench`` (script discovery and arguments) and ``deformconv export``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deformconv.cli.bench import SCRIPTS, find_benchmarks

from .helpers import run_cli


def test_finds_the_repository_benchmarks() -> None:
    folder = find_benchmarks()
    for script in SCRIPTS.values():
        assert (folder / script).is_file()


def _fake_benchmarks(folder: Path) -> Path:
    """Scripts that print the arguments they were given."""
    folder.mkdir()
    for name, script in SCRIPTS.items():
        (folder / script).write_text(f"import sys\nprint('{name}', sys.argv[1:])\n")
    return folder


def test_bench_runs_each_script_with_quick_settings(capfd: pytest.CaptureFixture,
                                                   tmp_path: Path) -> None:
    from deformconv.cli import main

    folder = _fake_benchmarks(tmp_path / "benchmarks")
    assert main(["bench", "--quick", "--bench-dir", str(folder)]) == 0
    out = capfd.readouterr().out
    assert "deform_conv ['--quick', '--repeats', '3']" in out
    assert "roi_pool ['--repeats', '3']" in out  # this script has no --quick


def test_bench_only_one_and_env_folder(capfd: pytest.CaptureFixture, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from deformconv.cli import main

    monkeypatch.setenv("DEFORMCONV_BENCHMARKS", str(_fake_benchmarks(tmp_path / "b")))
    assert main(["bench", "--only", "roi_pool", "--repeats", "7"]) == 0
    out = capfd.readouterr().out
    assert "roi_pool ['--repeats', '7']" in out and "deform_conv [" not in out


def test_bench_only_overrides_a_config_file_and_runs_each_once(
        capfd: pytest.CaptureFixture, tmp_path: Path) -> None:
    """--only on the command line ran the config file's benchmarks too; a benchmark named
    twice ran twice."""
    from deformconv.cli import main

    folder = _fake_benchmarks(tmp_path / "b")
    config = tmp_path / "bench.yaml"
    config.write_text(f"only: [deform_conv]\nbench_dir: {folder}\n")
    assert main(["bench", "--config", str(config), "--only", "roi_pool"]) == 0
    out = capfd.readouterr().out
    assert "== roi_pool" in out and "== deform_conv" not in out
    assert main(["bench", "--bench-dir", str(folder), "--only", "deform_conv", "--only",
                 "deform_conv"]) == 0
    assert capfd.readouterr().out.count("== deform_conv") == 1


def test_bench_missing_script(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    folder = _fake_benchmarks(tmp_path / "b")
    (folder / SCRIPTS["roi_pool"]).unlink()
    code, _, err = run_cli(capsys, "bench", "--bench-dir", folder)
    assert code == 2 and "benchmark script(s) missing" in err and "bench_roi_pool.py" in err


def test_bench_failing_script_gives_its_exit_code(capfd: pytest.CaptureFixture,
                                                 tmp_path: Path) -> None:
    from deformconv.cli import main

    folder = _fake_benchmarks(tmp_path / "b")
    (folder / SCRIPTS["deform_conv"]).write_text("import sys\nsys.exit(3)\n")
    assert main(["bench", "--only", "deform_conv", "--bench-dir", str(folder)]) == 3


def test_export_registered_model(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "seg.onnx"
    code, stdout, err = run_cli(capsys, "export", "deeplab_resnet50", "--out", out,
                                "--base-channels", "4", "--image-size", "32",
                                "--num-classes", "3")
    assert code == 0, err
    assert out.is_file()
    diff = float(stdout.split("max abs difference onnxruntime vs PyTorch: ")[1].split()[0])
    assert diff < 1e-3
    assert "deeplab_resnet50 (deformable), 4 outputs" in stdout


@pytest.mark.parametrize(("argv", "message"), [
    (["export", "--out", "m.onnx"], "give a model name"),
    (["export", "resnet5", "--out", "m.onnx"], "unknown model 'resnet5'"),
    (["export", "resnet50", "--out", "m.txt", "--base-channels", "4"],
     "--out must name a .onnx file"),
    (["export", "resnet50", "--out", "m.onnx", "--opset", "26"],
     "expected an opset in [19, 25]"),
    (["export", "resnet50", "--out", "m.onnx", "--opset", "18"],
     "expected an opset in [19, 25]"),
])
def test_export_bad_arguments(capsys: pytest.CaptureFixture, argv: list[str],
                              message: str) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err


def test_export_into_a_folder_that_is_a_file(capsys: pytest.CaptureFixture,
                                             tmp_path: Path) -> None:
    """It said '[Errno 17] File exists: <the file>', naming neither --out nor what is wrong."""
    (tmp_path / "afile").touch()
    out = tmp_path / "afile" / "x.onnx"
    code, _, err = run_cli(capsys, "export", "resnet50", "--out", out)
    assert code == 2
    assert err.strip() == (f"deformconv export: error: --out {out}: {tmp_path / 'afile'} is "
                           "a file, not a folder")


def test_export_without_onnx_extra(capsys: pytest.CaptureFixture,
                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    code, _, err = run_cli(capsys, "export", "resnet50", "--out", tmp_path / "m.onnx")
    assert code == 2 and "pip install 'deformconv[onnx]'" in err


def test_export_takes_out_from_a_config_file(capsys: pytest.CaptureFixture,
                                             tmp_path: Path) -> None:
    """--out was required by argparse, before the config file was read: a file's out
    could not give it."""
    config = tmp_path / "export.yaml"
    config.write_text("out: model.txt\n")
    code, _, err = run_cli(capsys, "export", "resnet18", "--config", config)
    assert code == 2 and "--out must name a .onnx file, got model.txt" in err
    code, _, err = run_cli(capsys, "export", "resnet18")
    assert code == 2 and "--out is required" in err


def test_export_rejected_by_the_onnx_checker_is_an_error_line(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A graph onnx.checker rejects ended the command with a traceback."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")

    def reject(*_args: object, **_kwargs: object) -> None:
        raise onnx.checker.ValidationError("no such op")

    monkeypatch.setattr(onnx.checker, "check_model", reject)
    out = tmp_path / "m.onnx"
    code, _, err = run_cli(capsys, "export", "resnet18", "--out", out, "--base-channels", "4",
                           "--image-size", "32", "--num-classes", "3")
    assert code == 2
    assert f"error: the exported graph is not valid ONNX, so {out} was not written" in err
    assert not out.exists()
