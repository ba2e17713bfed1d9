"""COCO loader and writer on tiny datasets written by the tests, including broken ones."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deformconv.data import CocoDetection, SyntheticDetection, export_coco
from deformconv.data._common import load_rgb, upright_size
from deformconv.runs import DataSpec, build_datasets, with_categories


def _write_images(root: Path, sizes: dict[str, tuple[int, int]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)


def _write_json(path: Path, images, annotations, categories) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    """Three 40x50 images; category ids 3, 7, 10 (not contiguous)."""
    _write_images(tmp_path, {"a.png": (40, 50), "b.png": (40, 50), "c.png": (40, 50)})
    images = [{"id": i + 1, "file_name": f, "height": 40, "width": 50}
              for i, f in enumerate(["a.png", "b.png", "c.png"])]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 6, 10, 12], "area": 100.0,
         "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [20, 10, 8, 8], "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 10, "bbox": [0, 0, 50, 40], "iscrowd": 1},
        {"id": 4, "image_id": 3, "category_id": 3, "bbox": [1, 1, 4, 4], "iscrowd": 0},
    ]
    categories = [{"id": 10, "name": "ten"}, {"id": 3, "name": "three"},
                  {"id": 7, "name": "seven"}]
    return tmp_path, _write_json(tmp_path / "ann.json", images, annotations, categories)


def test_loads_targets_and_maps_categories(tiny) -> None:
    root, ann = tiny
    ds = CocoDetection(root, ann)
    assert len(ds) == 3 and ds.image_ids == [1, 2, 3] and not ds.skipped
    assert ds.category_ids == [3, 7, 10] and ds.class_names == ("three", "seven", "ten")
    assert ds.category_to_label == {3: 1, 7: 2, 10: 3}
    assert ds.label_to_category == {1: 3, 2: 7, 3: 10}
    image, t = ds[0]
    assert image.shape == (3, 40, 50) and image.dtype == torch.float32
    assert torch.equal(t["boxes"], torch.tensor([[5.0, 6.0, 15.0, 18.0], [20.0, 10, 28, 18]]))
    assert t["labels"].tolist() == [2, 1] and t["image_id"] == 1
    assert t["area"].tolist() == [100.0, 64.0]  # the json's area, else the box's
    assert torch.allclose(t["sizes"], torch.tensor([120.0, 64.0]).sqrt())
    assert ds[1][1]["iscrowd"].tolist() == [1]
    raw = np.asarray(Image.open(root / "a.png"), dtype=np.float32) / 255
    assert torch.allclose(image, torch.from_numpy(raw).permute(2, 0, 1))


def test_skip_crowd(tiny) -> None:
    root, ann = tiny
    with pytest.warns(RuntimeWarning,
                      match=r"crowd: 1, e\.g\. annotation id 3, empty_image: 1, e\.g\. .*b\.png\)"):
        ds = CocoDetection(root, ann, skip_crowd=True)
    assert len(ds) == 2 and ds.skipped == {"crowd": 1, "empty_image": 1}


def test_round_trip_from_synthetic(tmp_path: Path) -> None:
    src = SyntheticDetection(length=5, seed=11, image_size=(48, 40), masks=True)
    path = export_coco(src, tmp_path / "coco")
    assert path == tmp_path / "coco" / "annotations.json"
    ds = CocoDetection(tmp_path / "coco", path, masks=True)
    assert ds.class_names == src.class_names and len(ds) == len(src)
    for i in range(len(src)):
        image, a = src[i]
        loaded, b = ds[i]
        assert (loaded - image).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit PNG
        for key in ("boxes", "labels", "area", "iscrowd", "masks", "sizes"):
            assert torch.equal(a[key], b[key]), key
        assert a["image_id"] == b["image_id"]


def test_export_errors(tmp_path: Path) -> None:
    class Dup(torch.utils.data.Dataset):
        class_names = ("x",)

        def __len__(self) -> int:
            return 2

        def __getitem__(self, i):
            return torch.zeros(3, 8, 8), {"boxes": torch.tensor([[0.0, 0, 4, 4]]),
                                          "labels": torch.tensor([1]), "image_id": 5}

    with pytest.raises(ValueError, match=r"image_id 5 .* occurs twice"):
        export_coco(Dup(), tmp_path / "dup")
    with pytest.raises(ValueError, match=r"label 1; expected 1\.\.0"):
        export_coco(Dup(), tmp_path / "lab", class_names=[])
    with pytest.raises(ValueError, match="image_format must be"):
        export_coco(Dup(), tmp_path / "fmt", image_format="gif")


def test_polygon_masks(tmp_path: Path) -> None:
    _write_images(tmp_path, {"p.png": (20, 30)})
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "iscrowd": 0,
           "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]]}
    path = _write_json(tmp_path / "a.json", [{"id": 1, "file_name": "p.png", "height": 20,
                                              "width": 30}], [ann], [{"id": 1, "name": "r"}])
    _, t = CocoDetection(tmp_path, path, masks=True)[0]
    mask = t["masks"][0]
    assert mask.shape == (20, 30) and mask.dtype == torch.uint8
    rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
    assert (int(rows.min()), int(rows.max()) + 1) == (3, 11)
    assert (int(cols.min()), int(cols.max()) + 1) == (2, 12)


def test_borrowed_categories_label_as_the_lender_does(tiny, tmp_path: Path) -> None:
    root, ann = tiny
    train = CocoDetection(root, ann)
    val_ann = _write_json(tmp_path / "val.json", [{"id": 1, "file_name": "a.png"}],
                          [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 6, 10, 12]}],
                          [{"id": 7, "name": "seven"}])
    assert CocoDetection(root, val_ann).num_classes == 1  # its own table: cat 7 -> label 1
    for categories in (train, ann, str(ann), train.category_table):
        val = CocoDetection(root, val_ann, categories=categories)
        assert val.category_ids == [3, 7, 10] and val.class_names == train.class_names
        assert val[0][1]["labels"].tolist() == [2]


def test_category_missing_from_borrowed_table_is_an_error(tiny, tmp_path: Path) -> None:
    root, ann = tiny
    anns = [{"id": i, "image_id": 1, "category_id": c, "bbox": [5, 6, 10, 12]}
            for i, c in enumerate((3, 8, 8, 11))]
    val_ann = _write_json(tmp_path / "val.json", [{"id": 1, "file_name": "a.png"}], anns,
                          [{"id": 3}, {"id": 8}, {"id": 11}])
    message = (f"{val_ann}: annotations have category ids [8, 11] that are not among the "
               f"categories of {ann} (ids [3, 7, 10])")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        CocoDetection(root, val_ann, categories=ann)


# -- image files ---------------------------------------------------------------------------


def _save_grey(path: Path, values: np.ndarray, mode: str | None = None) -> Path:
    """Save (H, W) ``values`` via PIL, as ``mode`` when given (big-endian 16-bit)."""
    if mode == "I;16B":
        image = Image.frombytes(mode, values.shape[::-1], values.astype(">u2").tobytes())
    else:
        image = Image.fromarray(values)
    image.save(path)
    return path


_GREY = np.array([[0, 1000, 40000], [65535, 255, 7]])


@pytest.mark.parametrize(
    ("name", "values", "save_mode", "opens_as", "expected"),
    [
        ("g16.png", _GREY.astype(np.uint16), None, "I;16", _GREY / 65535),
        ("g16b.tif", _GREY.astype(np.uint16), "I;16B", "I;16B", _GREY / 65535),
        # 16-bit PNGs open as "I" in older PIL versions: values that fit in 16 bits
        ("i16.tif", _GREY.astype(np.int32), None, "I", _GREY / 65535),
        ("i32.tif", np.array([[-5, 0, 2**30]], np.int32), None, "I",
         np.array([[0, 0, 2**30 / (2**31 - 1)]])),
        ("f.tif", np.array([[-0.5, 0.25, 1.5]], np.float32), None, "F",
         np.array([[0, 0.25, 1]])),
    ],
)
def test_grey_images_of_more_than_8_bits_keep_their_range(
    tmp_path: Path, name: str, values: np.ndarray, save_mode: str | None, opens_as: str,
    expected: np.ndarray,
) -> None:
    path = _save_grey(tmp_path / name, values, save_mode)
    with Image.open(path) as img:
        assert img.mode == opens_as
    image = load_rgb(path)
    assert image.shape == (3, *values.shape) and image.dtype == torch.float32
    want = torch.from_numpy(expected).float().expand(3, -1, -1)
    torch.testing.assert_close(image, want, rtol=0, atol=1e-7)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "LA", "1"])
def test_8_bit_images_are_divided_by_255(tmp_path: Path, mode: str) -> None:
    rgb = np.random.default_rng(1).integers(0, 255, (6, 7, 3), dtype=np.uint8)
    path = tmp_path / f"{mode}.png"
    Image.fromarray(rgb).convert(mode).save(path)
    with Image.open(path) as img:
        assert img.mode == mode
        want = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255)
    torch.testing.assert_close(load_rgb(path), want.permute(2, 0, 1), rtol=0, atol=0)


def _save_oriented(path: Path, rgb: np.ndarray, orientation: int) -> Path:
    """Save ``rgb`` (stored pixels) with EXIF orientation tag ``orientation``."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, exif=exif)
    return path


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    """Viewers and annotation tools show a photo with its orientation applied; load_rgb
    used to return the stored pixels."""
    stored = np.random.default_rng(2).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    path = _save_oriented(tmp_path / "p.png", stored, orientation)
    turns = {1: 0, 3: 2, 6: -1, 8: 1}[orientation]  # counter-clockwise quarter turns
    want = torch.from_numpy(np.rot90(stored, turns).copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(load_rgb(path), want, rtol=0, atol=0)


def _photo_set(root: Path, sizes: dict[str, int], bbox: list[int]) -> Path:
    """p.jpg stored 40 wide, 30 high with EXIF orientation 6 (shown 30 wide, 40 high), its
    image entry with ``sizes``, one annotation of ``bbox``."""
    _save_oriented(root / "p.jpg", np.zeros((30, 40, 3), np.uint8), 6)
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox}
    return _write_json(root / "a.json", [{"id": 1, "file_name": "p.jpg", **sizes}], [ann],
                       [{"id": 1}])


