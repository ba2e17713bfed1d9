"""The command itself: help texts, config files, and one-line errors with exit code 2."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from deformconv._extras import EXTRAS
from deformconv.cli import build_parser
from deformconv.cli._common import CLIError, apply_config_file, given_options, parse_assignments
from deformconv.engine import TrainingStopped

from .helpers import run_cli

SUBCOMMANDS = ("demo", "train", "eval", "viz", "bench", "export")


def test_module_and_console_script_help() -> None:
    done = subprocess.run([sys.executable, "-m", "deformconv", "--help"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    for name in SUBCOMMANDS:
        assert name in done.stdout
    script = Path(sys.executable).with_name("deformconv")
    if script.exists():  # the console script of an installed package
        done = subprocess.run([str(script), "bench", "--help"], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert "usage: deformconv bench" in done.stdout


# With every optional dependency blocked: every --help works, and the commands that need an
# extra say which.
CORE_ONLY = """
import contextlib, io
from deformconv.cli import main

for argv in (["--help"], *([command, "--help"] for command in {commands!r})):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as exit_:
            assert exit_.code == 0, (argv, exit_.code)
    assert out.getvalue().startswith("usage: deformconv"), argv
for argv, extra in {needs!r}:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(argv) == 2, argv
    assert f"pip install 'deformconv[{{extra}}]'" in err.getvalue(), (argv, err.getvalue())
