"""train -> checkpoint -> eval / resume / viz / export, on tiny synthetic and on-disk data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import deformconv.engine as engine
from deformconv.cli.evaluate import EVAL_KEYS, is_eval_result
from deformconv.engine import distributed, load_checkpoint

from .helpers import TINY_CLS, assert_valid_png, run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-iteration classification run with a checkpoint every 2 iterations ("auto" resume
    in an empty folder starts a new run)."""
    out = tmp_path_factory.mktemp("cls")
    code = _main("train", *TINY_CLS, "--iterations", "4", "--checkpoint-every", "2",
                 "--out", out, "--resume", "auto")
    assert code == 0
    return out


def _main(*argv: object) -> int:
    from deformconv.cli import main

    return main([str(a) for a in argv])


def test_train_writes_checkpoint_config_and_metrics(trained: Path) -> None:
    state = load_checkpoint(trained / "last.pt")
    assert state["iteration"] == 4
    assert state["extra"]["model"]["name"] == "resnet50"
    assert state["extra"]["model"]["num_classes"] == 10  # synthetic default classes
    assert state["extra"]["data"]["image_size"] == 32
    final = json.loads((trained / "final_metrics.json").read_text())
    assert final["iteration"] == 4 and 0.0 <= final["metrics"]["top1"] <= 1.0
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "val"}


