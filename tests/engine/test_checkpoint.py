"""Atomic checkpoint writes and clear errors for missing, corrupt or foreign files."""

from __future__ import annotations

import argparse
import os
import stat

import pytest
import torch

from deformconv.engine import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from deformconv.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    remove_stale_temp_files,
    write_atomically,
)
from deformconv.engine.seeding import get_rng_state


def _state(value: float = 1.0) -> dict:
    return {"format": CHECKPOINT_FORMAT, "model": {"w": torch.full((3,), value)},
            "optimizer": {}, "scheduler": {}, "iteration": 7, "rng": [get_rng_state()],
            "config": {}}


def test_round_trip_leaves_no_temp_files(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "sub" / "last.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    state = load_checkpoint(path)
    assert state["iteration"] == 7 and torch.equal(state["model"]["w"], torch.ones(3))


def test_temp_files_a_killed_write_left_are_removed_and_nothing_else(tmp_path):
    """A write killed (SIGKILL) before its rename left a hidden, full-size temporary file
    that nothing removed; only names of write_atomically's exact pattern go."""
    seen = []
    write_atomically(tmp_path / "last.pt",
                     lambda f: seen.extend(p.name for p in tmp_path.iterdir()))
    (name,) = seen  # the temporary file, as a killed write leaves it
    others = ["last.pt", ".last.pt.keep.tmp", ".last.pt.abcd1234.tmp.bak", ".best.pt.abcd1234.tmp",
              "x.last.pt.abcd1234.tmp"]
    for left in [name, ".last.pt.zz_9abcd.tmp", *others]:
        (tmp_path / left).write_bytes(b"x")
    removed = remove_stale_temp_files([tmp_path / "last.pt"])
    assert sorted(p.name for p in removed) == sorted([name, ".last.pt.zz_9abcd.tmp"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoints_get_the_mode_of_any_new_file(tmp_path, umask):
    """Readable by the group and others under the usual umask 022 (they were always 0600,
    so colleagues could not evaluate a shared run's checkpoints)."""
    previous = os.umask(umask)
    try:
        path = save_checkpoint(_state(), tmp_path / "last.pt")
        (tmp_path / "other").touch()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "other").stat().st_mode)


def test_a_file_of_other_objects_is_refused_without_torch_s_unsafe_advice(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"args": argparse.Namespace(lr=1.0)}, path)  # not loadable weights-only
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message == (f"checkpoint {path} holds objects other than tensors and plain "
                       "containers (Unsupported global: GLOBAL argparse.Namespace was not an "
                       "allowed global by default.); it was not written by deformconv's "
                       "trainer, and is not loaded, as loading it could run code it holds")


def test_a_folder_is_named_a_folder_with_its_checkpoints(tmp_path):
    save_checkpoint(_state(), tmp_path / "run" / "last.pt")
    with pytest.raises(FileNotFoundError, match=f"checkpoint {tmp_path / 'run'} is a folder; "
                                                f"give a file in it: {tmp_path / 'run'}/last.pt"):
        load_checkpoint(tmp_path / "run")


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint(_state(1.0), tmp_path / "last.pt")

    def broken_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")  # some bytes, then the "crash"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_state(2.0), path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # temp file removed
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


@pytest.mark.parametrize(("name", "data", "kind"), [
    ("metrics.json", b'{"miou": 0.5}', "a JSON file"),
    ("model.onnx", b"\x08\x07\x12\x07pytorch", "an ONNX model"),
    ("summary", b'  [{"iter": 1}]', "a JSON file (by its contents)"),
])
def test_a_file_beside_checkpoints_is_named_for_what_it_is(tmp_path, name, data, kind):
    """A run's metrics.json or an exported model read "could not read checkpoint ...
    UnpicklingError ... delete it or pick another one": advice to delete a valid file."""
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"{path} is {kind}, not a checkpoint; give a checkpoint that "
                              "train or demo wrote (last.pt or best.pt in a run's folder)")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("cut", [0.5, 0.0])
def test_truncated_or_garbage_file_names_path(tmp_path, cut):
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)] if cut else b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"could not read checkpoint .*last\.pt") as err:
        load_checkpoint(path)
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)


def test_changed_bytes_are_caught_by_the_records_checksums(tmp_path):
    """torch.load reads a checkpoint whose tensor bytes changed (it does not check the zip's
    CRC-32s): the weights would load silently wrong."""
    path = save_checkpoint({**_state(), "model": {"w": torch.zeros(4096)}}, tmp_path / "last.pt")
    data = bytearray(path.read_bytes())
    start = data.find(bytes(4096 * 4))  # the tensor's bytes
    assert start > 0
    data[start + 100] ^= 0x40
    path.write_bytes(data)
    assert torch.load(path, weights_only=True)["model"]["w"].abs().sum() > 0  # silently wrong
    message = r"checkpoint .*last\.pt is corrupt: record '\w+/data/0' does not match"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=message):
        load_weights(torch.nn.Linear(2, 2), path)