@pytest.mark.parametrize("sizes", [{"width": 30, "height": 40}, {}])
def test_annotations_of_the_upright_photo_load(tmp_path: Path, sizes: dict[str, int]) -> None:
    """The json of an annotation tool, which shows the photo upright, was refused as a
    size mismatch, or without sizes the box was cut to the stored 30 rows."""
    bottom_left = [0, 30, 10, 10]  # of the photo as shown
    image, t = CocoDetection(tmp_path, _photo_set(tmp_path, sizes, bottom_left))[0]
    assert image.shape == (3, 40, 30)
    assert t["boxes"].tolist() == [[0.0, 30.0, 10.0, 40.0]] and t["area"].tolist() == [100.0]


def test_annotations_of_the_stored_pixels_are_explained(tmp_path: Path) -> None:
    path = _photo_set(tmp_path, {"width": 40, "height": 30}, [30, 20, 10, 10])
    ds = CocoDetection(tmp_path, path)
    message = (r"skipping sample 0: .*p\.jpg is 40x30 but the annotations say 30x40; the "
               r"annotations appear to be in the file's stored pixel orientation \(30 high, 40 "
               r"wide\), ignoring its EXIF orientation tag \(6\), .* strip the tag")
    with pytest.warns(RuntimeWarning, match=message), pytest.raises(RuntimeError):
        ds[0]
    assert ds.skipped == {"size_mismatch": 1}