"""


def test_help_and_extra_errors_with_only_the_core_dependencies(
        run_without: Callable[..., subprocess.CompletedProcess], tmp_path: Path) -> None:
    """Without tqdm (then in the vision extra) every --help was a ModuleNotFoundError
    traceback: the commands import the engine, which imports tqdm."""
    needs = [(["train", "--model", "resnet18", "--out", str(tmp_path / "run")], "vision"),
             (["export", "resnet18", "--out", str(tmp_path / "m.onnx")], "onnx")]
    run_without(EXTRAS, CORE_ONLY.format(commands=SUBCOMMANDS, needs=needs))


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(capsys: pytest.CaptureFixture, command: str) -> None:
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"usage: deformconv {command}")
    assert "--config" in out and "--threads" in out and "example:" in out


@pytest.mark.parametrize("command", ["train", "eval", "viz", "export"])
def test_threads_option_sets_torchs_threads(capsys: pytest.CaptureFixture,
                                            command: str) -> None:
    """``--threads 1`` applies before the command runs (here it then fails on bad input)."""
    import torch

    torch.set_num_threads(2)
    argv = {"train": ["--model", "resnet5"], "eval": ["/nonexistent/last.pt"],
            "viz": [], "export": ["--out", "model.txt"]}[command]
    code, _, err = run_cli(capsys, command, *argv, "--threads", "1")
    assert code == 2 and "Traceback" not in err
    assert torch.get_num_threads() == 1


def test_threads_option_of_bench_reaches_the_scripts(capfd: pytest.CaptureFixture,
                                                     tmp_path: Path) -> None:
    from deformconv.cli import main
    from deformconv.cli.bench import SCRIPTS

    for script in SCRIPTS.values():
        (tmp_path / script).write_text(
            "import os\nprint('threads', os.environ['OMP_NUM_THREADS'])\n")
    assert main(["bench", "--bench-dir", str(tmp_path), "--threads", "1"]) == 0
    assert capfd.readouterr().out.count("threads 1\n") == len(SCRIPTS)


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(capsys)
    assert code == 2 and "COMMAND" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--bogus"], "deformconv train: error: unrecognized arguments: --bogus (see "
                           "deformconv train --help)\n"),
    (["eval", "last.pt", "extra", "--bogus=1"], "deformconv eval: error: unrecognized "
                                                "arguments: extra --bogus=1 (see deformconv "
                                                "eval --help)\n"),
    (["--bogus", "train"], "deformconv: error: unrecognized arguments: --bogus (see "
                           "deformconv --help)\n"),
])
def test_unknown_arguments_are_the_command_s_error(capsys: pytest.CaptureFixture,
                                                   argv: list[str], message: str) -> None:
    """An unknown option of a subcommand was reported against the top-level command."""
    assert run_cli(capsys, *argv) == (2, "", message)


def test_a_bad_flag_value_is_one_line(capsys: pytest.CaptureFixture) -> None:
    """As the command's other errors (argparse printed the whole usage before the error)."""
    code, _, err = run_cli(capsys, "train", "--lr", "-1")
    assert (code, err) == (2, "deformconv train: error: argument --lr: expected a number > 0, "
                              "got -1 (see deformconv train --help)\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--model", "resnet5"], "unknown model 'resnet5'; available:"),
    (["train", "--model", "resnet50", "--task", "detection"],
     "model 'resnet50' is a classification model, but --task is detection"),
    (["train", "--data", "imagenet"], "--data must be synthetic"),
    (["train", "--data", "coco:only.json"], "coco:ANNOTATIONS.json:IMAGE_DIR"),
    (["train", "--data", "coco:/nonexistent/a.json:/nonexistent/img", "--task", "detection"],
     "COCO annotation file not found: /nonexistent/a.json"),
    (["train", "--data", "voc:/nonexistent/voc", "--task", "segmentation"],
     "VOC root folder not found: /nonexistent/voc"),
    (["train", "--data", "voc:/tmp", "--task", "classification"],
     "VOC data is for segmentation models"),
    (["train", "--deform-blocks", "0,0,3"], "--deform-blocks needs 4 comma-separated counts"),
    (["train", "--model-arg", "noequals"], "--model-arg expects KEY=VALUE"),
    (["train", "--scene", "foo=1"], "scene: unknown scene option(s) ['foo']"),
    (["train", "--model", "resnet50", "--scene", "max_objects=2"],
     "a classification scene always holds exactly one object"),
    (["eval", "/nonexistent/last.pt"], "checkpoint not found: /nonexistent/last.pt"),
    (["viz"], "give a checkpoint, or --model NAME"),
    (["train", "--optimizer", "adamw", "--momentum", "0.5"],
     "--momentum is for --optimizer sgd; adamw takes none"),
    (["train", "--schedule", "step", "--milestones", "5,5"],
     "milestones must be positive and strictly increasing, got [5, 5]"),
    (["train", "--schedule", "step", "--gamma", "-1"], "gamma must be finite and >= 0"),
    (["train", "--milestones", "5"],
     "--milestones is for --schedule step; cosine has no milestones"),
    (["train", "--schedule", "wsd", "--gamma", "0.5"],
     "--gamma is for --schedule step; wsd has no milestones"),
    (["bench", "--bench-dir", "/nonexistent/benchmarks"],
     "benchmark folder not found: /nonexistent/benchmarks"),
    (["train", "--config", "/nonexistent/run.yaml"], "config file not found"),
    (["train", "--num-classes", "5"], "--num-classes is for VOC data only; synthetic data "),
    (["export", "missing.pt", "--out", "m.onnx"], "checkpoint not found: missing.pt"),
    (["export", "runs/x/last", "--out", "m.onnx"], "checkpoint not found: runs/x/last"),
    (["export", "model.ckpt", "--out", "m.onnx"], "checkpoint not found: model.ckpt"),
])
def test_bad_input_gives_one_line_and_code_2(capsys: pytest.CaptureFixture, argv: list[str],
                                             message: str) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"deformconv {argv[0]}: error: ")


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--batch-size", "0"], "expected an integer >= 1, got 0"),
    (["train", "--lr", "-1"], "expected a number > 0"),
    (["train", "--schedule", "linear"], "invalid choice: 'linear'"),
    (["train", "--milestones", "0,5"], "expected comma-separated iterations >= 1, got '0,5'"),
    (["train", "--milestones", "5,x"], "expected comma-separated iterations >= 1"),
    (["demo", "--lr", "soon"], "expected a number > 0, got 'soon'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["export", "resnet18", "--out", "m.onnx", "--batch", "1"],
     "--batch: expected an integer >= 2 (the exported batch size is dynamic), got '1'"),
])
def test_bad_values_are_argparse_errors(capsys: pytest.CaptureFixture, argv: list[str],
                                        message: str) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_checkpoint_that_is_not_a_checkpoint(capsys: pytest.CaptureFixture,
                                             tmp_path: Path) -> None:
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a torch file")
    code, _, err = run_cli(capsys, "eval", bad)
    assert code == 2 and f"could not read checkpoint {bad}" in err


def _train_parser():
    return build_parser()[1]["train"]


def test_no_bf16_turns_a_config_files_bf16_off_and_counts_as_given(tmp_path: Path) -> None:
    """train's --no-bf16 (as eval's) overrides a file's bf16 and a resumed checkpoint's
    (a resume keeps the settings not given); there was no way to turn it off."""
    config = tmp_path / "run.yaml"
    config.write_text("bf16: true\n")
    parser = _train_parser()
    apply_config_file(parser, str(config))
    assert parser.parse_args([]).bf16 is True
    assert parser.parse_args(["--no-bf16"]).bf16 is False
    assert "bf16" in given_options(parser, ["--no-bf16"])