def test_eval_recomputes_the_final_metric(capsys: pytest.CaptureFixture, trained: Path,
                                          tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    code, stdout, _ = run_cli(capsys, "eval", trained / "last.pt", "--out", out,
                              "--batch-size", "3", "--no-progress")
    assert code == 0 and "top1=" in stdout
    result = json.loads(out.read_text())
    # what was scored is recorded with the scores
    assert (result["data"]["val_size"], result["data"]["image_size"]) == (4, 32)
    assert (result["batch_size"], result["bf16"]) == (3, False)
    final = json.loads((trained / "final_metrics.json").read_text())
    assert result["metrics"]["top1"] == final["metrics"]["top1"]
    assert result["metrics"]["num_images"] == 4 and result["model"] == "resnet50"
    # which state of the run: a later resume moves last.pt on, not this file
    assert (result["iteration"], result["finished"]) == (4, True)
    old = {key: value for key, value in result.items() if key not in ("iteration", "finished")}
    (tmp_path / "old.json").write_text(json.dumps(old))  # as eval wrote it before
    assert is_eval_result(out) and is_eval_result(tmp_path / "old.json")


def test_eval_under_torchrun_scores_each_image_once(trained: Path, tmp_path: Path) -> None:
    """Two processes share the images and the first writes the result (each used to score
    every image and write the same file)."""
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    command = ["-m", "deformconv", "eval", str(trained / "last.pt"), "--val-size", "5",
               "--batch-size", "2", "--no-progress", "--threads", "1", "--out"]
    subprocess.run([sys.executable, *command, str(one)], check=True, capture_output=True,
                   timeout=300)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", *command, str(two)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("samples: top1=") == 1
    single, shared = (json.loads(path.read_text())["metrics"] for path in (one, two))
    assert shared == single and shared["num_images"] == 5
    assert json.loads(two.read_text())["processes"] == 2  # batch_size is per process


def test_eval_refuses_a_folder_as_out_before_evaluating(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, trained: Path) -> None:
    """The evaluation used to run in full, then fail to write its JSON into the folder."""
    from deformconv import engine

    def evaluated(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluated before --out was checked")

    monkeypatch.setattr(engine, "evaluate", evaluated)
    code, _, err = run_cli(capsys, "eval", trained / "last.pt", "--out", trained)
    assert code == 2
    assert f"--out {trained} is a folder" in err and "eval_last.json" in err



def _not_evaluated(monkeypatch: pytest.MonkeyPatch) -> None:
    from deformconv import engine

    def evaluated(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluated before --out was checked")

    monkeypatch.setattr(engine, "evaluate", evaluated)


def test_eval_refuses_an_out_below_a_file_before_evaluating(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, trained: Path,
        tmp_path: Path) -> None:
    """It evaluated, then printed a raw errno: '[Errno 17] File exists: 'afile''."""
    _not_evaluated(monkeypatch)
    (tmp_path / "afile").write_text("mine")
    out = tmp_path / "afile" / "e.json"
    assert run_cli(capsys, "eval", trained / "last.pt", "--out", out) == (
        2, "", f"deformconv eval: error: --out {out}: {tmp_path / 'afile'} is a file, "
               "not a folder\n")
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize(("error", "code", "message"), [
    (PermissionError(13, "Permission denied"), 2,
     "cannot create files in {folder} (to write eval_last.json): Permission denied; make "
     "the folder writable or choose another one"),
    (OSError(30, "Read-only file system"), 1,
     "cannot write {folder}/eval_last.json: [Errno 30] Read-only file system")])
def test_eval_refuses_a_folder_where_no_file_can_be_created_before_evaluating(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, trained: Path,
        tmp_path: Path, error: OSError, code: int, message: str) -> None:
    """Its metrics JSON goes beside the checkpoint: in a read-only folder it evaluated in
    full, then failed to write it. (Root ignores a folder's mode: creating files there is
    made to fail as it does.)"""
    import tempfile

    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(trained / "last.pt", folder / "last.pt")
    mkstemp = tempfile.mkstemp

    def refused_in_folder(*args: Any, dir: Any = None, **kwargs: Any) -> tuple[int, str]:
        if dir is not None and Path(dir) == folder:
            error.filename = str(folder / ".eval_last.json.x.tmp")
            raise error
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refused_in_folder)
    _not_evaluated(monkeypatch)
    assert run_cli(capsys, "eval", folder / "last.pt") == (
        code, "", f"deformconv eval: error: {message.format(folder=folder)}\n")
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]


def test_eval_refuses_to_overwrite_what_it_did_not_write(
        capsys: pytest.CaptureFixture, trained: Path, tmp_path: Path) -> None:
    """``eval CKPT --out CKPT`` replaced the checkpoint with the metrics JSON (exit 0); any
    existing file but an earlier eval's metrics JSON is refused now, before evaluating."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    code, _, err = run_cli(capsys, "eval", run / "last.pt", "--out", run / "last.pt")
    assert code == 2 and err == (
        f"deformconv eval: error: --out {run / 'last.pt'} is the checkpoint being evaluated; "
        f"give the metrics JSON file to write, e.g. {run / 'eval_last.json'}\n")
    for name in ("best.pt", "metrics.jsonl", "config.json", "final_metrics.json"):
        code, _, err = run_cli(capsys, "eval", run / "last.pt", "--out", run / name)
        assert code == 2 and f"--out {run / name} exists and is not an earlier eval's" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files
    out = tmp_path / "eval.json"  # an earlier result of eval is replaced
    for batch_size in ("2", "4"):
        code, _, err = run_cli(capsys, "eval", run / "last.pt", "--out", out, "--batch-size",
                               batch_size, "--no-progress")
        assert code == 0, err
    assert json.loads(out.read_text())["batch_size"] == 4


def test_eval_on_other_data_size_and_default_output(capsys: pytest.CaptureFixture,
                                                     trained: Path) -> None:
    code, _, _ = run_cli(capsys, "eval", trained / "last.pt", "--val-size", "6")
    assert code == 0
    code, _, _ = run_cli(capsys, "eval", trained / "best.pt", "--val-size", "5")
    assert code == 0
    # each checkpoint keeps its own metrics file
    assert json.loads((trained / "eval_last.json").read_text())["metrics"]["num_images"] == 6
    assert json.loads((trained / "eval_best.json").read_text())["metrics"]["num_images"] == 5


def test_a_new_run_refused_for_its_class_weights_leaves_no_folder(
        capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """It was refused in its first step, leaving the folder with .lock and an empty
    metrics.jsonl."""
    out = tmp_path / "runs" / "cw"
    code, _, err = run_cli(capsys, "train", "--model", "compact_fcn", "--plain",
                           "--image-size", "16", "--train-size", "4", "--val-size", "2",
                           "--batch-size", "2", "--iterations", "2", "--class-weights", "1,2",
                           "--no-progress", "--out", out)
    assert code == 2 and "class_weights must hold one weight per class of the model's 11 " \
        "outputs, got shape (2,)" in err
    assert list(tmp_path.iterdir()) == []


def test_eval_takes_bf16_from_the_checkpoint_unless_given(
        capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """eval of a --bf16 run's checkpoint scores with bf16 autocast, as the run's final
    validation did (it scored in float32 without --bf16, and recorded "bf16": false);
    --no-bf16 and a config file's bf16 override it."""
    out = tmp_path / "bf16"
    code, _, _ = run_cli(capsys, "train", "--model", "compact_fcn", "--image-size", "16",
                         "--train-size", "4", "--val-size", "4", "--batch-size", "2",
                         "--iterations", "2", "--no-progress", "--plain", "--bf16", "--out", out)
    assert code == 0
    final = json.loads((out / "final_metrics.json").read_text())["metrics"]
    scored = {}
    config = tmp_path / "eval.yaml"
    config.write_text("bf16: false\n")
    for name, flags in [("default", []), ("flag", ["--no-bf16"]),
                        ("file", ["--config", config]), ("both", ["--config", config, "--bf16"])]:
        code, _, err = run_cli(capsys, "eval", out / "last.pt", "--out", tmp_path / f"{name}.json",
                               "--no-progress", *flags)
        assert code == 0, err
        scored[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert {name: result["bf16"] for name, result in scored.items()} == {
        "default": True, "flag": False, "file": False, "both": True}
    assert scored["default"]["metrics"] == final


@pytest.mark.parametrize(("signal_spec", "workers", "code"), [
    ("SIGINT", "0", 130),  # Ctrl-C to the process
    ("group-SIGTERM", "2", 143),  # a scheduler's SIGTERM to every process, workers included
])
def test_interrupted_run_resumes_to_identical_weights(capsys: pytest.CaptureFixture,
                                                      trained: Path, tmp_path: Path,
                                                      signal_spec: str, workers: str,
                                                      code: int) -> None:
    """The same run, signalled in iteration 3 (checkpoints every 2), then resumed to 4: it
    stops after iteration 3 with a checkpoint. Data-loading workers used to die of a group
    SIGTERM, which their loader reported as a crash: no checkpoint, exit code 1."""
    out = tmp_path / "interrupted"
    killed_run = Path(__file__).parents[1] / "engine" / "_killed_run.py"
    done = subprocess.run(
        [sys.executable, str(killed_run), f"3:{signal_spec}", "-m", "deformconv",
         "train", *TINY_CLS, "--iterations", "4", "--checkpoint-every", "2", "--out",
         str(out), "--workers", workers],
        capture_output=True, text=True, timeout=300, check=False, start_new_session=True)
    assert done.returncode == code, done.stderr
    name = signal_spec.removeprefix("group-")
    assert done.stderr.endswith(
        f"deformconv train: stopped by {name} after iteration 3/4; saved {out / 'last.pt'}"
        ": continue with --resume auto\n")
    assert load_checkpoint(out / "last.pt")["iteration"] == 3
    code, stdout, _ = run_cli(capsys, "train", "--resume", "auto", "--iterations", "4",
                              "--checkpoint-every", "2", "--out", out, "--no-progress")
    assert code == 0 and "continuing from" in stdout
    resumed = load_checkpoint(out / "last.pt")["model"]
    straight = load_checkpoint(trained / "last.pt")["model"]
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key
    # the log line at 4 averages iterations 1-4 in both runs (the resumed one's used to
    # average iteration 4 alone)
    assert _train_losses(out) == _train_losses(trained)


def _train_losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: r["loss"] for r in records if r["split"] == "train"}


def test_a_signal_in_the_last_iteration_stops_before_the_final_validation(
        capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """Announced as a stop, it used to run the whole final validation and exit 0. The run
    stops as at any iteration (exit 130, last.pt of the last iteration), without the final
    validation's line, and --resume auto validates once and finishes."""
    out = tmp_path / "finished"
    killed_run = Path(__file__).parents[1] / "engine" / "_killed_run.py"
    done = subprocess.run(
        [sys.executable, str(killed_run), "4:SIGINT", "-m", "deformconv", "train", *TINY_CLS,
         "--iterations", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False, start_new_session=True)
    assert done.returncode == 130, done.stderr
    assert done.stderr.endswith(
        "deformconv train: stopped by SIGINT in the final validation after iteration 4/4; "
        f"saved {out / 'last.pt'}: continue with --resume auto\n")
    assert not (out / "final_metrics.json").exists()
    code, _, err = run_cli(capsys, "train", "--resume", "auto", "--out", out, "--no-progress")
    assert code == 0, err
    assert json.loads((out / "final_metrics.json").read_text())["iteration"] == 4
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["split"] == "val"] == [4]


def test_resume_refuses_model_flags_that_describe_another_model(
        capsys: pytest.CaptureFixture, trained: Path, tmp_path: Path) -> None:
    """Flags that shape the model would be ignored on a resume: those that differ from the
    checkpoint's model are refused; the first run's command line rerun with --resume auto
    (a preemptible job's pattern) passes."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    for flags in (["--plain"], ["--base-channels", "8"], ["--model-arg", "frozen_stages=1"]):
        code, _, err = run_cli(capsys, "train", "--resume", "auto", "--out", out, *flags)
        assert code == 2 and f"{flags[0]} describe another model than the checkpoint's " \
                             "(deformable resnet50" in err, err
    code, _, err = run_cli(capsys, "train", *TINY_CLS, "--iterations", "5", "--resume", "auto",
                           "--out", out)
    assert code == 0, err
    assert load_checkpoint(out / "last.pt")["iteration"] == 5


def test_resume_refuses_another_task_or_training_data_and_takes_epochs(
        capsys: pytest.CaptureFixture, trained: Path, tmp_path: Path) -> None:
    """--task and the flags that make the training samples were ignored or taken silently on
    a resume (another data order, no error); --epochs lost to the checkpoint's iterations."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    for flags, message in (
            (["--task", "segmentation"], "--task segmentation differs from the checkpoint's "
                                         "classification model; drop --task"),
            (["--train-size", "16", "--data-seed", "3"],
             "cannot resume with other training data (train_size: checkpoint 8 vs now 16; "
             "data_seed: checkpoint 0 vs now 3)"),
            (["--scene", "clutter=0.1"], "scene: checkpoint {} vs now {'clutter': 0.1}")):
        code, _, err = run_cli(capsys, "train", "--resume", "auto", "--out", out, *flags)
        assert code == 2 and message in err, err
    code, _, err = run_cli(capsys, "train", "--resume", "auto", "--out", out, "--val-size", "2",
                           "--epochs", "3", "--no-progress")
    assert code == 0, err
    assert load_checkpoint(out / "last.pt")["iteration"] == 12  # 3 epochs of 8 / 2 batches


def test_epochs_on_the_command_line_override_a_config_file_s_iterations(
        capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("iterations: 50\n")
    code, _, err = run_cli(capsys, "train", "--config", config, *TINY_CLS, "--epochs", "1",
                           "--out", tmp_path / "run")
    assert code == 0, err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 4  # 8 / 2 batches


def test_checkpoint_commands_refuse_other_models_and_classes(capsys: pytest.CaptureFixture,
                                                             trained: Path,
                                                             tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "viz", trained / "last.pt", "--plain", "--out", tmp_path)
    assert code == 2 and "--plain describe another model" in err
    code, _, err = run_cli(capsys, "eval", trained / "last.pt", "--data", "synthetic",
                           "--scene", 'classes=["star", "cross"]')
    assert code == 2
    assert "the data has 2 classes, but the checkpoint's model was trained for 10\n" in err


def test_new_run_into_a_finished_run_is_refused(capsys: pytest.CaptureFixture, trained: Path,
                                                tmp_path: Path) -> None:
    """Without --resume the old run's last.pt and metrics would be replaced: refused, the
    folder untouched; --overwrite starts afresh, without the old run's files."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    eval_result = dict.fromkeys(EVAL_KEYS, 0)  # the keys `deformconv eval` writes
    (out / "eval_last.json").write_text(json.dumps(eval_result))
    (out / "eval_notes.json").write_text('{"mine": 1}')  # the user's, not eval's
    metrics = (out / "metrics.jsonl").read_text()
    argv = ["train", *TINY_CLS, "--iterations", "1", "--out", out]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "Traceback" not in err
    assert f"--out {out} already holds a training run (last.pt, best.pt, metrics.jsonl" in err
    assert "--resume auto" in err and "--overwrite" in err
    assert load_checkpoint(out / "last.pt")["iteration"] == 4
    assert (out / "metrics.jsonl").read_text() == metrics
    code, _, err = run_cli(capsys, *argv, "--overwrite", "--eval-every", "0")
    assert code == 0, err
    assert load_checkpoint(out / "last.pt")["iteration"] == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 1]  # train and val of the new run only
    assert not (out / "eval_last.json").exists()  # the old run's, kept before
    assert (out / "eval_notes.json").read_text() == '{"mine": 1}'  # it was removed too


def test_a_run_without_last_pt_is_continued_from_its_best_pt(
        capsys: pytest.CaptureFixture, trained: Path, tmp_path: Path) -> None:
    """Killed after a validation but before its first last.pt, --resume auto was refused
    with advice to use --overwrite, which deletes the best.pt it can continue from."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    (out / "last.pt").unlink()
    code, _, err = run_cli(capsys, "train", *TINY_CLS, "--iterations", "5", "--out", out,
                           "--resume", "auto")
    assert code == 2
    assert (f"it has no last.pt, continue it from its best.pt (iteration 4) with --resume "
            f"{out / 'best.pt'}, start afresh there with --overwrite (deleting best.pt)") in err
    code, _, err = run_cli(capsys, "train", *TINY_CLS, "--iterations", "5", "--resume",
                           out / "best.pt")
    assert code == 0, err
    assert load_checkpoint(out / "last.pt")["iteration"] == 5


def test_overwrite_of_a_live_run_is_refused_before_anything_is_removed(
        capsys: pytest.CaptureFixture, trained: Path, tmp_path: Path) -> None:
    """--overwrite used to delete a live run's files before the run lock refused it."""
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    files = sorted(p.name for p in out.iterdir())
    with open(out / ".lock", "w") as holder:  # another process's run holds the folder
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4242\n")
        holder.flush()
        code, _, err = run_cli(capsys, "train", *TINY_CLS, "--iterations", "1", "--out", out,
                               "--overwrite")
    assert code == 2 and "another process (pid 4242) is training into" in err
    assert sorted(p.name for p in out.iterdir()) == files


@pytest.mark.parametrize("refused", [["--model-arg", "foo=1"], ["--batch-size", "100"]])
def test_overwrite_keeps_the_earlier_run_when_the_new_one_is_refused(
        capsys: pytest.CaptureFixture, trained: Path, tmp_path: Path, refused: list[str]) -> None:
    """--overwrite removed the earlier run before the new one's model (an unknown
    --model-arg) or the engine (a batch larger than the training set) refused it: both
    runs were lost, the folder left holding only .lock."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_cli(capsys, "train", *TINY_CLS, "--iterations", "1", "--out", out,
                           "--overwrite", *refused)
    assert code == 2 and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


@pytest.mark.parametrize("resume", ["auto", "last.pt"])
def test_resume_in_its_own_folder_with_overwrite_is_refused(
        capsys: pytest.CaptureFixture, trained: Path, resume: str) -> None:
    """--resume auto --overwrite resumed, --overwrite silently ignored."""
    checkpoint = "auto" if resume == "auto" else trained / resume
    code, _, err = run_cli(capsys, "train", *TINY_CLS, "--iterations", "5", "--out", trained,
                           "--resume", checkpoint, "--overwrite")
    assert code == 2
    assert err == (f"deformconv train: error: --resume {checkpoint} continues the run in its "
                   "folder, --overwrite would start afresh there; drop one of them\n")
    assert load_checkpoint(trained / "last.pt")["iteration"] == 4


def test_a_refused_new_run_leaves_no_folder(capsys: pytest.CaptureFixture,
                                            tmp_path: Path) -> None:
    """A run the engine refuses (here: a batch larger than the training set) left a new
    --out folder holding only .lock."""
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", *TINY_CLS, "--iterations", "1", "--out", out,
                           "--batch-size", "100")
    assert code == 2 and "fewer than one batch of batch_size=100" in err
    assert not out.exists()


@pytest.mark.parametrize("resume", [["--resume", "auto"], []])
def test_a_run_that_left_no_checkpoint_is_replaced(capsys: pytest.CaptureFixture,
                                                   trained: Path, tmp_path: Path,
                                                   resume: list[str]) -> None:
    """A run that died before its first checkpoint (a bad setting, say) leaves config.json
    and metrics.jsonl: a new run starts afresh there, with or without --resume auto (without
    it, it was refused with advice to use --resume auto)."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(trained / name, out / name)
    argv = ["train", *TINY_CLS, "--iterations", "2", "--out", out, *resume]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert (f"{out} holds metrics.jsonl, config.json of a run that stopped before its first "
            "checkpoint (nothing to resume): starting afresh there") in stdout
    assert load_checkpoint(out / "last.pt")["iteration"] == 2
    (out / "last.pt").unlink()  # best.pt is left: something to lose, so refused
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "it has no last.pt, continue it from its best.pt (iteration 2)" in err
    # a finished run whose checkpoints were deleted keeps its results: refused as well
    (out / "best.pt").unlink()
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "(metrics.jsonl, final_metrics.json, config.json)" in err
    assert "it has no last.pt to resume, start afresh there with --overwrite" in err
    assert (out / "final_metrics.json").is_file()


def test_resume_from_a_checkpoint_continues_in_its_own_folder(
        capsys: pytest.CaptureFixture, trained: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--resume CKPT`` without --out writes beside CKPT, wherever the command runs (it
    used to write into the run's --out as first typed, relative to the current folder)."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "train", *TINY_CLS, "--iterations", "2", "--out", "run")
    assert code == 0, err
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, stdout, err = run_cli(capsys, "train", "--resume", tmp_path / "run" / "last.pt",
                                "--iterations", "3", "--no-progress")
    assert code == 0, err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 3
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert f"checkpoint: {tmp_path / 'run' / 'last.pt'}" in stdout


def test_out_that_is_a_file_is_refused(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.write_text("not a folder")
    code, _, err = run_cli(capsys, "train", *TINY_CLS, "--iterations", "1", "--out", out)
    assert code == 2 and "Traceback" not in err
    assert err == f"deformconv train: error: --out {out} is a file; expected a folder " \
                  "(created when missing)\n"


def test_resume_with_a_different_model_is_refused(capsys: pytest.CaptureFixture,
                                                  trained: Path, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "train", "--resume", trained / "last.pt", "--model",
                           "deeplab_resnet50", "--out", tmp_path)
    assert code == 2 and "differs from the checkpoint's resnet50" in err


def test_viz_from_checkpoint(capsys: pytest.CaptureFixture, trained: Path,
                             tmp_path: Path) -> None:
    # images 2 and 3: the count stops at the last of the 4 validation images
    code, stdout, _ = run_cli(capsys, "viz", trained / "last.pt", "--index", "2", "--count",
                              "5", "--out", tmp_path)
    assert code == 0
    assert "Images [2, 3] of the validation data" in (tmp_path / "offsets.md").read_text()
    pngs = sorted(tmp_path.glob("*.png"))
    # named by data set index (they were sampling_0/1, titled images 2 and 3)
    assert [p.name for p in pngs] == ["sampling_2.png", "sampling_3.png"]
    for png in pngs:
        assert_valid_png(png)
        assert str(png) in stdout
    tables = (tmp_path / "offsets.md").read_text()
    assert "layer4.2.conv2" in tables and "Effective dilation" in tables
    # a rerun replaces the figures: the earlier ones used to stay beside those offsets.md lists;
    # one it writes again stays, and so does a file viz does not name its figures like
    (tmp_path / "sampling_notes.png").write_bytes(b"the user's")
    code, stdout, _ = run_cli(capsys, "viz", trained / "last.pt", "--index", "3", "--count",
                              "1", "--out", tmp_path)
    assert code == 0
    assert f"removed 1 figure(s) of an earlier viz run from {tmp_path}: sampling_2.png" in stdout
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["sampling_3.png",
                                                              "sampling_notes.png"]


def test_viz_replaces_only_what_a_viz_run_wrote(capsys: pytest.CaptureFixture, trained: Path,
                                                tmp_path: Path) -> None:
    """viz deleted any file named like its figures ("removed 2 figure(s) of an earlier viz
    run from myfigs: roi_offsets_2.png, sampling_7.png") and overwrote any offsets.md, in
    folders no viz run wrote."""
    mine = tmp_path / "myfigs"
    mine.mkdir()
    for name in ("sampling_7.png", "roi_offsets_2.png", "offsets.md"):
        (mine / name).write_bytes(b"the user's")
    viz = ["viz", trained / "last.pt", "--count", "1", "--out", mine]
    code, stdout, err = run_cli(capsys, *viz)
    assert code == 2 and f"--out {mine} holds offsets.md, roi_offsets_2.png, sampling_7.png" in err
    assert "that are not in its .deformconv-viz list: written by an older viz or not by viz" \
        in err and "--overwrite" in err
    assert sorted(path.name for path in mine.iterdir()) == [
        "offsets.md", "roi_offsets_2.png", "sampling_7.png"]
    assert all(path.read_bytes() == b"the user's" for path in mine.iterdir())
    (mine / "roi_offsets_2.png").unlink()
    (mine / "offsets.md").unlink()
    code, _, err = run_cli(capsys, *viz)  # one foreign figure is enough to refuse
    assert code == 2 and f"--out {mine} holds sampling_7.png, named as viz names" in err
    code, stdout, err = run_cli(capsys, *viz, "--overwrite")
    assert code == 0, err
    assert sorted(path.name for path in mine.iterdir()) == [
        ".deformconv-viz", "offsets.md", "sampling_0.png"]
    # the folder is now a viz run's: a rerun replaces its files without --overwrite
    code, _, err = run_cli(capsys, "viz", trained / "last.pt", "--index", "1", "--count", "1",
                           "--out", mine)
    assert code == 0, err
    assert sorted(path.name for path in mine.glob("*.png")) == ["sampling_1.png"]
    assert (mine / ".deformconv-viz").read_text() == "sampling_1.png\noffsets.md\n"


def test_viz_refuses_another_task_and_a_file_as_out(capsys: pytest.CaptureFixture,
                                                    trained: Path) -> None:
    """--task used to be ignored; a file as --out gave a bare "[Errno 17] File exists"."""
    code, _, err = run_cli(capsys, "viz", trained / "last.pt", "--task", "detection")
    assert code == 2
    assert "--task detection differs from the checkpoint's classification model" in err
    code, _, err = run_cli(capsys, "viz", trained / "last.pt", "--out", trained / "last.pt")
    assert code == 2 and f"--out {trained / 'last.pt'} is a file" in err


def test_a_checkpoint_argument_that_is_no_checkpoint_says_what_it_is(
        capsys: pytest.CaptureFixture, trained: Path, tmp_path: Path) -> None:
    """A run's metrics JSON or an ONNX model read "could not read checkpoint ...:
    UnpicklingError ... delete it or pick another one"; a run's folder "checkpoint not
    found"; an --out under a file a bare "[Errno 20] Not a directory"."""
    (tmp_path / "metrics.json").write_text('{"miou": 0.5}')
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")
    for command in ("viz", "eval", "export"):
        extra = ["--out", tmp_path / "m.onnx"] if command == "export" else []
        for name, kind in (("metrics.json", "a JSON file"), ("model.onnx", "an ONNX model")):
            code, _, err = run_cli(capsys, command, tmp_path / name, *extra)
            assert code == 2 and f"{tmp_path / name} is {kind}, not a checkpoint" in err
            assert "last.pt or best.pt" in err and "delete" not in err
        code, _, err = run_cli(capsys, command, trained, *extra)
        assert code == 2
        assert f"checkpoint {trained} is a folder; give a file in it: {trained / 'last.pt'}" in err
    (tmp_path / "afile").write_text("the user's")
    under = tmp_path / "afile" / "sub"
    code, _, err = run_cli(capsys, "viz", trained / "last.pt", "--out", under)
    assert code == 2 and f"--out {under}: {tmp_path / 'afile'} is a file, not a folder" in err
    assert (tmp_path / "afile").read_text() == "the user's"


def test_viz_index_out_of_range(capsys: pytest.CaptureFixture, trained: Path,
                                tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "viz", trained / "last.pt", "--index", "4", "--count", "2",
                           "--out", tmp_path)
    assert code == 2 and "--index 4 is past the last of the 4 validation images" in err


def test_viz_of_a_plain_model_has_nothing_to_draw(capsys: pytest.CaptureFixture,
                                                  tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "viz", "--model", "resnet50", "--plain", "--base-channels",
                           "4", "--image-size", "32", "--val-size", "2", "--out", tmp_path)
    assert code == 2 and "no deformable layers" in err


def test_viz_fresh_detector_draws_sampling_and_roi_offsets(capsys: pytest.CaptureFixture,
                                                          tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "viz", "--model", "faster_rcnn_resnet50",
                           "--base-channels", "4", "--image-size", "64", "--val-size", "1",
                           "--count", "1", "--out", tmp_path)
    assert code == 0, err
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "sampling_0.png" in names and "roi_offsets_0.png" in names
    for name in names:
        assert_valid_png(tmp_path / name)


def test_train_and_eval_on_voc_folder(capsys: pytest.CaptureFixture, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Trained on a VOC folder given relative to the working folder, evaluated from another
    one: the checkpoint holds the absolute path."""
    from deformconv.data import export_voc, synthetic_dataset

    scenes = synthetic_dataset("segmentation", 4, seed=3, image_size=40)
    root = tmp_path / "voc"
    export_voc(scenes, root, "train", indices=[0, 1])
    export_voc(scenes, root, "val", indices=[2, 3])
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(
        capsys, "train", "--data", "voc:voc", "--num-classes", "10", "--image-size", "32",
        "--base-channels", "4", "--iterations", "1", "--batch-size", "2", "--out", out,
        "--no-progress", "--optimizer", "adamw", "--schedule", "onecycle", "--class-weights",
        ",".join(["0.5"] + ["1"] * 10))
    assert code == 0, err
    assert "deeplab_resnet50 (deformable), 1 iterations: miou=" in stdout
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["optimizer"], config["schedule"]) == ("adamw", "onecycle")
    assert config["class_weights"] == [0.5] + [1.0] * 10
    monkeypatch.chdir(out)
    code, _, err = run_cli(capsys, "eval", out / "last.pt")
    assert code == 0, err
    assert json.loads((out / "eval_last.json").read_text())["metrics"]["num_pixels"] > 0


@pytest.mark.parametrize("how", ["--checkpoint", "positional, as eval takes it"])
def test_export_trained_checkpoint(capsys: pytest.CaptureFixture, trained: Path,
                                   tmp_path: Path, how: str) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from deformconv.engine import load_weights
    from deformconv.runs import build_model, specs_from_checkpoint

    out = tmp_path / "cls.onnx"
    checkpoint = ["--checkpoint"] * (how == "--checkpoint") + [trained / "last.pt"]
    code, stdout, err = run_cli(capsys, "export", *checkpoint, "--out", out)
    assert code == 0, err
    assert out.is_file() and out.stat().st_size > 10_000
    diff = float(stdout.split("max abs difference onnxruntime vs PyTorch: ")[1].split()[0])
    # The trained model is well conditioned (TINY_CLS clips the gradients): logits O(1) on
    # the example the export checks, so an absolute float32 tolerance holds on any CPU.
    model = build_model(specs_from_checkpoint(str(trained / "last.pt"))[0]).eval()
    load_weights(model, trained / "last.pt")
    example = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scale = float(model(example).abs().max())
    assert 1e-3 < scale < 100
    assert diff <= 1e-5


def test_train_eval_viz_on_coco_files(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """COCO data picks the detection task and default detector by itself. Paths may hold
    colons (they were split at the first: "annotation file not found: .../co"); eval names
    the samples it scored (it said "on 2 samples" with one unreadable, left out); viz says
    when --count runs past the data set's end (it drew fewer, silently)."""
    from deformconv.data import export_coco, synthetic_dataset

    folder = tmp_path / "co:co"
    export_coco(synthetic_dataset("detection", 2, seed=2, image_size=64), folder)
    data = f"coco:{folder / 'annotations.json'}:{folder}"
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", "--data", data, "--base-channels", "4",
                                "--image-size", "64", "--iterations", "1", "--batch-size", "2",
                                "--out", out, "--no-progress")
    assert code == 0, err
    assert "faster_rcnn_resnet50 (deformable), 1 iterations: AP=" in stdout
    recorded = load_checkpoint(out / "last.pt")["extra"]["data"]["categories"]
    categories = json.loads((folder / "annotations.json").read_text())["categories"]
    assert recorded == [{"id": c["id"], "name": c["name"]} for c in categories]
    code, _, err = run_cli(capsys, "eval", out / "last.pt", "--image-size", "64")
    assert code == 0, err
    result = json.loads((out / "eval_last.json").read_text())
    assert result["metrics"]["num_images"] == 2 and "AP50" in result["metrics"]
    assert result["data"]["image_size"] == 64
    # flags the COCO data would ignore, which the JSON recorded as if used, are refused
    for flags, named in ((["--image-size", "96"], "--image-size 96 differs from the "
                          "checkpoint's 64"),
                         (["--val-size", "1"], "--val-size is for synthetic data only"),
                         (["--data-seed", "3", "--val-size", "1"],
                          "--val-size, --data-seed are for synthetic data only")):
        code, _, err = run_cli(capsys, "eval", out / "last.pt", *flags, "--out",
                               tmp_path / "refused.json")
        assert code == 2 and named in err, err
        assert not (tmp_path / "refused.json").exists()
    code, stdout, err = run_cli(capsys, "viz", out / "last.pt", "--count", "3", "--out",
                                tmp_path / "viz")
    assert code == 0, err
    assert "drawing 2 of the 3 images asked for: the validation set ends at image 1" in stdout
    assert_valid_png(tmp_path / "viz" / "sampling_0.png")
    next((folder / "images").iterdir()).write_bytes(b"cut short")
    code, stdout, err = run_cli(capsys, "eval", out / "last.pt")
    assert code == 0, err
    assert "deformconv eval: warning: skipping sample 1:" in err
    assert "cannot decode image" in err
    assert "faster_rcnn_resnet50 on 1 of 2 samples (1 unreadable, left out): AP=" in stdout


def test_coco_folder_of_unreadable_images_is_a_one_line_error(capsys: pytest.CaptureFixture,
                                                              tmp_path: Path) -> None:
    from deformconv.data import export_coco, synthetic_dataset

    folder = tmp_path / "coco"
    export_coco(synthetic_dataset("detection", 2, seed=2, image_size=32), folder)
    for image in (folder / "images").iterdir():
        image.write_bytes(b"not an image")
    data = f"coco:{folder / 'annotations.json'}:{folder}"
    code, _, err = run_cli(capsys, "train", "--data", data, "--base-channels", "4",
                           "--image-size", "32", "--iterations", "1", "--batch-size", "2",
                           "--out", tmp_path / "run", "--no-progress")
    *warned, error = err.splitlines()
    assert code == 2 and "Traceback" not in err
    assert warned and all(line.startswith("deformconv train: warning: ") for line in warned)
    assert "cannot decode image" in warned[0]
    assert error.startswith("deformconv train: error: none of the 2 samples of CocoDetection(")
    assert "skipped={'corrupt_image': 2}" in error


def test_compact_fcn_trains_with_its_own_options(capsys: pytest.CaptureFixture,
                                                 tmp_path: Path) -> None:
    """The CPU-scale net has no ResNet backbone: no ResNet defaults are forced on it, its
    own options pass through --model-arg, and the ResNet flags are refused clearly."""
    tiny = ["--model", "compact_fcn", "--image-size", "32", "--train-size", "4", "--val-size",
            "2", "--batch-size", "2", "--iterations", "2", "--no-progress"]
    code, _, err = run_cli(capsys, "train", *tiny, "--model-arg", "widths=[4,4,4]",
                           "--model-arg", "strides=[2,1,1]", "--model-arg", "deform_layers=1",
                           "--model-arg", "channels_last=true", "--out", tmp_path / "run")
    assert code == 0, err
    spec = load_checkpoint(tmp_path / "run" / "last.pt")["extra"]["model"]
    assert spec["name"] == "compact_fcn"
    assert spec["kwargs"] == {"widths": [4, 4, 4], "strides": [2, 1, 1], "deform_layers": 1,
                              "channels_last": True}
    code, _, err = run_cli(capsys, "eval", tmp_path / "run" / "last.pt")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", *tiny, "--base-channels", "8", "--out",
                           tmp_path / "refused")
    assert code == 2 and "compact_fcn has no ResNet backbone" in err and "Traceback" not in err


def test_offset_lr_mult_model_uses_the_layers_own(capsys: pytest.CaptureFixture,
                                                  tmp_path: Path) -> None:
    """--offset-lr-mult's factor replaces every layer's own, so a model's own is refused
    with it (it used to be ignored silently); 'model' applies the layers' own."""
    own = ["--model-arg", "offset_lr_mult=0.5", "--iterations", "1"]
    code, _, err = run_cli(capsys, "train", *TINY_CLS, *own, "--out", tmp_path / "a")
    assert code == 2 and ("--model-arg offset_lr_mult has no effect while --offset-lr-mult "
                          "0.1 sets every offset branch's factor") in err, err
    assert not (tmp_path / "a").exists()  # refused before the folder is claimed
    code, _, err = run_cli(capsys, "train", *TINY_CLS, *own, "--offset-lr-mult", "model",
                           "--out", tmp_path / "b")
    assert code == 0, err
    state = load_checkpoint(tmp_path / "b" / "last.pt")
    assert state["config"]["offset_lr_mult"] is None
    assert [g["lr_mult"] for g in state["optimizer"]["param_groups"]] == [1.0, 0.5]
    code, _, err = run_cli(capsys, "train", "--offset-lr-mult", "fast")
    assert code == 2 and "expected a number >= 0 or 'model', got 'fast'" in err, err


def test_a_live_run_s_folder_is_refused_before_the_setup(
        capsys: pytest.CaptureFixture, trained: Path, tmp_path: Path) -> None:
    """--resume auto into a folder whose run is live was refused only after the model, the
    data and the checkpoint were loaded ("resumed from ..." printed first)."""
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    with open(out / ".lock", "w") as holder:  # another process's run holds the folder
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4242\n")
        holder.flush()
        code, stdout, err = run_cli(capsys, "train", *TINY_CLS, "--iterations", "6",
                                    "--out", out, "--resume", "auto")
    assert code == 2 and "another process (pid 4242) is training into" in err
    assert stdout == ""
    assert load_checkpoint(out / "last.pt")["iteration"] == 4


@pytest.mark.parametrize(("scene", "message"), [
    ("clutter=1e999", "clutter must be a finite number, got inf"),
    ("max_aspect=NaN", "max_aspect must be a finite number, got nan"),
    ("min_objects=1.5", "min_objects must be an int, got 1.5"),
])
def test_non_finite_or_fractional_scene_options_are_one_line_errors(
        capsys: pytest.CaptureFixture, tmp_path: Path, scene: str, message: str) -> None:
    """clutter=inf trained on NaN images (ending in 'loss is nan ... lower lr'), NaN and
    fractional counts failed with a traceback when a scene was drawn."""
    code, _, err = run_cli(capsys, "train", "--model", "compact_fcn", "--image-size", "32",
                           "--train-size", "8", "--val-size", "4", "--scene", scene,
                           "--iterations", "2", "--threads", "1", "--out", tmp_path)
    assert code == 2 and "Traceback" not in err
    assert err.startswith("deformconv train: error: ") and message in err


def test_schedule_step_decays_at_the_milestones(capsys: pytest.CaptureFixture,
                                                tmp_path: Path) -> None:
    """--milestones and --gamma did not exist: --schedule step was a constant lr."""
    code, _, err = run_cli(capsys, "train", "--model", "compact_fcn", "--image-size", "32",
                           "--train-size", "4", "--val-size", "2", "--batch-size", "2",
                           "--iterations", "3", "--no-progress", "--schedule", "step",
                           "--milestones", "2", "--gamma", "0.5", "--lr", "0.02",
                           "--out", tmp_path / "run")
    assert code == 0, err
    config = load_checkpoint(tmp_path / "run" / "last.pt")["config"]
    assert (config["milestones"], config["gamma"]) == ([2], 0.5)
    records = [json.loads(line)
               for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records if r["split"] == "train"] == [0.01]  # iteration 3's step


def test_a_diverged_run_is_a_one_line_error(capsys: pytest.CaptureFixture,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN loss ended the command with a FloatingPointError traceback. Under torchrun,
    where every rank stops at the same non-finite loss, each printed the same line: rank 0
    says it (rank 1 simulated)."""
    diverging = ["train", "--model", "compact_fcn", "--image-size", "32", "--train-size", "16",
                 "--val-size", "4", "--batch-size", "4", "--iterations", "20", "--lr", "1e6",
                 "--no-progress", "--out"]
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *diverging, out)
    assert code == 2 and "Traceback" not in err
    assert re.fullmatch(r"deformconv train: error: loss is (nan|inf|-inf) at iteration \d+ "
                        r"\(epoch \d+\); lower lr or set grad_clip_norm\n", err), err
    assert (out / "config.json").is_file() and not (out / "last.pt").exists()
    def stopped_on_every_rank(*args: object, **kwargs: object) -> None:
        with distributed.alike_on_every_rank():
            raise FloatingPointError("loss is nan on rank 1 (of 2 ranks) at iteration 3")

    monkeypatch.setattr(engine, "train", stopped_on_every_rank)
    assert run_cli(capsys, *diverging, tmp_path / "rank0")[::2] == (
        2, "deformconv train: error: loss is nan on rank 1 (of 2 ranks) at iteration 3\n")
    _as_rank_1_of_2(monkeypatch)
    assert run_cli(capsys, *diverging, tmp_path / "rank1")[::2] == (2, "")


def test_resuming_an_earlier_checkpoint_in_its_folder_needs_out_or_overwrite(
        capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """--resume of a checkpoint behind the folder's last.pt replaced last.pt, cut the log and
    rewrote final_metrics.json (eval_last.json then described a lost checkpoint), unasked."""
    tiny = ["--model", "compact_fcn", "--image-size", "32", "--train-size", "4", "--val-size",
            "2", "--batch-size", "2", "--no-progress"]
    out = tmp_path / "run"
    assert _main("train", *tiny, "--iterations", "2", "--out", out) == 0
    shutil.copy(out / "last.pt", out / "early.pt")
    assert _main("train", *tiny, "--iterations", "4", "--out", out, "--resume", "auto") == 0
    (out / "eval_last.json").write_text(json.dumps(dict.fromkeys(EVAL_KEYS, 0)))
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_cli(capsys, "train", "--resume", out / "early.pt", "--no-progress")
    assert code == 2 and "Traceback" not in err
    assert (f"--resume {out / 'early.pt'} is at iteration 2, but {out} holds its run up to "
            "iteration 4 (last.pt): resuming there would replace that later part; branch off "
            "into another folder with --out NEW_FOLDER, or replace the later part with "
            "--overwrite") in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    # branching off leaves the run alone
    code, _, err = run_cli(capsys, "train", "--resume", out / "early.pt", "--no-progress",
                           "--out", tmp_path / "branch", "--iterations", "3")
    assert code == 0, err
    assert load_checkpoint(tmp_path / "branch" / "last.pt")["iteration"] == 3
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    # --overwrite replaces the later part: last.pt, the results and evaluations of it
    code, _, err = run_cli(capsys, "train", "--resume", out / "early.pt", "--no-progress",
                           "--overwrite", "--lr", "0.5", "--iterations", "4")
    assert code == 0, err
    last = load_checkpoint(out / "last.pt")
    assert (last["iteration"], last["config"]["lr"]) == (4, 0.5)
    assert not (out / "eval_last.json").exists() and (out / "early.pt").is_file()
    # the run's latest state continues as before, and --overwrite with it is refused
    code, _, err = run_cli(capsys, "train", "--resume", out / "early.pt", "--no-progress",
                           "--iterations", "5")
    assert code == 2 and "is at iteration 2, but" in err
    code, _, err = run_cli(capsys, "train", "--resume", out / "last.pt", "--no-progress",
                           "--iterations", "5")
    assert code == 0, err


def test_final_metrics_are_written_holding_the_run_s_lock(
        capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """final_metrics.json was written after the run released its folder's lock: another
    process could take the folder in between."""
    fcntl = pytest.importorskip("fcntl")
    from deformconv.cli import train as train_command

    out = tmp_path / "run"
    held = []
    write_json = train_command.write_json

    def record_lock(data: object, path: Path) -> Path:
        with open(out / ".lock") as other:  # another open file: as another process's
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(Path(path).name)
        return write_json(data, path)

    monkeypatch.setattr(train_command, "write_json", record_lock)
    code, _, err = run_cli(capsys, "train", "--model", "compact_fcn", "--image-size", "32",
                           "--train-size", "4", "--val-size", "2", "--batch-size", "2",
                           "--iterations", "1", "--no-progress", "--out", out)
    assert code == 0, err
    assert held == ["final_metrics.json"]
    assert json.loads((out / "final_metrics.json").read_text())["iteration"] == 1


@pytest.mark.parametrize("refused", ["other seed", "missing", "corrupt"])
def test_a_refused_resume_leaves_the_run_s_files_as_they_were(
        capsys: pytest.CaptureFixture, trained: Path, tmp_path: Path, refused: str) -> None:
    """Regression guard of a user report (config.json rewritten by a refused resume; fixed
    in the engine before): the folder's files stay byte for byte."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    resume, flags = ["--resume", "auto"], ["--seed", "5"] if refused == "other seed" else []
    if refused == "missing":
        resume = ["--resume", out / "nothere.pt"]
    elif refused == "corrupt":
        (out / "last.pt").write_bytes((out / "last.pt").read_bytes()[:1000])
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_cli(capsys, "train", *TINY_CLS, "--iterations", "6", "--out", out,
                           *resume, *flags)
    assert code == 2 and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


@pytest.mark.parametrize("command", ["train", "eval"])
def test_under_torchrun_a_bad_setting_is_reported_by_rank_0_only(
        capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        command: str) -> None:
    """Every rank checks the same arguments and files and refuses them alike: each printed
    the same line ('--out afile is a file' twice under torchrun --nproc_per_node 2)."""
    afile = tmp_path / "afile"
    afile.write_text("")
    args = (["train", *TINY_CLS, "--iterations", "2", "--out", afile] if command == "train"
            else ["eval", tmp_path / "missing.pt"])
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and err.startswith(f"deformconv {command}: error: ")
    _as_rank_1_of_2(monkeypatch)
    assert run_cli(capsys, *args)[::2] == (2, "")
    # on two nodes (their files may differ), or with RANK alone, each rank says it
    for env in ({"LOCAL_WORLD_SIZE": "1"}, {"WORLD_SIZE": None, "LOCAL_WORLD_SIZE": None}):
        with monkeypatch.context() as patched:
            for name, value in env.items():
                (patched.setenv(name, value) if value else patched.delenv(name))
            assert run_cli(capsys, *args)[::2] == (2, err)


def _as_rank_1_of_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as rank 1 of a torchrun job of 2 processes on one node (the process
    group is not joined: the tests stop before, or replace engine.train)."""
    monkeypatch.setattr(distributed, "launched_rank", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")


def test_under_torchrun_an_error_of_one_rank_is_reported_by_that_rank(
        capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user error that one rank meets alone (its device, its share of the data) is
    printed by that rank: rank 0 may not have it."""
    def fails_on_this_rank(*args: object, **kwargs: object) -> None:
        raise ValueError("device cuda:1 (LOCAL_RANK=1) does not exist")

    monkeypatch.setattr(engine, "train", fails_on_this_rank)
    _as_rank_1_of_2(monkeypatch)
    code, _, err = run_cli(capsys, "train", *TINY_CLS, "--iterations", "2",
                           "--out", tmp_path / "run")
    assert (code, err) == (2, "deformconv train: error: device cuda:1 (LOCAL_RANK=1) does "
                              "not exist\n")