# -- broken inputs -------------------------------------------------------------------------


def test_missing_annotation_file_and_folder(tiny, tmp_path: Path) -> None:
    root, ann = tiny
    with pytest.raises(FileNotFoundError, match=r"annotation file not found: .*nope\.json"):
        CocoDetection(root, root / "nope.json")
    with pytest.raises(FileNotFoundError, match=r"image folder not found: .*nodir"):
        CocoDetection(root / "nodir", ann)
    # a folder given as the annotation file was "not found"
    folder = f"^COCO annotation file is a folder, not a file: {re.escape(str(root))}$"
    with pytest.raises(IsADirectoryError, match=folder):
        CocoDetection(root, root)
    with pytest.raises(NotADirectoryError,
                       match=r"^COCO image folder is a file, not a folder: .*ann\.json$"):
        CocoDetection(ann, ann)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"images": [', r"invalid JSON: .* at line 1 column"),
        ("[1, 2]", "top level must be a JSON object, got list"),
        ('{"categories": []}', "missing the required 'images' list"),
        ('{"images": {}, "categories": []}', "'images' must be a list, got dict"),
        ('{"images": [], "categories": []}', "'categories' is empty"),
        ('{"images": [{"id": 1}], "categories": [{"id": 1}]}', r"images\[0\] needs"),
        ('{"images": [], "categories": [{"id": 1}, {"id": 1}]}', "duplicate category id 1"),
    ],
)
def test_corrupt_json_raises_with_path(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        CocoDetection(tmp_path, path)
    assert str(path) in str(info.value)


def test_binary_annotation_file(tmp_path: Path) -> None:
    path = tmp_path / "bin.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        CocoDetection(tmp_path, path)


def test_annotation_file_with_a_byte_order_mark(tiny) -> None:
    """A UTF-8 json with a BOM (as some editors save it) was refused as invalid JSON."""
    root, ann = tiny
    ann.write_bytes(b"\xef\xbb\xbf" + ann.read_bytes())
    assert CocoDetection(root, ann).image_ids == [1, 2, 3]


def test_missing_image_is_dropped_and_counted(tiny) -> None:
    root, ann = tiny
    (root / "b.png").unlink()
    with pytest.warns(RuntimeWarning, match="missing_image: 1"):
        ds = CocoDetection(root, ann)
    assert len(ds) == 2 and ds.skipped["missing_image"] == 1 and ds.image_ids == [1, 3]


def test_boxes_outside_the_image_are_clipped_or_dropped(tmp_path: Path) -> None:
    _write_images(tmp_path, {"a.png": (40, 50)})
    boxes = [[-5, -5, 20, 20], [40, 30, 30, 30], [60, 10, 5, 5], [10, 10, 0, 5],
             [5, 5, 5, "x"], [1, 2, 3]]
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b} for i, b in
            enumerate(boxes)]
    anns.append({"id": 9, "image_id": 42, "category_id": 1, "bbox": [1, 1, 2, 2]})
    anns.append({"id": 10, "image_id": 1, "category_id": 99, "bbox": [1, 1, 2, 2]})
    path = _write_json(tmp_path / "a.json", [{"id": 1, "file_name": "a.png", "height": 40,
                                              "width": 50}], anns, [{"id": 1}])
    with pytest.warns(RuntimeWarning, match=r"degenerate_box: 2, e\.g\. annotation id 4 .*, "
                                            r"invalid_annotation: 4, e\.g\. annotation id 5"):
        ds = CocoDetection(tmp_path, path)
    assert ds.clipped == 2
    _, t = ds[0]
    assert torch.equal(t["boxes"], torch.tensor([[0.0, 0, 15, 15], [40, 30, 50, 40]]))
    assert t["labels"].tolist() == [1, 1]
    assert ds.class_names == ("1",)