def test_yaml_config_sets_defaults_and_flags_override(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("batch-size: 4\nlr: 0.5\nbf16: true\nmodel_arg: [min_size=64]\n"
                      "schedule: step\n")
    parser = _train_parser()
    apply_config_file(parser, str(config))
    args = parser.parse_args(["--lr", "0.1"])
    assert (args.batch_size, args.lr, args.bf16, args.schedule) == (4, 0.1, True, "step")
    assert args.model_arg == ["min_size=64"]



def test_yaml_config_without_pyyaml_names_the_extra_as_every_hint_does(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """It said "YAML config files need pyyaml: pip install 'deformconv[vision]'", worded
    unlike deformconv._extras's hints."""
    config = tmp_path / "run.yaml"
    config.write_text("lr: 0.5\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if not installed
    assert run_cli(capsys, "train", "--config", config) == (
        2, "", f"deformconv train: error: --config {config} needs yaml, part of the vision "
               "extra: pip install 'deformconv[vision]'\n")


def test_a_repeatable_flag_replaces_the_config_file_s_list(tmp_path: Path) -> None:
    """The command line's values of an append flag were added to the file's."""
    config = tmp_path / "run.yaml"
    config.write_text("model_arg: [a=1, b=2]\nscene: {max_objects: 1}\n")
    parser = _train_parser()
    apply_config_file(parser, str(config))
    args = parser.parse_args(["--model-arg", "c=3", "--model-arg", "d=4"])
    assert (args.model_arg, args.scene) == (["c=3", "d=4"], ["max_objects=1"])
    assert parser.parse_args([]).model_arg == ["a=1", "b=2"]  # the file's, when no flag


def test_toml_config(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('model = "resnet50"\niterations = 7\nout = "runs/x"\n')
    parser = _train_parser()
    apply_config_file(parser, str(config))
    args = parser.parse_args([])
    assert (args.model, args.iterations, args.out) == ("resnet50", 7, "runs/x")


@pytest.mark.parametrize(("command", "key"), [
    ("train", "out"), ("train", "resume"), ("demo", "out"), ("eval", "out"), ("viz", "out"),
    ("export", "checkpoint"), ("bench", "bench_dir"),
])
def test_config_file_paths_expand_the_home_folder(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  command: str, key: str) -> None:
    """``~`` was expanded in ``data`` only: ``out: ~/runs/t`` made a folder named ``~``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = tmp_path / "run.yaml"
    config.write_text(f"{key}: ~/runs/t\n")
    parser = build_parser()[1][command]
    apply_config_file(parser, str(config))
    args = parser.parse_args({"eval": ["CKPT"], "export": ["--out", "x.onnx"]}.get(command, []))
    assert getattr(args, key) == str(tmp_path / "home" / "runs" / "t")


def test_config_file_mappings_and_lists_read_as_their_flags(tmp_path: Path) -> None:
    """A mapping for a KEY=VALUE flag and a list for a comma-separated one read as the flag
    would (both were refused, naming the flag instead of the file)."""
    config = tmp_path / "run.yaml"
    config.write_text("model_arg: {deform_layers: 2, rpn: {nms: 0.5, name: x, norm: none, "
                      "v: '2'}}\n"
                      "scene: {max_objects: 1}\ndeform_blocks: [0, 0, 1, 1]\n"
                      "class_weights: [1, 2.5]\nmilestones: [5, 8]\ngamma: 0.5\n")
    parser = _train_parser()
    apply_config_file(parser, str(config))
    args = parser.parse_args([])
    assert parse_assignments(args.model_arg, "--model-arg") == {
        "deform_layers": 2, "rpn": {"nms": 0.5, "name": "x", "norm": "none", "v": "2"}}
    assert args.scene == ["max_objects=1"] and args.deform_blocks == "0,0,1,1"
    assert args.class_weights == parser.parse_args(["--class-weights", "1,2.5"]).class_weights
    assert (args.milestones, args.gamma) == ([5, 8], 0.5)
    assert parser.parse_args(["--milestones", "3,6"]).milestones == [3, 6]


@pytest.mark.parametrize(("text", "message"), [
    ("batch_sise: 4\n", "unknown key 'batch_sise'; valid keys: base_channels, batch_size,"),
    ("batch_size: 0\n", "batch_size: expected an integer >= 1, got 0"),
    ("batch_size: 2.5\n", "batch_size: expected an integer >= 1, got '2.5'"),
    ("bf16: 1\n", "bf16 must be true or false, got 1"),
    # the types in words (they were "a positive_float", "a non_negative_int", ...)
    ("lr: true\n", "lr must be a number > 0, got True"),
    ("seed: true\n", "seed must be an integer >= 0, got True"),
    ("offset_lr_mult: false\n", "offset_lr_mult must be a number >= 0 or 'model', got False"),
    ("momentum: true\n", "momentum must be a number, got True"),
    ("momentum: fast\n", "momentum must be a number, got 'fast'"),
    ("out: true\n", "out must be a path, got True"),
    ("schedule: linear\n",
     "schedule must be one of ['cosine', 'onecycle', 'step', 'wsd'], got 'linear'"),
    ("lr: [1, 2]\n", "lr must be a single value"),
    ("out: null\n", "out is empty (null); give it a value, or leave the key out"),
    ("offset_lr_mult:\n", "offset_lr_mult is empty (null)"),
    ("model_arg: [a=1, null]\n", "model_arg holds an empty (null) entry"),
    ("model_arg: {a.b: 1}\n", "model_arg: key a.b: a key of a mapping cannot hold a dot"),
    ("- a\n- b\n", "expected a mapping of option: value, got a list"),
    ("a: [\n", "invalid YAML"),
])
def test_bad_config_files(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(CLIError, match=None) as err:
        apply_config_file(_train_parser(), str(config))
    assert message in str(err.value)


def test_bad_config_file_through_main(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("epochs = \n")
    code, _, err = run_cli(capsys, "train", "--config", config)
    assert code == 2 and "invalid TOML" in err and "Traceback" not in err
    config = tmp_path / "bad.json"
    config.write_text("{}")
    code, _, err = run_cli(capsys, "train", "--config", config)
    assert code == 2 and "expected a .yaml, .yml or .toml file" in err


def test_parse_assignments() -> None:
    got = parse_assignments(["a=1", "b.c=x", "b.d=[1, 2]", "e=true", "f=0.5"], "--opt")
    assert got == {"a": 1, "b": {"c": "x", "d": [1, 2]}, "e": True, "f": 0.5}
    with pytest.raises(CLIError, match="conflicts with the earlier value of 'a'"):
        parse_assignments(["a=1", "a.b=2"], "--opt")


def test_missing_optional_dependency_names_the_extra(capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    from deformconv.runs import plots as _plots

    def missing(*args: object, **kwargs: object) -> None:
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(_plots, "plot_learning_curves", missing)
    code, _, err = run_cli(capsys, "demo", "--smoke", "--out", tmp_path)
    assert code == 2
    assert "needs matplotlib, part of the vision extra: pip install 'deformconv[vision]'" in err


@pytest.mark.parametrize(("raised", "code", "message"), [
    (KeyboardInterrupt(), 130, "interrupted"),
    (TrainingStopped(signal.SIGTERM, 3, 10, Path("run/last.pt")), 143,
     "stopped by SIGTERM after iteration 3/10; saved run/last.pt"),
])
def test_interrupts_exit_with_the_signals_code(capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch,
                                               raised: KeyboardInterrupt, code: int,
                                               message: str) -> None:
    from deformconv.cli import evaluate

    def interrupted(args: object) -> int:
        raise raised

    monkeypatch.setattr(evaluate, "run_eval", interrupted)
    assert run_cli(capsys, "eval", "last.pt") == (code, "", f"deformconv eval: {message}\n")


def test_under_torchrun_only_the_first_process_reports_the_stop(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rank printed "stopped by SIGTERM after iteration ..."."""
    from deformconv.cli import train

    def stopped(args: object) -> int:
        raise TrainingStopped(signal.SIGTERM, 11, 60, Path("last.pt"))

    monkeypatch.setattr(train, "run_train", stopped)
    monkeypatch.setenv("RANK", "1")
    assert run_cli(capsys, "train") == (143, "", "")
    monkeypatch.setenv("RANK", "0")
    code, _, err = run_cli(capsys, "train")
    assert code == 143 and err.startswith("deformconv train: stopped by SIGTERM after "
                                          "iteration 11/60")


def test_every_option_type_says_what_it_takes_in_words() -> None:
    """A config file's wrong value is named by its option's type in words; a type without
    them said "must be a value" (export's opset did)."""
    from deformconv.cli import build_parser
    from deformconv.cli._common import expected_value

    _, commands = build_parser()
    vague = [f"{name} {action.dest}" for name, parser in commands.items()
             for action in parser._actions
             if action.type is not None and expected_value(action.type) == "a value"]
    assert vague == []


def test_a_rank_that_rank_0_refused_exits_quietly(capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun, rank 0 prints why it refused a run; the other ranks, refused with
    it, add nothing (they printed a gloo traceback)."""
    from deformconv.cli import train
    from deformconv.engine import RefusedByMainProcess

    def refused(args: object) -> int:
        raise RefusedByMainProcess("rank 0 refused to start the run into run")

    monkeypatch.setattr(train, "run_train", refused)
    monkeypatch.setenv("RANK", "1")
    assert run_cli(capsys, "train") == (1, "", "")


def _torch_save_failing() -> None:
    """torch.save into a file whose writes fail as past ``ulimit -f``: torch's zip writer
    replaces the OSError with 'RuntimeError: [enforce fail at inline_container.cc ...'."""
    import io

    import torch

    class TooLarge(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            if self.tell() > 1000:
                raise OSError(errno.EFBIG, "File too large")
            return super().write(data)

    torch.save({"weights": torch.zeros(10_000)}, TooLarge())


def _checkpoint_save_failing(path: str) -> None:
    """:func:`_torch_save_failing` as ``save_checkpoint`` writes ``path``: it names the file
    (the CLI printed 'writing a file failed: ...')."""
    from deformconv._paths import naming_the_file

    with naming_the_file(path):
        _torch_save_failing()


def _raise(error: BaseException) -> Callable[[], None]:
    def fail() -> None:
        raise error
    return fail


@pytest.mark.parametrize(("fail", "message"), [
    (_raise(OSError(errno.ENOSPC, "No space left on device", "out/figure.png")),
     "cannot write out/figure.png: [Errno 28] No space left on device"),
    (_raise(OSError(errno.EROFS, "Read-only file system")),
     "writing a file failed: [Errno 30] Read-only file system"),
    (_torch_save_failing, "writing a file failed: [Errno 27] File too large"),
    (lambda: _checkpoint_save_failing("out/last.pt"),
     "cannot write out/last.pt: [Errno 27] File too large"),
])
def test_a_refused_write_is_one_line_and_code_1(capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch,
                                                fail: Callable[[], None], message: str) -> None:
    """A full disk or `ulimit -f` ended in a ~40-line traceback, torch's last line
    ('unexpected pos 445248 vs 445136') hiding the cause; the debug variable keeps it."""
    from deformconv.cli import DEBUG_ENV, evaluate

    monkeypatch.setattr(evaluate, "run_eval", lambda args: fail())
    assert run_cli(capsys, "eval", "last.pt") == (1, "", f"deformconv eval: error: {message}\n")
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises((OSError, RuntimeError)):
        run_cli(capsys, "eval", "last.pt")


def test_other_os_errors_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only refused writes are one line: another OSError may be a bug."""
    from deformconv.cli import evaluate, main

    failing = _raise(OSError(errno.EBADF, "Bad file"))
    monkeypatch.setattr(evaluate, "run_eval", lambda args: failing())
    with pytest.raises(OSError, match="Bad file"):
        main(["eval", "last.pt"])


def test_deformconv_warnings_are_one_line_and_others_keep_their_form(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A skipped sample was printed in Python's form, with the file, the line and a source
    line of deformconv's code: ``.../cli/_data.py:120: RuntimeWarning: skipping sample 3:
    ... \\n  return CocoDetection(...``."""
    import warnings

    from deformconv.cli import PACKAGE_DIR, evaluate

    def warns(args: object) -> int:
        warnings.warn_explicit("skipping sample 3:\n  image.png is truncated", RuntimeWarning,
                               str(PACKAGE_DIR / "data" / "_common.py"), 232)
        warnings.warn_explicit("a torch warning", UserWarning, str(tmp_path / "torch.py"), 7)
        return 0

    monkeypatch.setattr(evaluate, "run_eval", warns)
    shown = warnings.showwarning
    with pytest.warns(UserWarning, match="a torch warning"):  # shown as before
        code, _, err = run_cli(capsys, "eval", tmp_path / "last.pt")
    assert (code, err) == (0, "deformconv eval: warning: skipping sample 3: image.png is "
                              "truncated\n")
    assert warnings.showwarning is shown  # main() leaves the caller's as it was
