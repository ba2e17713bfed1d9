"""VOC segmentation folders written by the tests with PIL, including broken ones."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deformconv.data import SyntheticSegmentation, VOCSegmentation, export_voc
from deformconv.data.export import _palette


def _write_sample(root: Path, name: str, mask: np.ndarray, *, mode: str = "P",
                  ext: str = ".jpg") -> np.ndarray:
    h, w = mask.shape
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(len(name)).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "JPEGImages" / f"{name}{ext}")
    png = Image.fromarray(mask.astype(np.uint8), mode="L")
    if mode == "P":
        png = png.convert("P")
        png.putpalette(_palette())
    png.save(root / "SegmentationClass" / f"{name}.png")
    return rgb


def _write_split(root: Path, split: str, names: list[str]) -> None:
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")


def _mask(h: int = 12, w: int = 16, label: int = 2) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.int64)
    mask[2:8, 3:10] = label
    mask[2:8, 3] = 255  # ignore at the border
    return mask


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    _write_sample(tmp_path, "img1", _mask(label=2), mode="P")
    _write_sample(tmp_path, "img2", _mask(label=5), mode="L", ext=".png")
    _write_sample(tmp_path, "img3", _mask(label=1), mode="P")
    _write_split(tmp_path, "train", ["img1", "img2"])
    _write_split(tmp_path, "val", ["img3"])
    return tmp_path


def test_loads_palette_and_grayscale_masks(voc: Path) -> None:
    train = VOCSegmentation(voc, "train", num_classes=5)
    assert len(train) == 2 and train.ids == ["img1", "img2"] and not train.skipped
    for i, label in enumerate((2, 5)):
        image, mask = train[i]
        assert image.shape == (3, 12, 16) and image.dtype == torch.float32
        assert mask.dtype == torch.int64 and torch.equal(mask, torch.from_numpy(_mask(label=label)))
    # png images are lossless: exact pixels
    raw = np.asarray(Image.open(voc / "JPEGImages" / "img2.png"), dtype=np.float32) / 255
    assert torch.allclose(train[1][0], torch.from_numpy(raw).permute(2, 0, 1))
    assert len(VOCSegmentation(voc, "val")) == 1


def test_export_voc_round_trip(tmp_path: Path) -> None:
    src = SyntheticSegmentation(length=3, seed=6, image_size=(40, 32), ignore_border=1)
    split = export_voc(src, tmp_path, "val")
    assert split.read_text().split() == ["val_000000", "val_000001", "val_000002"]
    ds = VOCSegmentation(tmp_path, "val", num_classes=src.num_classes)
    for i in range(3):
        (image, mask), (ref_image, ref_mask) = ds[i], src[i]
        assert torch.equal(mask, ref_mask)
        assert (image - ref_image).abs().max() <= 0.5 / 255 + 1e-6
    assert Image.open(tmp_path / "SegmentationClass" / "val_000000.png").mode == "P"


def test_structural_errors(voc: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"VOC root folder not found: .*nowhere"):
        VOCSegmentation(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"split file not found: .*test\.txt .*'train'"):
        VOCSegmentation(voc, "test")
    unpacked = tmp_path / "download"  # where VOCdevkit/VOC2012 was unpacked
    _write_split(unpacked / "VOCdevkit" / "VOC2012", "train", ["img1"])
    with pytest.raises(FileNotFoundError,
                       match=r"VOC folders below .*download are \['.*VOCdevkit/VOC2012'\]: pass"):
        VOCSegmentation(unpacked)
    (voc / "ImageSets" / "Segmentation" / "dir.txt").mkdir()  # was "not found", listed
    with pytest.raises(IsADirectoryError, match=r"split file is a folder, not a file: .*dir\.txt$"):
        VOCSegmentation(voc, "dir")
    with pytest.raises(FileNotFoundError, match=r"\(splits found: \['train', 'val'\]\)$"):
        VOCSegmentation(voc, "test")
    _write_split(voc, "empty", [])
    with pytest.raises(ValueError, match=r"empty\.txt: the split lists no images"):
        VOCSegmentation(voc, "empty")
    with pytest.raises(ValueError, match="num_classes must be in"):
        VOCSegmentation(voc, num_classes=300)


def test_missing_files_are_dropped_and_counted(voc: Path) -> None:
    _write_split(voc, "train", ["img1", "ghost", "img2"])
    (voc / "SegmentationClass" / "img2.png").unlink()
    # the warning names what is missing
    with pytest.warns(RuntimeWarning, match=r"missing_image: 1, e\.g\. .*JPEGImages/ghost\."
                                            r"\(jpg\|jpeg\|png\), missing_mask: 1, e\.g\. "
                                            r".*SegmentationClass/img2\.png\); see"):
        ds = VOCSegmentation(voc, "train")
    assert ds.ids == ["img1"] and ds.skipped == {"missing_image": 1, "missing_mask": 1}
    _write_split(voc, "train", ["ghost"])
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="none of the 1 listed"):
        VOCSegmentation(voc, "train")


def test_split_files_as_editors_and_cameras_write_them(voc: Path) -> None:
    """A byte-order mark used to become part of the first id (that image was dropped as
    missing), an upper-case extension was not found, and an id listed twice was loaded
    and scored twice."""
    (voc / "JPEGImages" / "img1.jpg").rename(voc / "JPEGImages" / "img1.JPG")
    split = voc / "ImageSets" / "Segmentation" / "train.txt"
    split.write_bytes(b"\xef\xbb\xbfimg1\r\nimg2\r\n")
    assert VOCSegmentation(voc, "train").ids == ["img1", "img2"]
    _write_split(voc, "train", ["img1", "img2", "img1"])
    with pytest.raises(ValueError, match=r"train\.txt: lists \['img1'\] more than once"):
        VOCSegmentation(voc, "train")


def test_split_file_that_is_not_utf8_is_named(voc: Path) -> None:
    """The error was only "'utf-8' codec can't decode byte 0xe9 ...", naming no file."""
    split = voc / "ImageSets" / "Segmentation" / "train.txt"
    split.write_bytes("img1\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(split))}: not a UTF-8 text file"):
        VOCSegmentation(voc, "train")


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        ("corrupt_image", "corrupt_image"),
        ("corrupt_mask", "corrupt_mask"),
        ("size_mismatch", "size_mismatch"),
        ("colour_mask", "bad_mask"),
        ("label_out_of_range", "label_out_of_range"),
    ],
)
def test_bad_samples_are_skipped_on_load(voc: Path, breakage: str, reason: str) -> None:
    first = voc / "JPEGImages" / "img1.jpg"
    mask = voc / "SegmentationClass" / "img1.png"
    if breakage == "corrupt_image":
        first.write_bytes(first.read_bytes()[:50])
    elif breakage == "corrupt_mask":
        mask.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    elif breakage == "size_mismatch":
        Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(mask)
    elif breakage == "colour_mask":
        colour = np.zeros((12, 16, 3), dtype=np.uint8)
        colour[..., 0] = 128
        Image.fromarray(colour).save(mask)
    else:
        _write_sample(voc, "img1", _mask(label=9))
    ds = VOCSegmentation(voc, "train", num_classes=5)
    with pytest.warns(RuntimeWarning, match="skipping sample 0"):
        _, m = ds[0]
    assert torch.equal(m, torch.from_numpy(_mask(label=5)))  # img2 stood in for img1
    assert ds.skipped == {reason: 1}


@pytest.mark.parametrize("mode", ["RGB", "LA", "RGBA"])
def test_grey_mask_with_more_bands_is_accepted(voc: Path, mode: str) -> None:
    """An opaque grey+alpha (LA) mask was refused as a "colour (LA) mask"."""
    grey = Image.fromarray(_mask(label=3).astype(np.uint8), mode="L")
    grey.convert(mode).save(voc / "SegmentationClass" / "img1.png")
    _, m = VOCSegmentation(voc, "train")[0]
    assert torch.equal(m, torch.from_numpy(_mask(label=3)))


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_mask_with_transparent_pixels_is_refused(voc: Path, mode: str) -> None:
    grey = Image.fromarray(_mask(label=3).astype(np.uint8), mode="L").convert(mode)
    alpha = np.full(_mask().shape, 255, np.uint8)
    alpha[0, 0] = 0
    grey.putalpha(Image.fromarray(alpha))
    grey.save(voc / "SegmentationClass" / "img1.png")
    ds = VOCSegmentation(voc, "train")
    with pytest.warns(RuntimeWarning, match=rf"img1\.png has transparent pixels \(a {mode} mask\)"):
        ds[0]
    assert ds.skipped == {"bad_mask": 1}


def _rotate_stored(path: Path, orientation: int) -> None:
    """Re-save image ``path`` with its pixels turned a quarter clockwise and the EXIF
    orientation ``orientation`` (6 shows the original again)."""
    with Image.open(path) as img:
        turned = img.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = orientation
    turned.save(path, exif=exif)


def test_exif_orientation_of_images_and_masks_is_applied(voc: Path) -> None:
    image = voc / "JPEGImages" / "img2.png"  # png: exact pixels
    expected = VOCSegmentation(voc, "train")[1]
    _rotate_stored(image, 6)
    _rotate_stored(voc / "SegmentationClass" / "img2.png", 6)
    got = VOCSegmentation(voc, "train")[1]
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_mask_of_the_stored_pixels_is_explained(voc: Path) -> None:
    _rotate_stored(voc / "JPEGImages" / "img2.png", 8)  # stored 16 high, shown 12 high
    Image.fromarray(np.zeros((16, 12), np.uint8)).save(voc / "SegmentationClass" / "img2.png")
    ds = VOCSegmentation(voc, "train")
    message = (r"skipping sample 1: .*img2\.png is \(16, 12\) but .*img2\.png is \(12, 16\); "
               r"the mask's pixels appear to be in the file's stored pixel orientation \(16 high, "
               r"12 wide\), ignoring its EXIF orientation tag \(8\)")
    with pytest.warns(RuntimeWarning, match=message):
        ds.load_or_skip(1)


def test_an_id_with_two_image_files_is_refused(voc: Path) -> None:
    """img1.jpg was taken and img1.png ignored: which one the mask is for cannot be told."""
    _write_sample(voc, "img1", _mask(), ext=".png")
    with pytest.raises(ValueError, match=r"JPEGImages: 1 id\(s\) have more than one image "
                                         r"file \(img1: \['img1\.jpg', 'img1\.png'\]\)"):
        VOCSegmentation(voc, "train")