def test_dropped_annotations_are_named_with_the_reason(tmp_path: Path) -> None:
    """The summary warning used to say only "invalid_annotation: 5"."""
    _write_images(tmp_path, {"a.png": (40, 50)})
    good = {"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5],
            "segmentation": [[1, 1, 6, 1, 6, 6]]}
    anns = [{**good, "id": 1, "category_id": 2}, {**good, "id": 2, "image_id": "1"},
            {**good, "id": 3, "image_id": 9}, {**good, "id": 4, "bbox": [1, 1, 5]}, "junk",
            {**good, "id": 6, "bbox": [60, 1, 5, 5]}, {**good, "id": 7, "iscrowd": 1},
            {**good, "id": 8, "segmentation": "none"}, {**good, "id": 9}]
    path = _write_json(tmp_path / "a.json", [{"id": 1, "file_name": "a.png", "height": 40,
                                              "width": 50}], anns, [{"id": 1}])
    with pytest.warns(RuntimeWarning) as record:
        ds = CocoDetection(tmp_path, path, masks=True, skip_crowd=True)
    summary = str(record[0].message)
    assert ds.skipped == {"invalid_annotation": 5, "degenerate_box": 1, "crowd": 1,
                          "invalid_segmentation": 1}
    for part in ("invalid_annotation: 5, e.g. annotation id 1 (unknown category_id 2), "
                 "annotation id 2 (image_id not an integer: '1'), annotation id 3 (unknown "
                 "image_id 9), ...",
                 "degenerate_box: 1, e.g. annotation id 6 (box x1y1x2y2 [60.0, 1.0, 65.0, "
                 "6.0] has no area inside the image, 50 wide and 40 high)",
                 "crowd: 1, e.g. annotation id 7,",
                 "invalid_segmentation: 1, e.g. annotation id 8 (not polygons or RLE: 'none')"):
        assert part in summary
    _write_json(path, [{"id": 1, "file_name": "a.png"}], anns[3:5], [{"id": 1}])
    named = ("invalid_annotation: 2, e.g. annotation id 4 (bbox not [x, y, width, height] of "
             "finite numbers: [1, 1, 5]), annotations[1] (not a JSON object: 'junk'));")
    with pytest.warns(RuntimeWarning, match=re.escape(named)):
        CocoDetection(tmp_path, path, drop_empty=False)


def test_iscrowd_must_be_0_or_1(tiny) -> None:
    """A string "0" was taken as crowd (bool("0")) and dropped under skip_crowd."""
    root, ann = tiny
    data = json.loads(ann.read_text())
    for a, iscrowd in zip(data["annotations"], ("0", True, 1.0, 2), strict=True):
        a["iscrowd"] = iscrowd
    ann.write_text(json.dumps(data))
    named = ("invalid_annotation: 2, e.g. annotation id 1 (iscrowd not 0 or 1: '0'), "
             "annotation id 4 (iscrowd not 0 or 1: 2));")
    with pytest.warns(RuntimeWarning, match=re.escape(named)):
        ds = CocoDetection(root, ann, drop_empty=False)
    assert ds.skipped == {"invalid_annotation": 2}
    assert ds[0][1]["iscrowd"].tolist() == [1] and ds[1][1]["iscrowd"].tolist() == [1]


def test_duplicate_annotation_ids_are_an_error(tiny) -> None:
    root, ann = tiny
    data = json.loads(ann.read_text())
    data["annotations"][3]["id"] = 2
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"^{re.escape(str(ann))}: duplicate annotation id 2$"):
        CocoDetection(root, ann)


