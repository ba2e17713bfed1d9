"""export_coco / export_voc: datasets with samples that cannot be read, failed exports."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from deformconv.data import (
    CocoDetection,
    InMemory,
    NoReadableSamplesError,
    SyntheticDetection,
    SyntheticSegmentation,
    VOCSegmentation,
    export,
    export_coco,
    export_voc,
    synthetic_dataset,
)


def _voc_with_bad_mask(root: Path) -> VOCSegmentation:
    """Three samples of pixel value 0, 60, 120; the mask of sample 1 is 20 rows high."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    names = [f"img{i}" for i in range(3)]
    for i, name in enumerate(names):
        Image.fromarray(np.full((10, 12, 3), 60 * i, np.uint8)).save(
            root / "JPEGImages" / f"{name}.png")
        Image.fromarray(np.zeros((20 if i == 1 else 10, 12), np.uint8), mode="L").save(
            root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(names) + "\n")
    return VOCSegmentation(root)


@pytest.mark.parametrize("wrap", [False, True])
def test_export_voc_leaves_out_unreadable_samples(tmp_path: Path, wrap: bool) -> None:
    """An unreadable sample was written as a copy of the next one, under its own id."""
    source = _voc_with_bad_mask(tmp_path / "src")
    with pytest.warns(RuntimeWarning, match="skipping sample 1"):
        dataset = InMemory(source) if wrap else source
        with pytest.warns(RuntimeWarning, match=r"export_voc: left out 1 unreadable sample\(s\) "
                                                r"of .*: 1$"):
            split = export_voc(dataset, tmp_path / "out")
    assert split.read_text().split() == ["train_000000", "train_000002"]
    out = VOCSegmentation(tmp_path / "out")
    assert [int(out[i][0].mul(255).round()[0, 0, 0]) for i in range(len(out))] == [0, 120]


@pytest.mark.parametrize("wrap", [False, True])
def test_export_coco_leaves_out_unreadable_samples(tmp_path: Path, wrap: bool) -> None:
    """An unreadable image was replaced by the next one, whose id then occurred twice."""
    export_coco(synthetic_dataset("detection", 3, seed=2, image_size=32), tmp_path / "src")
    (tmp_path / "src" / "images" / "000001.png").write_bytes(b"not an image")
    source = CocoDetection(tmp_path / "src", tmp_path / "src" / "annotations.json")
    with pytest.warns(RuntimeWarning, match="skipping sample 1"):
        dataset = InMemory(source) if wrap else source
        with pytest.warns(RuntimeWarning, match=r"export_coco: left out 1 unreadable"):
            path = export_coco(dataset, tmp_path / "out")
    out = CocoDetection(tmp_path / "out", path)
    assert [out[i][1]["image_id"] for i in range(len(out))] == [0, 2]
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == [
        "000000.png", "000002.png"]


def test_export_of_no_readable_sample_is_an_error(tmp_path: Path) -> None:
    source = _voc_with_bad_mask(tmp_path / "src")
    with pytest.warns(RuntimeWarning), pytest.raises(NoReadableSamplesError):
        export_voc(source, tmp_path / "out", indices=[1])
    assert not (tmp_path / "out" / "ImageSets" / "Segmentation" / "train.txt").exists()


def test_export_of_readable_datasets_warns_nothing(tmp_path: Path, recwarn) -> None:
    export_voc(SyntheticSegmentation(2, seed=0, image_size=32), tmp_path)
    assert not recwarn.list
    assert torch.equal(VOCSegmentation(tmp_path)[1][1], SyntheticSegmentation(
        2, seed=0, image_size=32)[1][1])