def test_files_written_without_checksums_load(tmp_path):
    torch.serialization.set_crc32_options(False)
    try:
        path = save_checkpoint(_state(3.0), tmp_path / "last.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((3,), 3.0))


def test_empty_file_is_named_empty(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"checkpoint .*last\.pt is empty \(0 bytes\)"):
        load_checkpoint(tmp_path / "last.pt")


def test_foreign_checkpoints_rejected(tmp_path):
    plain = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match=r"weights\.pt is not a deformconv training.*"
                                              r"missing keys \['format'"):
        load_checkpoint(plain)
    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor_file)
    with pytest.raises(CheckpointError, match="holds a Tensor, expected a dict"):
        load_checkpoint(tensor_file)
    old = tmp_path / "old.pt"
    torch.save({**_state(), "format": "v0"}, old)
    with pytest.raises(CheckpointError, match="has format 'v0'"):
        load_checkpoint(old)


@pytest.mark.parametrize(("change", "message"), [
    ({"rng": []}, "rng must hold one entry per process of its run (world_size 1), got 0"),
    ({"rng": [get_rng_state()], "world_size": 2},
     "rng must hold one entry per process of its run (world_size 2), got 1"),
    ({"rng": {}}, "rng must be a list, got dict"),
    ({"rng": [{}]}, "rng must hold a dict with keys ['torch', 'numpy', 'python'] per process"),
    ({"iteration": 7.0}, "iteration must be an int, got 7.0 (float)"),
    ({"iteration": True}, "iteration must be an int, got True (bool)"),
    ({"iteration": -3}, "iteration must be >= 0, got -3"),
    ({"world_size": 0, "rng": []}, "world_size must be >= 1, got 0"),
    ({"log_window": []}, "log_window must hold one entry per process of its run"),
    ({"config": None}, "config must be a dict, got None (NoneType)"),
    ({"best_metric": "0.5"}, "best_metric must be a number or None, got '0.5' (str)"),
    ({"train_seconds": -1.0}, "train_seconds must be finite and >= 0, got -1.0"),
    ({"finished": 1}, "finished must be true or false, got 1 (int)"),
])
def test_malformed_fields_are_refused_naming_the_checkpoint_and_field(tmp_path, change,
                                                                      message):
    """A resume of such a file failed deep in the trainer (IndexError for rng [],
    TypeError in the data order's seeding for iteration 7.0) or went on silently (-3)."""
    path = save_checkpoint({**_state(), **change}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(f"checkpoint {path} is malformed: {message}")


def test_load_weights_from_trainer_or_plain_files(tmp_path):
    source = torch.nn.Linear(3, 2)
    trainer = tmp_path / "last.pt"
    save_checkpoint({**_state(), "model": source.state_dict()}, trainer)
    plain = tmp_path / "plain.pt"
    torch.save(source.state_dict(), plain)
    for path in (trainer, plain):
        target = torch.nn.Linear(3, 2)
        load_weights(target, path)
        assert torch.equal(target.weight, source.weight) and torch.equal(target.bias, source.bias)


def test_load_weights_errors(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    misfit = r"(?s)weights in .*plain\.pt do not fit Linear: .*size mismatch"
    with pytest.raises(CheckpointError, match=misfit):
        load_weights(torch.nn.Linear(4, 2), path)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(CheckpointError, match=r"list\.pt holds no model weights.*got list"):
        load_weights(torch.nn.Linear(3, 2), listed)


def test_a_failed_checkpoint_write_names_the_file(tmp_path, monkeypatch):
    """A full disk under torch.save raised torch's RuntimeError holding an OSError that named
    no file: the CLI printed 'writing a file failed: [Errno 28] ...'."""
    import errno

    from deformconv._paths import os_errors
    from deformconv.engine import checkpoint

    fdopen = os.fdopen

    def full_disk(fd: int, mode: str):
        file = fdopen(fd, mode)

        def write(data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        file.write = write
        return file

    monkeypatch.setattr(checkpoint.os, "fdopen", full_disk)
    with pytest.raises((OSError, RuntimeError)) as raised:
        save_checkpoint(_state(), tmp_path / "last.pt")
    (found, *_) = os_errors(raised.value)
    assert (found.errno, found.filename) == (errno.ENOSPC, str(tmp_path / "last.pt"))
    assert list(tmp_path.iterdir()) == []