@pytest.mark.parametrize("sizes_in_json", [True, False])
def test_clipping_is_counted_and_areas_follow_the_clipped_box(tmp_path: Path,
                                                              sizes_in_json: bool) -> None:
    """A clipped box's area used to stay the json bbox's w * h (400 for a 10x10). Without
    sizes in the json, the image is sized from its file's header at construction and
    clipped there as well (it was clipped on its first load, in whichever process)."""
    _write_images(tmp_path, {"a.png": (30, 40)})
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b} for i, b in
            enumerate([[30, 20, 20, 20], [45, 35, 5, 5], [1, 1, 5, 5]])]
    anns.append({"id": 4, "image_id": 1, "category_id": 1, "bbox": [-2, 0, 4, 4], "area": 7})
    image = {"id": 1, "file_name": "a.png"}
    if sizes_in_json:
        image.update(height=30, width=40)
    path = _write_json(tmp_path / "a.json", [image], anns, [{"id": 1}])
    named = ("degenerate_box: 1, e.g. annotation id 2 (box x1y1x2y2 [45.0, 35.0, 50.0, 40.0] "
             "has no area inside the image, 40 wide and 30 high)")
    with pytest.warns(RuntimeWarning, match=re.escape(named)):
        ds = CocoDetection(tmp_path, path)
    assert ds.clipped == 2 and ds.skipped == {"degenerate_box": 1}
    _, t = ds[0]
    assert torch.equal(t["boxes"], torch.tensor([[30.0, 20, 40, 30], [1, 1, 6, 6], [0, 0, 2, 4]]))
    assert t["area"].tolist() == [100.0, 25.0, 7.0]  # the json's area where it gives one
    assert ds.clipped == 2 and ds.skipped == {"degenerate_box": 1}


def _sizeless_set(root: Path) -> Path:
    """a.png and b.png (30x40) without sizes in the json: a.png's box is partly outside,
    b.png's one box is wholly outside."""
    _write_images(root, {"a.png": (30, 40), "b.png": (30, 40)})
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 20, 20, 20]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [45, 35, 5, 5]}]
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]
    return _write_json(root / "a.json", images, anns, [{"id": 1}])


@pytest.mark.parametrize("drop_empty", [True, False])
def test_images_without_size_are_fitted_at_construction(tmp_path: Path,
                                                        drop_empty: bool) -> None:
    """They were fitted on their first load: in the DataLoader's worker processes, which
    start afresh each epoch from the main process's unfitted copy, so the main process
    never counted and each epoch warned again."""
    with pytest.warns(RuntimeWarning, match=r"degenerate_box: 1, e\.g\. annotation id 2 .*"
                                            r"40 wide and 30 high"):
        ds = CocoDetection(tmp_path, _sizeless_set(tmp_path), drop_empty=drop_empty)
    skipped = {"degenerate_box": 1, **({"empty_image": 1} if drop_empty else {})}
    assert ds.clipped == 1 and ds.skipped == skipped and len(ds) == 2 - drop_empty
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1,
                                         collate_fn=lambda batch: batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        epochs = [[t["boxes"].tolist() for _, t in batch] for _ in range(2) for batch in loader]
    want = [[[30.0, 20.0, 40.0, 30.0]]] + ([] if drop_empty else [[]])
    assert epochs == [want, want]
    assert ds.clipped == 1 and ds.skipped == skipped


def test_image_without_size_that_cannot_be_read_is_skipped_on_load(tmp_path: Path) -> None:
    path = _sizeless_set(tmp_path)
    (tmp_path / "a.png").write_bytes(b"not a png")
    (tmp_path / "b.png").unlink()
    with pytest.warns(RuntimeWarning, match=r"missing_image: 1, e\.g\. .*b\.png"):
        ds = CocoDetection(tmp_path, path)  # as with sizes in the json
    assert len(ds) == 1 and ds.skipped == {"missing_image": 1}
    with pytest.warns(RuntimeWarning, match=r"cannot decode image .*a\.png"), \
            pytest.raises(RuntimeError, match="none of the 1"):
        ds[0]
    assert ds.skipped == {"missing_image": 1, "corrupt_image": 1}


def test_image_changed_since_its_header_was_read_is_a_size_mismatch(tmp_path: Path) -> None:
    with pytest.warns(RuntimeWarning, match="degenerate_box"):
        ds = CocoDetection(tmp_path, _sizeless_set(tmp_path))
    _write_images(tmp_path, {"a.png": (31, 40)})
    with pytest.warns(RuntimeWarning, match=r"a\.png is 31x40 but its header said 30x40 when "
                                            r"the dataset was built \(the file changed since"), \
            pytest.raises(RuntimeError, match="none of the 1"):
        ds[0]
    assert ds.skipped["size_mismatch"] == 1


@pytest.mark.parametrize("orientation", [1, 3, 5, 6, 7, 8])
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_upright_size_reads_only_the_header(tmp_path: Path, monkeypatch, orientation: int,
                                            suffix: str) -> None:
    from PIL import ImageFile

    path = _save_oriented(tmp_path / f"p{suffix}", np.zeros((30, 40, 3), np.uint8), orientation)
    want = tuple(load_rgb(path).shape[1:])
    _write_images(tmp_path, {f"plain{suffix}": (30, 40)})  # no EXIF: PNG's getexif decodes
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    assert upright_size(path) == want == ((40, 30) if orientation >= 5 else (30, 40))
    assert upright_size(tmp_path / f"plain{suffix}") == (30, 40)
    (tmp_path / "junk.png").write_bytes(b"junk")
    assert upright_size(tmp_path / "junk.png") is None