def test_export_voc_again_in_another_format_replaces_the_images(tmp_path: Path) -> None:
    """The jpg images of a first export were kept beside the png ones of a second, and
    the loader paired them (jpg first) with the second export's masks."""
    first = SyntheticSegmentation(3, seed=0, image_size=32)
    second = SyntheticSegmentation(3, seed=1, image_size=32)
    export_voc(first, tmp_path, "train", image_format="jpg")
    export_voc(second, tmp_path, "train")
    assert sorted(p.suffix for p in (tmp_path / "JPEGImages").iterdir()) == [".png"] * 3
    image, mask = VOCSegmentation(tmp_path, "train")[0]
    assert torch.equal(mask, second[0][1])
    assert (image - second[0][0]).abs().max() <= 0.5 / 255 + 1e-6


def test_writers_without_pil_name_the_extra(run_without, tmp_path: Path) -> None:
    """export_voc raised ModuleNotFoundError: No module named 'PIL', naming no extra."""
    run_without(["PIL"], f"""
        from pathlib import Path
        import torch
        from deformconv.data import export_coco, export_voc, synthetic_dataset
        from deformconv.data.export import save_image
        folder = Path({str(tmp_path)!r})
        hint = ("deformconv.data.export needs PIL, part of the vision extra: "
                "pip install 'deformconv[vision]'")
        segmentation = synthetic_dataset("segmentation", 1, seed=0, image_size=16)
        detection = synthetic_dataset("detection", 1, seed=0, image_size=16)
        missing_extra(lambda: export_voc(segmentation, folder / "voc"), hint)
        missing_extra(lambda: export_coco(detection, folder / "coco"), hint)
        missing_extra(lambda: save_image(torch.zeros(3, 4, 4), folder / "x.png"), hint)
    """)


