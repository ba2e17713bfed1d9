"""experiments/runner.py: cached runs, refused stale results, twin initialisation, stats."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from exp_scripts import EXPERIMENTS, load

from deformconv.engine import TrainingStopped

runner = load("runner")


def _study(tmp_path, settings, smoke=True, shard=None, jobs=1):
    args = argparse.Namespace(out=tmp_path, smoke=smoke, keep_checkpoints=False, threads=1,
                              shard=shard, jobs=jobs)
    return runner.Study("unit", args, settings)


def test_run_is_computed_once_then_read_back(tmp_path):
    calls = []

    def fn(run_dir):
        calls.append(run_dir)
        return {"value": 1.5}

    first = _study(tmp_path, {"a": (1, 2)}).run("r0", {"seed": 0}, fn)
    study = _study(tmp_path, {"a": (1, 2)})
    second = study.run("r0", {"seed": 0}, fn)
    assert len(calls) == 1 and calls[0] == tmp_path / "unit" / "r0"
    assert first["value"] == second["value"] == 1.5 and second["seconds"] >= 0
    assert study.skipped == ["r0"] and study.done == []
    saved = json.loads((tmp_path / "unit" / "r0.json").read_text())
    assert saved["identity"]["mode"] == "smoke" and saved["identity"]["settings"] == {"a": [1, 2]}


def test_a_result_without_what_the_script_reads_is_named(tmp_path, capsys):
    """A saved result that lacks a field its script reads (scale's miou_by_scale) ended the
    study in a KeyError traceback; now an error line names the file and the field."""
    _study(tmp_path, {}).run("r0", {}, lambda d: {"metrics": {"miou": 0.5}, "by": {"8": 1}})
    needs = ("metrics.miou", "by.8")
    assert _study(tmp_path, {}).run("r0", {}, pytest.fail, needs=needs)["by"] == {"8": 1}
    path = tmp_path / "unit" / "r0.json"
    for change, field in (("del saved['result']['by']['8']", "by.8"),
                          ("saved['result']['metrics'] = 0.5", "metrics.miou")):
        saved = json.loads(path.read_text())
        exec(change, {"saved": saved})
        path.write_text(json.dumps(saved))
        with pytest.raises(SystemExit) as err:
            _study(tmp_path, {}).run("r0", {}, pytest.fail, needs=needs)
        assert err.value.code == 2
        assert capsys.readouterr().err == f"error: {path} is not a valid result file (no " \
            f"result.{field} in it); delete it to run it again\n"
    assert runner.result_fields(["AP"])[-1] == "metrics.AP"


def test_a_result_of_another_configuration_is_refused(tmp_path):
    _study(tmp_path, {"a": 1}).run("r0", {"seed": 0}, lambda d: {"value": 1})
    study = _study(tmp_path, {"a": 1})
    with pytest.raises(SystemExit) as err:
        study.run("r0", {"seed": 1}, lambda d: pytest.fail("must not recompute"))
    assert err.value.code == 2


@pytest.mark.parametrize(("change", "named"), [
    ("settings", "(settings.a: 2 here, 1 in the file)"),
    ("mode", "(mode: full here, smoke in the file)"),
])
def test_a_folder_of_results_made_otherwise_is_refused_before_any_work(tmp_path, capsys,
                                                                        change, named):
    """Refused when the study is set up (before its pretraining and scenes), not when the
    first run is reached, naming the first setting that differs."""
    _study(tmp_path, {"a": 1}).run("r0", {"seed": 0}, lambda d: {"value": 1})
    settings = {"a": 2} if change == "settings" else {"a": 1}
    with pytest.raises(SystemExit) as err:
        _study(tmp_path, settings, smoke=change != "mode")
    assert err.value.code == 2
    assert f"r0.json was made with other settings or another mode {named}; use another " \
           "--out or delete it" in capsys.readouterr().err


def test_a_plan_may_time_other_settings_but_not_the_other_mode(tmp_path, capsys):
    """A ``--plan`` writes no result: other settings (another length, say) are timed, but a
    plan of the other mode is refused as a run is (it would stand as the study's plan)."""
    _study(tmp_path, {"a": 1}).run("r0", {"seed": 0}, lambda d: {"value": 1})

    def plan(smoke):
        args = argparse.Namespace(out=tmp_path, smoke=smoke, keep_checkpoints=False,
                                  threads=1, plan=True)
        return runner.Study("unit", args, {"a": 3})

    plan(smoke=True)
    with pytest.raises(SystemExit) as err:
        plan(smoke=False)
    assert err.value.code == 2 and "(mode: full here, smoke in the file)" in \
        capsys.readouterr().err


def test_a_run_of_another_configuration_names_what_differs(tmp_path, capsys):
    _study(tmp_path, {"a": 1}).run("r0", {"seed": 0, "model": {"width": 4}}, lambda d: {})
    with pytest.raises(SystemExit):
        _study(tmp_path, {"a": 1}).run("r0", {"seed": 0, "model": {"width": 8}},
                                       lambda d: pytest.fail("must not recompute"))
    assert "(config.model.width: 8 here, 4 in the file)" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", '{"identity": {"mode": "sm', "[1, 2]"])
def test_a_cut_short_result_file_is_named_not_a_traceback(tmp_path, capsys, text):
    """An empty or truncated run result (a full disk, a copy cut short) stops the script
    with its error line, wherever the file is read: setting up, reaching the run, or
    summing the study's minutes."""
    bad = tmp_path / "unit" / "r0.json"
    bad.parent.mkdir()
    bad.write_text(text)
    checks = [lambda: _study(tmp_path, {}),
              lambda: runner.run_minutes(bad.parent)]
    args = argparse.Namespace(out=tmp_path, smoke=True, keep_checkpoints=False, threads=1,
                              plan=True)
    (tmp_path / "plan").mkdir()
    study = runner.Study("plan", args, {})  # nothing there yet: reached at the run
    study.folder = bad.parent
    checks.append(lambda: study.run("r0", {}, lambda d: pytest.fail("must not run")))
    for check in checks:
        with pytest.raises(SystemExit) as err:
            check()
        assert err.value.code == 2
        assert f"error: {bad} is not a valid result file (" in capsys.readouterr().err
        assert bad.read_text() == text


def test_shards_split_the_runs_then_a_plain_call_reads_all(tmp_path):
    ran = []

    def sweep(shard):
        study = _study(tmp_path, {}, shard=shard)
        out = [study.run(f"r{i}", {"i": i}, lambda d, i=i: ran.append(i) or {"i": i})
               for i in range(5)]
        return study, out

    study, out = sweep((0, 2))
    assert ran == [0, 2, 4] and not study.complete and study.left == ["r1", "r3"]
    assert [r["i"] if r else None for r in out] == [0, None, 2, None, 4]
    study, _ = sweep((1, 2))
    assert ran == [0, 2, 4, 1, 3] and study.complete
    study, out = sweep(None)
    assert ran == [0, 2, 4, 1, 3] and study.complete and len(study.skipped) == 5
    assert [r["i"] for r in out] == list(range(5))


def test_jobs_run_the_script_as_shards_of_one_thread(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("import sys, pathlib\n"
                      "k = sys.argv[sys.argv.index('--shard') + 1].replace('/', 'of')\n"
                      "pathlib.Path(sys.argv[1], k).write_text(' '.join(sys.argv[2:]))\n")
    _study(tmp_path, {}, jobs=3).in_shards(str(script), [str(tmp_path), "--task", "x"])
    for k in range(3):
        assert (tmp_path / f"{k}of3").read_text() == \
            f"--task x --jobs 1 --shard {k}/3 --threads 1"
    _study(tmp_path, {}, jobs=1).in_shards(str(script), [str(tmp_path / "absent")])
    _study(tmp_path, {}, jobs=2, shard=(0, 2)).in_shards(str(script), [str(tmp_path / "no")])
    failing = tmp_path / "fail.py"
    failing.write_text("raise SystemExit(3)\n")
    with pytest.raises(SystemExit) as err:
        _study(tmp_path, {}, jobs=2).in_shards(str(failing), [])
    assert err.value.code == 2


@pytest.mark.parametrize(("script", "codes"), [
    ("raise SystemExit(143)\n", "143, 143"),
    # a signal outside a training run (rendering, evaluating) kills a shard
    ("import os, signal\nsignal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})\n"
     "os.kill(os.getpid(), signal.SIGTERM)\n", "-15, -15"),
])
def test_shards_stopped_by_a_signal_stop_the_study_as_an_interrupt(tmp_path, script, codes):
    """Shards that stopped at a signal (exit 130/143, or killed by it) are no failure: the
    parent stops as they did, and the same command continues."""
    stopped = tmp_path / "stopped.py"
    stopped.write_text(script)
    with pytest.raises(KeyboardInterrupt, match=rf"shards stopped \(exit codes \[{codes}\]\)"):
        _study(tmp_path, {}, jobs=2).in_shards(str(stopped), [])


_WAITING_SHARD = """\
import pathlib, signal, sys, time
k = sys.argv[sys.argv.index('--shard') + 1].split('/')[0]
folder = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    (folder / f'stopped{k}').write_text(signal.Signals(signum).name)
    raise SystemExit(128 + signum)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # as run_script
(folder / f'ready{k}').touch()
time.sleep(30)
"""

_STUDY_PARENT = """\
import argparse, sys
sys.path.insert(0, sys.argv[1])
import runner
args = argparse.Namespace(out=sys.argv[2], smoke=True, keep_checkpoints=False, threads=1,
                          shard=None, jobs=2)
runner.run_script(lambda: runner.Study('unit', args, {}).in_shards(sys.argv[3], [sys.argv[2]])
                  or 0)
"""


def _study_with_ready_shards(tmp_path: Path, shard_script: str, parent_script: str
                             ) -> subprocess.Popen:
    """A study parent (``parent_script``) started on two shards of ``shard_script``, once
    both shards said they are ready."""
    shard, parent = tmp_path / "shard.py", tmp_path / "parent.py"
    shard.write_text(shard_script)
    parent.write_text(parent_script)
    process = subprocess.Popen([sys.executable, str(parent), str(EXPERIMENTS), str(tmp_path),
                                str(shard)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{k}").exists() for k in range(2)):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_parent_alone_stops_its_shards(tmp_path, signum):
    """A signal to the parent (``kill PARENT``, or a terminal's Ctrl-C: the shards have
    sessions of their own) reaches each shard once: their runs stop with a checkpoint and
    the parent exits as stopped, leaving no shard behind."""
    process = _study_with_ready_shards(tmp_path, _WAITING_SHARD, _STUDY_PARENT)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum
    assert [(tmp_path / f"stopped{k}").read_text() for k in range(2)] == [signum.name] * 2
    code = 128 + signum
    assert err.strip().endswith(f"shards stopped (exit codes [{code}, {code}]); run the same "
                                "command again to continue")


def test_a_signal_handled_while_a_shard_starts_reaches_that_shard(tmp_path, monkeypatch):
    """A stop signal taken while Popen started a shard (by another thread of the parent, or
    pending until the mask came back, before the shard was listed) was passed on to the
    shards listed then only: the new one ran its whole share."""
    shard = tmp_path / "shard.py"
    shard.write_text(_WAITING_SHARD)
    popen = subprocess.Popen

    def signalled_while_starting(*args, **kwargs):
        # this thread holds the signal: another takes it, this one runs the handler next
        killer = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT))
        killer.start()
        killer.join()
        return popen(*args, **kwargs)

    monkeypatch.setattr(runner.subprocess, "Popen", signalled_while_starting)
    with pytest.raises(KeyboardInterrupt, match=r"shards stopped \(exit codes \[130\]\)"):
        _study(tmp_path, {}, jobs=2).in_shards(str(shard), [str(tmp_path)])
    assert (tmp_path / "stopped0").read_text() == "SIGINT"


def test_run_script_where_signals_cannot_be_held(monkeypatch):
    """Every study script failed with an AttributeError where signal has no pthread_sigmask
    (Windows)."""
    monkeypatch.delattr(signal, "pthread_sigmask")
    with pytest.raises(SystemExit) as err:
        runner.run_script(lambda: 0)
    assert err.value.code == 0


_IMPORTING_SHARD = """\
import pathlib, sys, time
k = sys.argv[sys.argv.index('--shard') + 1].split('/')[0]
folder = pathlib.Path(sys.argv[1])
(folder / f'ready{k}').touch()
time.sleep(3)  # a study script importing torch (held signals wait), before run_script
sys.path.insert(0, sys.argv[2])
import runner
runner.run_script(lambda: (folder / f'ran{k}').touch() or 0)
"""


def test_a_shard_stopped_while_importing_exits_quietly(tmp_path):
    """Ctrl-C while the shards were still importing torch printed a KeyboardInterrupt
    traceback from each (exit 1, so the parent called it a failure): now each ends quietly
    with 130 and the parent says it in one line."""
    process = _study_with_ready_shards(
        tmp_path, _IMPORTING_SHARD,
        _STUDY_PARENT.replace("[sys.argv[2]]", "[sys.argv[2], sys.argv[1]]"))
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip() == "[unit] shards stopped (exit codes [130, 130]); run the same " \
        "command again to continue"
    assert not list(tmp_path.glob("ran*"))


@pytest.mark.parametrize(("raised", "code"), [
    (KeyboardInterrupt(), 130),
    (TrainingStopped(signal.SIGTERM, 3, 10, Path("r/last.pt")), 143),
])
def test_a_stopped_script_exits_with_one_line(capsys, raised, code):
    def main():
        raise raised

    with pytest.raises(SystemExit) as err:
        runner.run_script(main)
    assert err.value.code == code
    assert capsys.readouterr().err.endswith("; run the same command again to continue\n")


def test_a_corrupt_checkpoint_is_an_error_line_and_is_kept(tmp_path, capsys):
    """A run stopped part way whose last.pt is damaged: the script says so in its error
    line (exit code 2, no traceback) and leaves the file for the user to look at."""
    from deformconv.engine import load_checkpoint

    last = tmp_path / "unit" / "r0" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 cut short")
    study = _study(tmp_path, {})
    with pytest.raises(SystemExit) as err:
        runner.run_script(lambda: study.run("r0", {}, lambda d: load_checkpoint(d / "last.pt")))
    assert err.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: could not read checkpoint {last}")
    assert "delete it or pick another one" in lines[0]
    assert last.read_bytes() == b"PK\x03\x04 cut short"


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/2"])
def test_bad_shard_is_refused(text):
    parser = argparse.ArgumentParser()
    runner.add_common_args(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--shard", text])


@pytest.mark.parametrize(("option", "values", "named"), [
    ("--seeds", ["0", "1", "0"], "each seed at most once, got [0, 1, 0] (0 repeated)"),
    ("--threads", ["0"], "--threads: expected an integer >= 1, got 0"),
    ("--jobs", ["-1"], "--jobs: expected an integer >= 1, got -1"),
])
def test_bad_common_options_are_refused(capsys, option, values, named):
    parser = argparse.ArgumentParser()
    runner.add_common_args(parser)
    with pytest.raises(SystemExit):
        parser.parse_args([option, *values])
    assert named in capsys.readouterr().err


def test_failed_run_leaves_no_result(tmp_path):
    def boom(run_dir):
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        _study(tmp_path, {}).run("r0", {}, boom)
    assert not (tmp_path / "unit" / "r0.json").exists()


def test_mean_std():
    assert runner.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert runner.mean_std([4.0]) == (4.0, 0.0)
    assert all(math.isnan(v) for v in runner.mean_std([]))


def _specs(task, deform_blocks):
    """(deformable spec, plain twin) of a width-4 study model: DeepLab or a detector with
    deformable (PS) RoI pooling."""
    sizes = runner.Sizes(image_size=64, batch_size=2, train_size=4, val_size=2,
                         base_channels=4, iterations=1, seeds=(0,))
    if task == "segmentation":
        return runner.segmentation_specs(sizes, 5, deform_blocks)
    return runner.detection_specs(sizes, 5, deform_blocks, deformable_head=True, detector=task)


@pytest.mark.parametrize("task", ["segmentation", "faster_rcnn", "rfcn"])
def test_twin_starts_as_the_plain_function(task):
    """Same seed: the deformable model (zero offsets) computes what its plain twin does."""
    spec, plain = _specs(task, (0, 0, 1, 3) if task == "segmentation" else (0, 0, 0, 2))
    model, base = runner.twin_model(spec, plain, 3).eval(), runner.twin_model(plain, plain, 3)
    assert runner.parameter_count(model) > runner.parameter_count(base.eval())
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        if task == "segmentation":
            torch.testing.assert_close(model(images), base(images))
        else:  # the backbone (the head's pooling differs only by its zero offsets)
            torch.testing.assert_close(model.backbone(images)["head"],
                                       base.backbone(images)["head"])


def test_seed_list_is_not_part_of_a_runs_identity():
    """Adding seeds to a finished study continues it instead of refusing its results."""
    a = runner.Sizes(image_size=32, batch_size=2, train_size=4, val_size=2, base_channels=4,
                     iterations=1, seeds=(0,))
    b = runner.Sizes(**{**a.identity(), "seeds": (0, 1, 2)})
    assert a.identity() == b.identity() and "seeds" not in a.identity()
    assert runner.Sizes(**{**a.identity(), "iterations": 2, "seeds": (0,)}).identity() \
        != a.identity()


def test_pretrained_backbone_must_match_the_model_width():
    with pytest.raises(ValueError, match="width 4, the models base_channels=8"):
        runner.Sizes(image_size=32, batch_size=2, train_size=4, val_size=2, base_channels=8,
                     iterations=1, seeds=(0,), pretrain=runner.SMOKE_PRETRAIN)


def test_train_run_fine_tunes_the_cached_pretrained_backbone(tmp_path):
    """The study's runs load the pretrained weights into the backbone (trained once,
    then read from <out>/cache), and both twins start from them."""
    from deformconv.runs import load_pretrained

    sizes = runner.Sizes(image_size=32, batch_size=2, train_size=4, val_size=2,
                         base_channels=4, iterations=1, seeds=(0,),
                         pretrain=runner.SMOKE_PRETRAIN)
    study = _study(tmp_path, {})
    info = runner.pretrained(sizes, study)
    assert not info["cached"] and runner.pretrained(sizes, study)["cached"]
    state = load_pretrained(info["checkpoint"])
    spec, plain = runner.segmentation_specs(sizes, 5, (0, 0, 0, 3))
    model, result = runner.train_run("segmentation", spec, plain, sizes, 0,
                                     tmp_path / "run", study)
    assert result["iterations"] == 1 and result["seconds_per_iteration"] > 0
    # one AdamW step from the pretrained weights: close to them, not to a fresh init
    fresh = runner.twin_model(spec, plain, 0).backbone.conv1.weight
    trained = model.backbone.conv1.weight.detach()
    assert (trained - state["conv1.weight"]).abs().max() < (trained - fresh).abs().max()
    assert result["resumed_at"] == 0
    # called again, the run continues from its checkpoint (here: already at the end)
    _, again = runner.train_run("segmentation", spec, plain, sizes, 0, tmp_path / "run", study)
    assert again["resumed_at"] == 1 and again["iterations"] == 1


@pytest.mark.parametrize("task", ["segmentation", "faster_rcnn", "rfcn"])
def test_backbone_prefix_names_the_pretrained_weights(task):
    """The lower fine-tuning rate reaches exactly the pretrained ResNet: every backbone
    tensor sits under the task's prefix, and no head parameter does."""
    spec, _ = _specs(task, (0, 0, 0, 3))
    model = runner.twin_model(spec, spec, 0)
    prefix = runner.BACKBONE_PREFIX["detection" if task != "segmentation" else task]
    resnet = model.backbone if task == "segmentation" else model.backbone.body
    under = {n for n, _ in model.named_parameters() if n.startswith(prefix)}
    assert under == {prefix + n for n, _ in resnet.named_parameters()}
    assert len(under) < len(list(model.parameters()))


def test_pretraining_cache_key_is_pinned():
    # The studies' results were made with the backbone cached under this key: a change to
    # runner.PRETRAIN, or to PretrainSettings' fields, would pretrain again and mix backbones.
    assert runner.PRETRAIN.key() == "c48008f53b10"


def test_cpu_time_per_iteration_counts_what_each_call_trained():
    def result(cpu, **extra):
        return {"params": 10, "seconds": 100.0, "seconds_per_iteration": 0.1, "iterations": 100,
                "cpu_seconds": cpu, "metrics": {"miou": 0.5}, **extra}

    row = runner.seed_stats([result(20.0, resumed_at=0), result(6.25, resumed_at=75),
                             result(30.0, resumed_at=0)], ["miou"])
    assert row["cpu_seconds_per_iteration"] == pytest.approx(0.25) and row["cpu_runs"] == 3
    # older results without resumed_at: a training clock longer than the call's wall time
    # was carried over from a checkpoint, at an unknown iteration
    row = runner.seed_stats([result(20.0, train_seconds=90.0),
                             result(5.0, train_seconds=150.0)], ["miou"])
    assert row["cpu_seconds_per_iteration"] == 0.2 and row["cpu_runs"] == 1
    assert math.isnan(runner.seed_stats([result(5.0, train_seconds=150.0)], ["miou"])
                      ["cpu_seconds_per_iteration"])


def test_readme_names_every_private_import_of_the_scripts():
    """experiments/README.md said the scripts use only the public API while runner.py
    imported deformconv.cli._common.positive_int."""
    import ast

    readme = (EXPERIMENTS / "README.md").read_text()
    private = set()
    for script in EXPERIMENTS.glob("*.py"):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deformconv"):
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    if any(part.startswith("_") for part in name.split(".")):
                        private.add(name)
    assert "deformconv.cli._common.positive_int" in private
    assert "only the package's public API" not in readme
    for name in private:
        assert f"`{name}`" in readme, name


def test_a_stopped_shard_leaves_the_line_to_its_parent(capsys, monkeypatch):
    """Each shard of a stopped --jobs study printed its own 'interrupted; run the same
    command again' besides the parent's line (the shard's command is not the user's)."""
    monkeypatch.setenv(runner._SHARD_ENV, "1")

    def main():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as err:
        runner.run_script(main)
    assert err.value.code == 130 and capsys.readouterr().err == ""