def test_empty_annotations(tiny, tmp_path: Path) -> None:
    root, ann = tiny
    data = json.loads(ann.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]
    ann.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="empty_image: 1"):
        ds = CocoDetection(root, ann)
    assert ds.image_ids == [1, 3]
    kept = CocoDetection(root, ann, drop_empty=False)
    assert kept.image_ids == [1, 2, 3] and not kept.skipped
    _, t = kept[1]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    # no annotations at all: nothing to train on -> a clear error
    data["annotations"] = []
    ann.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="no usable images"):
        CocoDetection(root, ann)


def test_corrupt_image_is_skipped_on_load(tiny) -> None:
    root, ann = tiny
    (root / "b.png").write_bytes(b"not a png at all")
    ds = CocoDetection(root, ann)  # existence is all construction checks
    with pytest.warns(RuntimeWarning, match=r"skipping sample 1: cannot decode image .*b\.png"):
        _, t = ds[1]
    assert t["image_id"] == 3  # the next good image stands in
    assert ds.skipped == {"corrupt_image": 1}
    epoch = [ds[i][1]["image_id"] for i in range(len(ds))]  # no warning, no recount
    assert epoch == [1, 3, 3] and ds.skipped["corrupt_image"] == 1


def test_truncated_image_and_size_mismatch(tiny) -> None:
    root, ann = tiny
    data = (root / "a.png").read_bytes()
    (root / "a.png").write_bytes(data[: len(data) // 2])
    _write_images(root, {"c.png": (41, 50)})
    ds = CocoDetection(root, ann)
    with pytest.warns(RuntimeWarning) as record:
        ids = [ds[i][1]["image_id"] for i in range(len(ds))]
    assert ids == [2, 2, 2] and len(record) == 2
    assert ds.skipped == {"corrupt_image": 1, "size_mismatch": 1}


def test_every_image_unreadable_raises_not_loops(tiny) -> None:
    root, ann = tiny
    for name in ("a.png", "b.png", "c.png"):
        (root / name).write_bytes(b"junk")
    ds = CocoDetection(root, ann)
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="none of the 3"):
        ds[0]


def test_dataloader_workers_survive_a_corrupt_image(tiny) -> None:
    from deformconv.data import detection_collate

    root, ann = tiny
    (root / "c.png").write_bytes(b"junk")
    ds = CocoDetection(root, ann)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2,
                                         collate_fn=detection_collate)
    ids = [t["image_id"] for _, targets in loader for t in targets]
    assert len(ids) == 3 and 3 not in ids  # the worker substituted a good image


# -- as run data: runs.specs.build_datasets -----------------------------------------------


class _Oracle(torch.nn.Module):
    """A stand-in detector: the outputs it is given, one per image in dataset order."""

    def __init__(self, outputs: list[dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [self.outputs.pop(0) for _ in images]


def _output(boxes: list[list[float]], labels: list[int], score: float) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.full((len(labels),), score), "labels": torch.tensor(labels)}


def _ap50(val, outputs: list[dict]) -> float:
    from deformconv.engine import evaluate

    return evaluate(_Oracle(outputs), val, "detection", batch_size=2)["AP50"]


def _exact(target: dict) -> dict:
    """The detections an ideal detector would output for ``target``."""
    return _output(target["boxes"].tolist(), target["labels"].tolist(), 0.9)


def test_run_data_trains_without_crowd_and_evaluates_with_it(tiny) -> None:
    root, ann = tiny  # image 2 holds only a crowd region of category 10 (label 3)
    with pytest.warns(RuntimeWarning, match=r"crowd: 1, e\.g\. annotation id 3, empty_image: 1"):
        train, val, classes = build_datasets(DataSpec("coco", [str(ann), str(root)]),
                                             "detection")
    assert classes == 3 and train.image_ids == [1, 3] and val.image_ids == [1, 2, 3]
    assert all(train[i][1]["iscrowd"].sum() == 0 for i in range(len(train)))
    _, crowd = val[1]
    assert crowd["iscrowd"].tolist() == [1] and crowd["labels"].tolist() == [3]
    # a confident detection inside the crowd region is neither a hit nor a false positive
    outputs = [_exact(val[0][1]), _output([[10, 10, 30, 30]], [3], 0.99), _exact(val[2][1])]
    assert _ap50(val, outputs) == pytest.approx(1.0)


def test_run_data_evaluates_images_without_objects(tiny) -> None:
    root, ann = tiny
    data = json.loads(ann.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]
    ann.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="empty_image: 1"):
        train, val, _ = build_datasets(DataSpec("coco", [str(ann), str(root)]), "detection")
    assert len(train) == 2 and val.image_ids == [1, 2, 3] and not val.skipped
    _, empty = val[1]
    assert empty["boxes"].shape == (0, 4)
    # image 2's false positive outscores the one hit of label 2: its AP50 halves to 0.5
    outputs = [_exact(val[0][1]), _output([[10, 10, 30, 30]], [2], 0.99), _exact(val[2][1])]
    assert _ap50(val, outputs) == pytest.approx(0.75)