def _fail_at(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make PIL's save raise 'No space left on device' for the file ``name`` (a stem)."""
    save = Image.Image.save

    def failing_save(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        if Path(fp).stem == name:
            raise OSError(28, "No space left on device")
        return save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)


def _same_images(loaded: Dataset, source: Dataset) -> bool:
    return len(loaded) == len(source) and all(
        (loaded[i][0] - source[i][0]).abs().max() <= 0.5 / 255 + 1e-6
        for i in range(len(source)))


def test_failed_coco_export_leaves_the_earlier_one(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk full at image 3 left new images 0-2 under the old annotations, which loaded."""
    old = SyntheticDetection(length=6, image_size=32, seed=0)
    export_coco(old, tmp_path)
    _fail_at(monkeypatch, "000003")
    # the error names the file (it named none: 'writing a file failed' in the CLI)
    with pytest.raises(OSError, match=r"No space left on device: '.*/images/000003.png'"):
        export_coco(SyntheticDetection(length=6, image_size=32, seed=1), tmp_path)
    assert _same_images(CocoDetection(tmp_path, tmp_path / "annotations.json"), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.json", "images"]


def test_coco_export_failing_as_it_moves_in_refuses_to_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The renames need no space, but should one fail, the folder must not load."""
    export_coco(SyntheticDetection(length=3, image_size=32, seed=0), tmp_path)
    move_in = export._move_in

    def move_one_and_fail(stage: Path, folder: Path, names: list[str]) -> None:
        move_in(stage, folder, list(names)[:1])
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(export, "_move_in", move_one_and_fail)
    with pytest.raises(OSError, match="Input/output"):
        export_coco(SyntheticDetection(length=3, image_size=32, seed=1), tmp_path)
    with pytest.raises(FileNotFoundError):
        CocoDetection(tmp_path, tmp_path / "annotations.json")


def test_failed_voc_export_leaves_the_earlier_one(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk full at mask 3 left sample 3 as a new image with the old mask, listed in the
    old split file."""
    old = SyntheticSegmentation(length=6, image_size=32, seed=0)
    export_voc(old, tmp_path, "train", indices=range(4))
    export_voc(old, tmp_path, "val", indices=range(4, 6))
    _fail_at(monkeypatch, "train_000003")
    with pytest.raises(OSError, match=r"No space left on device: '.*/JPEGImages/train_000003"):
        export_voc(SyntheticSegmentation(length=6, image_size=32, seed=1), tmp_path, "train")
    train = VOCSegmentation(tmp_path, "train")
    assert _same_images(train, Subset(old, range(4)))
    assert all(torch.equal(train[i][1], old[i][1]) for i in range(4))
    assert len(VOCSegmentation(tmp_path, "val")) == 2
    assert not list(tmp_path.glob(".export-*"))


def test_voc_export_of_a_sample_twice_is_refused_before_the_folder_changes(
        tmp_path: Path) -> None:
    """indices=[0, 0, 1] removed the earlier export's split file, then failed moving the
    second copy in (FileNotFoundError): the earlier export no longer loaded."""
    data = SyntheticSegmentation(length=3, image_size=32, seed=0)
    export_voc(data, tmp_path, "train")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="indices holds sample 0 twice"):
        export_voc(data, tmp_path, "train", indices=[0, 0, 1])
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert len(VOCSegmentation(tmp_path, "train")) == 3


@pytest.mark.parametrize("writer", ["coco", "voc"])
def test_export_removes_what_a_killed_export_left(tmp_path: Path, writer: str) -> None:
    """An export killed mid-write (SIGKILL) left its .export-* folder, with the files it had
    written, and the next export into the folder left it there too, for good. Only the
    names mkdtemp gives are removed: a look-alike of the user's stays."""
    stale = tmp_path / ".export-k1ll3d_a"
    (stale / "images").mkdir(parents=True)
    (stale / "images" / "000000.png").write_bytes(b"half an image")
    kept = [tmp_path / ".export-mine", tmp_path / ".export-abcdefgh.bak",
            tmp_path / "export-abcdefgh"]
    for path in kept:
        path.mkdir()
    (tmp_path / ".export-12345678").write_text("a file of that name goes too")
    if writer == "coco":
        export_coco(SyntheticDetection(length=2, image_size=32, seed=0), tmp_path)
    else:
        export_voc(SyntheticSegmentation(length=2, image_size=32, seed=0), tmp_path)
    assert sorted(p for p in tmp_path.glob("*export*")) == sorted(kept)


def _in_thread(target: Any) -> tuple[threading.Thread, list[BaseException], threading.Event]:
    """``target()`` started in a thread: the thread, the error it raised (if any), and an
    event set when it returned."""
    errors: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            target()
            done.set()
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors, done


def test_an_export_waits_for_one_running_into_its_folder(tmp_path: Path) -> None:
    """Its stale-folder cleanup would remove the live export's temporary folder: it waits
    for the lock instead (it refused with ExportInProgressError, so exports of two splits
    at once failed)."""
    fcntl = pytest.importorskip("fcntl")
    live = tmp_path / ".export-l1ve0000"
    live.mkdir()
    with open(tmp_path / ".export.lock", "w") as holder:  # as another export holds it
        fcntl.flock(holder, fcntl.LOCK_EX)
        thread, errors, done = _in_thread(lambda: export_coco(
            SyntheticDetection(length=1, image_size=32, seed=0), tmp_path))
        assert not done.wait(1.0) and not errors
        assert live.is_dir()
    thread.join(120)
    assert done.is_set() and not errors
    assert not live.exists() and not (tmp_path / ".export.lock").exists()
    assert len(CocoDetection(tmp_path, tmp_path / "annotations.json")) == 1


def test_exports_of_splits_from_threads_accumulate(tmp_path: Path) -> None:
    """Three threads exporting one split each into one folder: one thread was refused as
    'another process (pid <its own>)', another failed with a KeyError, splits were lost."""
    data = SyntheticSegmentation(length=3, image_size=32, seed=0)
    started = [_in_thread(lambda split=split: export_voc(data, tmp_path, split))
               for split in ("train", "val", "test")]
    for thread, errors, done in started:
        thread.join(120)
        assert done.is_set() and not errors, errors
    assert [len(VOCSegmentation(tmp_path, split)) for split in ("train", "val", "test")] == [3] * 3
    assert not list(tmp_path.glob(".export*"))


@pytest.mark.parametrize("writer", ["coco", "voc"])
def test_exports_without_advisory_locks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        writer: str) -> None:
    """Without fcntl (Windows) an export into a new folder failed (FileNotFoundError: the
    folder was created only on the locking path), and the stale-folder cleanup, with no lock
    to exclude others, removed a live export's folder."""
    import deformconv._folder_lock as folder_lock

    monkeypatch.setattr(folder_lock, "fcntl", None)
    folder = tmp_path / "new" / "export"
    maybe_live = folder / ".export-l1ve0000"
    maybe_live.mkdir(parents=True)
    _export(writer, folder)
    assert maybe_live.is_dir()
    _export(writer, tmp_path / "other")
    assert _exported(writer, tmp_path / "other") == _exported(writer, folder)


def test_export_of_a_dataset_without_a_len(tmp_path: Path) -> None:
    """indices were checked against len(dataset), which a map-style Dataset need not have:
    an export of given samples, which worked before, raised TypeError."""
    source = SyntheticSegmentation(length=3, image_size=32, seed=0)

    class NoLen(torch.utils.data.Dataset):
        class_names = source.class_names

        def __getitem__(self, index: int) -> Any:
            return source[index]

    export_voc(NoLen(), tmp_path, "train", indices=[2, 0])
    assert len(VOCSegmentation(tmp_path, "train")) == 2
    with pytest.raises(IndexError, match="indices: index -1 counts from the end"):
        export_voc(NoLen(), tmp_path, "val", indices=[-1])
    with pytest.raises(TypeError, match="has no len\\(\\): pass indices"):
        export_voc(NoLen(), tmp_path, "val")


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _export(writer: str, folder: Path, **kwargs: Any) -> None:
    """export_coco / export_voc of 4 synthetic samples (seed 0) into ``folder``."""
    if writer == "coco":
        export_coco(SyntheticDetection(length=4, image_size=32, seed=0), folder, **kwargs)
    else:
        export_voc(SyntheticSegmentation(length=4, image_size=32, seed=0), folder, **kwargs)


def _exported(writer: str, folder: Path) -> list[str]:
    """The file stems of the images an export wrote, in its order."""
    if writer == "coco":
        coco = json.loads((folder / "annotations.json").read_text())
        return [Path(image["file_name"]).stem for image in coco["images"]]
    return (folder / "ImageSets" / "Segmentation" / "train.txt").read_text().split()


def test_voc_export_of_a_tensor_repeating_a_sample_is_refused_before_the_folder_changes(
        tmp_path: Path) -> None:
    """indices=torch.tensor([2, 2, 3]) was not caught (0-dim tensors hash by identity): the
    export removed the earlier split file, then failed moving the second copy in."""
    data = SyntheticSegmentation(length=4, seed=0, image_size=32)
    export_voc(data, tmp_path, indices=[0, 1])
    before = _files(tmp_path)
    for repeated in (torch.tensor([2, 2, 3]), np.array([2, 2, 3])):
        with pytest.raises(ValueError, match="indices holds sample 2 twice; each may be"):
            export_voc(data, tmp_path, indices=repeated)
    assert _files(tmp_path) == before
    assert len(VOCSegmentation(tmp_path, "train")) == 2


@pytest.mark.parametrize("writer", ["coco", "voc"])
@pytest.mark.parametrize("indices", [
    [3, 0], (3, 0), range(3, -1, -3), torch.tensor([3, 0]), np.array([3, 0], np.uint8),
    [np.int64(3), torch.tensor(0)], [np.array(3), 0], [-1, 0], torch.tensor([-1, -4])],
    ids=repr)
def test_exports_take_integer_indices_of_any_kind_alike(tmp_path: Path, writer: str,
                                                        indices: Any) -> None:
    """export_coco and export_voc take the same indices; a negative one counts from the end
    (it gave the VOC id train_-00001, a second name for sample 3)."""
    _export(writer, tmp_path, indices=indices)
    expected = ["000003", "000000"] if writer == "coco" else ["train_000003", "train_000000"]
    assert _exported(writer, tmp_path) == expected


@pytest.mark.parametrize("writer", ["coco", "voc"])
@pytest.mark.parametrize(("indices", "error", "message"), [
    ([1.0], TypeError, "indices: dataset indices must be integers, got float 1.0"),
    ([True], TypeError, "indices must hold integers, got bool True"),
    ([np.True_], TypeError, "indices must hold integers, got bool"),
    ([torch.tensor(1.0)], TypeError, r"indices must hold integers, got Tensor tensor\(1.\)"),
    ([torch.tensor([1])], TypeError, "indices must hold integers, got Tensor"),
    (torch.tensor([1.0]), TypeError, "1-D integer tensor or array, got 1-D torch.float32"),
    (np.array([True]), TypeError, "1-D integer tensor or array, got 1-D bool"),
    (torch.tensor([[0]]), TypeError, "1-D integer tensor or array, got 2-D torch.int64"),
    (torch.tensor(0), TypeError, "1-D integer tensor or array, got 0-D"),
    ([4], IndexError, "indices: index 4 out of range for a dataset of 4 samples"),
    ([-5], IndexError, "indices: index -5 out of range"),
    ([3, -1], ValueError, r"indices holds sample 3 twice \(as 3 and -1\)"),
    ([], ValueError, "indices is empty: give at least one sample to export"),
    (torch.tensor([], dtype=torch.long), ValueError, "indices is empty")])
def test_exports_refuse_bad_indices_before_writing(tmp_path: Path, writer: str, indices: Any,
                                                   error: type, message: str) -> None:
    """indices=[] wrote an export the loaders refuse over a loadable earlier one."""
    _export(writer, tmp_path)
    before = _files(tmp_path)
    with pytest.raises(error, match=message):
        _export(writer, tmp_path, indices=indices)
    assert _files(tmp_path) == before


@pytest.mark.parametrize("writer", ["coco", "voc"])
def test_export_of_an_empty_dataset_is_refused(tmp_path: Path, writer: str) -> None:
    empty = Subset(SyntheticDetection(length=2, image_size=32, seed=0), [])
    write = (lambda: export_coco(empty, tmp_path / "out", class_names=["a"])) \
        if writer == "coco" else (lambda: export_voc(empty, tmp_path / "out"))
    with pytest.raises(ValueError, match=r"the dataset .* is empty: nothing to export"):
        write()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("split", ["../../escape", "a/b", "", ".", "..", "a\0b", 3])
def test_voc_export_refuses_a_split_that_is_no_file_name_part(tmp_path: Path,
                                                              split: Any) -> None:
    """split='../../escape' wrote escape_000000.png outside the folder, then raised a raw
    FileNotFoundError; split='' wrote ImageSets/Segmentation/.txt and _000000.png."""
    folder = tmp_path / "a" / "b" / "out"
    with pytest.raises(ValueError, match=r"split must be a plain file-name part \(non-empty, "
                                         rf"no path separator, not '.' or '..'\), got "
                                         rf"{re.escape(repr(split))}"):
        export_voc(SyntheticSegmentation(length=1, image_size=32, seed=0), folder, split)
    assert not list(tmp_path.rglob("*"))


def test_voc_export_refuses_a_mask_of_another_size_than_its_image(tmp_path: Path) -> None:
    """A (10, 8) mask of an (8, 10) image was written; VOCSegmentation then skipped it."""
    samples = [(torch.rand(3, 8, 10), torch.zeros(8, 10, dtype=torch.int64)),
               (torch.rand(3, 8, 10), torch.zeros(10, 8, dtype=torch.int64))]
    with pytest.raises(ValueError, match=r"sample 1: mask is \(10, 8\) but its image is "
                                         r"\(8, 10\); they must be the same size"):
        export_voc(samples, tmp_path, "train")
    assert not list(tmp_path.rglob("*.png"))