@pytest.mark.filterwarnings("ignore:.*dropped while indexing:RuntimeWarning")
@pytest.mark.parametrize("need_train", [True, False])
def test_run_data_validation_takes_the_training_categories(tiny, tmp_path: Path,
                                                           need_train: bool) -> None:
    root, ann = tiny
    val_ann = _write_json(tmp_path / "val.json", [{"id": 1, "file_name": "a.png"}],
                          [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 6, 10, 12]}],
                          [{"id": 7, "name": "seven"}])
    spec = DataSpec("coco", [str(ann), str(root)], val_paths=[str(val_ann), str(root)])
    train, val, classes = build_datasets(spec, "detection", need_train=need_train)
    assert (train is not None) == need_train
    assert classes == 3 and val.class_names == ("three", "seven", "ten")
    assert val[0][1]["labels"].tolist() == [2]
    # a category the training file lacks is an error, not a label of another class
    _write_json(val_ann, [{"id": 1, "file_name": "a.png"}],
                [{"id": 1, "image_id": 1, "category_id": 8, "bbox": [5, 6, 10, 12]}],
                [{"id": 3}, {"id": 8}])
    unknown = rf"{re.escape(str(val_ann))}: .* ids \[8\] .* of {re.escape(str(ann))} "
    with pytest.raises(ValueError, match=unknown):
        build_datasets(spec, "detection", need_train=need_train)


@pytest.mark.filterwarnings("ignore:.*dropped while indexing:RuntimeWarning")
def test_recorded_categories_label_evaluation_data_without_the_training_file(
        tiny, tmp_path: Path) -> None:
    """A checkpoint's spec keeps the training file's table: evaluation, on the validation
    file or on another file given as the data, labels as training did, with the training
    file gone (another file used to be labelled by its own table, cat 7 -> label 1)."""
    root, ann = tiny
    val_ann = _write_json(tmp_path / "val.json", [{"id": 1, "file_name": "a.png"}],
                          [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 6, 10, 12]}],
                          [{"id": 7, "name": "seven"}])
    spec = DataSpec("coco", [str(ann), str(root)], val_paths=[str(val_ann), str(root)])
    train, _, _ = build_datasets(spec, "detection")
    recorded = with_categories(spec, train)
    assert recorded.categories == [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"},
                                   {"id": 10, "name": "ten"}]
    ann.unlink()
    for paths, val_paths in (([str(ann), str(root)], [str(val_ann), str(root)]),
                             ([str(val_ann), str(root)], [])):  # eval --data val.json
        eval_spec = replace(recorded, paths=paths, val_paths=val_paths)
        _, val, classes = build_datasets(eval_spec, "detection", need_train=False)
        assert classes == 3 and val[0][1]["labels"].tolist() == [2]


# -- masks ---------------------------------------------------------------------------------


def _one_mask_set(root: Path, segmentation) -> Path:
    """A 30x40 image with one crowd annotation (id 5) of ``segmentation``."""
    _write_images(root, {"a.png": (30, 40)})
    ann = {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 1,
           "segmentation": segmentation}
    return _write_json(root / "ann.json", [{"id": 1, "file_name": "a.png", "height": 30,
                                            "width": 40}], [ann], [{"id": 1}])


def test_rle_masks_decode_to_zeros_and_ones(tmp_path: Path) -> None:
    counts = [31, 3, 27, 3, 1136]  # column major: rows 1..3 of columns 1 and 2
    for segmentation in ({"size": [30, 40], "counts": counts},
                         {"size": [30, 40], "counts": "o03k00eR1"}):
        path = _one_mask_set(tmp_path, segmentation)
        mask = CocoDetection(tmp_path, path, masks=True)[0][1]["masks"][0]
        assert mask.sum() == 6 and mask[1:4, 1:3].all(), segmentation


@pytest.mark.parametrize(
    ("segmentation", "why"),
    [
        ({"size": [30, 40], "counts": [1, 2, 3]}, "RLE counts sum to 6, not height * width = 1200"),
        ({"size": [30, 40], "counts": [1300, -100]}, "RLE counts must be integers >= 0"),
        ({"size": [30, 40], "counts": "0"}, "RLE counts sum to 0, not height * width = 1200"),
        ({"size": [30, 40], "counts": "o03k00"}, "RLE counts sum to 64, not"),
        ({"size": [30, 40], "counts": "Y1\u00e9"}, "RLE counts string has the character"),
        ({"size": [30, 40], "counts": "Y1b"}, "RLE counts string ends inside a count"),
        ({"size": [30, 40], "counts": "dX1"}, "RLE counts string stores 1300, beyond height * "
                                              "width = 1200"),
        ({"size": [30, 40], "counts": "0Xo00Xo0"}, "RLE counts string gives a run of 2000, "
                                                   "more than height * width = 1200"),
        ({"size": [30, 40], "counts": "P" * 12 + "0"}, "RLE counts string has a count of "
                                                        "more than 12 characters"),
        ({"size": [40, 30], "counts": [1200]}, "RLE size [40, 30] is not the image's [30, 40]"),
        ({"size": [12000, 12000], "counts": "0"}, "RLE size [12000, 12000] is not the image's"),
        ({"size": [30, 40], "counts": 7}, "RLE counts must be a list or a string, got int"),
    ],
)
def test_malformed_rle_is_skipped_before_decoding(tmp_path: Path, monkeypatch, segmentation,
                                                  why: str) -> None:
    """pycocotools decoded short counts to uninitialised memory (mask values like 31, 45)
    and allocated an RLE's claimed size, however large, before the size was checked."""
    from pycocotools import mask as mask_utils

    decoded = []
    decode = mask_utils.decode
    monkeypatch.setattr(mask_utils, "decode", lambda rle: decoded.append(rle) or decode(rle))
    path = _one_mask_set(tmp_path, segmentation)
    ds = CocoDetection(tmp_path, path, masks=True)
    message = r"skipping sample 0: .*a\.png: cannot decode the mask of annotation id 5: "
    message += re.escape(why)
    with pytest.warns(RuntimeWarning, match=message), pytest.raises(RuntimeError, match="none"):
        ds[0]
    assert ds.skipped == {"corrupt_annotation": 1} and not decoded


def test_rles_are_checked_at_construction_not_on_every_load(tmp_path: Path,
                                                            monkeypatch) -> None:
    """The check decoded each RLE counts string again on every load of every epoch."""
    from deformconv.data import coco

    path = _one_mask_set(tmp_path, {"size": [30, 40], "counts": "o03k00eR1"})
    ds = CocoDetection(tmp_path, path, masks=True)
    monkeypatch.setattr(coco, "_check_rle", lambda *args: pytest.fail("checked on load"))
    assert ds[0][1]["masks"].sum() == 6

def _reference_rle_counts(text: str) -> list[int] | None:
    """A plain loop over the characters (the decoder's first version); None if malformed."""
    counts: list[int] = []
    value, shift = 0, 0
    for char in text:
        group = ord(char) - 48
        if not 0 <= group < 64:
            return None
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:
            value -= 1 << shift
        counts.append(value + (counts[-2] if len(counts) > 2 else 0))
        value, shift = 0, 0
    return None if shift or min(counts, default=0) < 0 else counts


def test_rle_counts_strings_decode_as_pycocotools_encodes_them() -> None:
    """The vectorised decoder against pycocotools.mask.encode and a plain loop: random
    masks, then random strings (the verdict: decoded to runs covering the image, or not)."""
    from pycocotools import mask as mask_utils

    from deformconv.data.coco import _rle_string_counts

    def runs(text: str, area: int) -> list[int] | None:
        try:
            counts = _rle_string_counts(text, area)
        except ValueError:
            return None
        return counts.tolist() if counts.sum() == area else None

    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        text = mask_utils.encode(np.asfortranarray(mask))["counts"].decode()
        flat = mask.ravel(order="F")
        edges = np.flatnonzero(np.diff(flat)) + 1
        want = [0] * int(flat[0]) + np.diff(np.r_[0, edges, flat.size]).tolist()
        assert runs(text, h * w) == want, text
    alphabet = [chr(c) for c in range(48, 112)] + ["/", "p", "\u00e9"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet, int(rng.integers(0, 10))))
        want = _reference_rle_counts(text)
        area = sum(want) if want and sum(want) > 0 else int(rng.integers(1, 100))
        assert runs(text, area) == (want if want and sum(want) == area else None), text


def test_image_record_keep_filters_every_per_annotation_list():
    from deformconv.data.coco import _Image

    rec = _Image(image_id=1, path=Path("a.jpg"), height=4, width=4,
                 boxes=[[0, 0, 1, 1], [1, 1, 2, 2]], labels=[1, 2], areas=[1.0, 1.0],
                 crowd=[0, 0], segmentations=[[], []], names=["id 1", "id 2"],
                 mask_problems=[None, "bad counts"])
    rec.keep([False, True])
    assert rec.names == ["id 2"] and rec.mask_problems == ["bad counts"]
    unchecked = _Image(image_id=2, path=Path("b.jpg"), height=4, width=4, names=["id 3"],
                       boxes=[[0, 0, 1, 1]], labels=[1], areas=[1.0], crowd=[0],
                       segmentations=[[]])
    unchecked.keep([True])
    assert unchecked.mask_problems == []


def test_without_pil_or_pycocotools_the_error_names_the_extra(run_without, tiny) -> None:
    root, ann = tiny
    run_without(["PIL", "pycocotools"], f"""
        from deformconv.data import CocoDetection
        extra = "part of the vision extra: pip install 'deformconv[vision]'"
        missing_extra(lambda: CocoDetection({str(root)!r}, {str(ann)!r}, masks=True),
                      f"deformconv.data.CocoDetection(masks=True) needs pycocotools, {{extra}}")
        dataset = CocoDetection({str(root)!r}, {str(ann)!r})
        missing_extra(lambda: dataset[0], f"reading images in deformconv.data needs PIL, {{extra}}")
    """)
