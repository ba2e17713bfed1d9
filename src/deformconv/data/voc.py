"""VOC-style semantic segmentation folders.

Layout (``root`` = e.g. ``VOCdevkit/VOC2012``)::

    JPEGImages/<id>.jpg            (or .jpeg / .png)
    SegmentationClass/<id>.png     class ids as palette (P) or grayscale (L) PNG, 255 = ignore
    ImageSets/Segmentation/<split>.txt   one <id> per line

Images and masks are read as viewers show them: a file's EXIF orientation tag is applied.
A mask may also be grey RGB, or L / RGB with an alpha band that is fully opaque; colour
masks and masks with transparent pixels are skipped on load as "bad_mask".

Missing root or split file, a split file that is not UTF-8 text (a byte-order mark is
allowed), or an empty split -> error at construction. An id with more than one image
file (``a.jpg`` and ``a.png``) -> error at construction. A missing image or
mask -> dropped at construction, counted in ``skipped``. An unreadable image or mask, a mask
whose size differs from the image, or labels above ``num_classes`` (other than 255) ->
warning on load, counted, and the next sample is returned instead.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._extras import require
from ._common import (
    IGNORE_INDEX,
    SampleError,
    SkippingDataset,
    Transform,
    load_rgb,
    orientation_hint,
    read_utf8,
    require_path,
)

__all__ = ["VOCSegmentation"]
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def load_mask(path: Path) -> np.ndarray:
    """Read a class-id PNG to (H, W) int64. A grey mask may come as RGB with equal bands;
    colour masks are refused. An alpha band (LA, RGBA) must be fully opaque: what a
    transparent pixel's class is cannot be told. An EXIF orientation tag is applied, as to
    the images."""
    Image = require("PIL.Image", __name__)
    ImageOps = require("PIL.ImageOps", __name__)

    try:
        with Image.open(path) as img:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            mode = img.mode
            array = np.asarray(img)
    except FileNotFoundError as err:
        raise SampleError("missing_mask", f"mask file not found: {path}") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise SampleError("corrupt_mask", f"cannot decode mask {path}: {err}") from err
    if array.ndim == 3 and mode.endswith("A"):  # LA, RGBA, PA: the last band is alpha
        if (array[..., -1] != 255).any():
            raise SampleError(
                "bad_mask",
                f"{path} has transparent pixels (a {mode} mask); save class ids without "
                "alpha, as a palette (P) or grayscale (L) PNG",
            )
        array = array[..., :-1]
    if array.ndim == 3:
        if not (array[..., :3] == array[..., :1]).all():
            raise SampleError(
                "bad_mask",
                f"{path} is a colour ({mode}) mask; save class ids as a palette (P) or "
                "grayscale (L) PNG",
            )
        array = array[..., 0]
    return array.astype(np.int64)


def _image_files(folder: Path, ids: list[str]) -> dict[str, list[Path]]:
    """The files ``folder/<id><ext>`` for each id, ``ext`` one of ``_IMAGE_EXTS``.

    Names are matched as the folder lists them, not by asking for each one: on a
    case-insensitive disk ``a.JPG`` would also be found as ``a.jpg``, one file twice.
    """
    listings: dict[Path, set[str]] = {}
    found: dict[str, list[Path]] = {}
    for name in ids:
        stem = folder / name  # an id may name a file in a subfolder
        if stem.parent not in listings:
            try:
                listings[stem.parent] = {e.name for e in os.scandir(stem.parent) if e.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                listings[stem.parent] = set()
        found[name] = [stem.parent / f"{stem.name}{ext}" for ext in _IMAGE_EXTS
                       if f"{stem.name}{ext}" in listings[stem.parent]]
    return found


def _voc_folders_below(root: Path) -> list[str]:
    """VOC folders one or two levels below ``root``: a root given as ``VOCdevkit``, or as
    the folder the archive was unpacked into."""
    return sorted(str(split_dir.parent.parent)
                  for pattern in ("*/ImageSets/Segmentation", "*/*/ImageSets/Segmentation")
                  for split_dir in root.glob(pattern))


class VOCSegmentation(SkippingDataset):
    """``(image (3, H, W) float32, mask (H, W) int64)``: 0 background, 1..C, 255 ignore.

    Args:
        root: the folder holding ``JPEGImages``, ``SegmentationClass`` and ``ImageSets``.
        split: name of the ``ImageSets/Segmentation/<split>.txt`` list.
        transforms: ``(image, mask) -> (image, mask)``, e.g. from ``data.transforms``.
        num_classes: C; when given, masks with other values than 0..C and 255 are skipped.
        image_dir: folder under ``root`` holding the images (``<id>.jpg``, ``.jpeg`` or
            ``.png``).
        mask_dir: folder under ``root`` holding the masks (``<id>.png`` of class ids, as a
            palette (P) or grayscale image).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transform | None = None,
        *,
        num_classes: int | None = None,
        image_dir: str = "JPEGImages",
        mask_dir: str = "SegmentationClass",
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.num_classes = num_classes
        if num_classes is not None and not 1 <= num_classes < IGNORE_INDEX:
            raise ValueError(f"num_classes must be in 1..{IGNORE_INDEX - 1}, got {num_classes}")
        require_path(self.root, "VOC root folder", folder=True)
        split_dir = self.root / "ImageSets" / "Segmentation"
        split_file = split_dir / f"{split}.txt"
        if split_file.is_dir():
            raise IsADirectoryError(f"VOC split file is a folder, not a file: {split_file}")
        if not split_file.is_file():
            found = sorted(p.stem for p in split_dir.glob("*.txt") if p.is_file())
            below = [] if split_dir.is_dir() else _voc_folders_below(self.root)
            hint = f"; the VOC folders below {self.root} are {below}: pass one" if below else ""
            raise FileNotFoundError(
                f"VOC split file not found: {split_file} (splits found: {found}){hint}"
            )
        ids = [line.strip() for line in read_utf8(split_file).splitlines()]
        ids = [i for i in ids if i]
        if not ids:
            raise ValueError(f"{split_file}: the split lists no images")
        repeated = sorted(i for i, count in Counter(ids).items() if count > 1)
        if repeated:
            raise ValueError(f"{split_file}: lists {repeated[:5]} more than once; each image "
                             "would be trained on and scored more than once")

        self._samples: list[tuple[str, Path, Path]] = []
        images = _image_files(self.root / image_dir, ids)
        ambiguous = {name: files for name, files in images.items() if len(files) > 1}
        if ambiguous:
            listed = "; ".join(f"{name}: {[f.name for f in files]}"
                               for name, files in list(ambiguous.items())[:5])
            raise ValueError(f"{self.root / image_dir}: {len(ambiguous)} id(s) have more than "
                             f"one image file ({listed}); which is meant cannot be told: "
                             "remove the others")
        for name in ids:
            image = images[name][0] if images[name] else None
            mask = self.root / mask_dir / f"{name}.png"
            if image is None:
                self._skip("missing_image", f"{self.root / image_dir / name}.(jpg|jpeg|png)")
            elif not mask.is_file():
                self._skip("missing_mask", mask)
            else:
                self._samples.append((name, image, mask))
        self._warn_skipped(split_file, len(ids))
        if not self._samples:
            raise ValueError(f"{split_file}: none of the {len(ids)} listed images could be found "
                             f"(skipped: {dict(self.skipped)})")

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def ids(self) -> list[str]:
        return [name for name, _, _ in self._samples]

    def _load(self, index: int) -> tuple[Tensor, Tensor]:
        _, image_path, mask_path = self._samples[index]
        image = load_rgb(image_path)
        mask = load_mask(mask_path)
        size = tuple(image.shape[-2:])
        if mask.shape != size:
            hint = orientation_hint(image_path, size, mask.shape, "the mask's pixels")
            raise SampleError(
                "size_mismatch", f"{mask_path} is {mask.shape} but {image_path} is {size}{hint}"
            )
        if self.num_classes is not None:
            bad = np.unique(mask[(mask > self.num_classes) & (mask != IGNORE_INDEX)])
            if len(bad):
                raise SampleError(
                    "label_out_of_range",
                    f"{mask_path} has labels {bad[:8].tolist()} outside 0..{self.num_classes} "
                    f"and {IGNORE_INDEX}",
                )
        target = torch.from_numpy(mask)
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (f"VOCSegmentation(root={str(self.root)!r}, split={self.split!r}, "
                f"images={len(self)}, skipped={dict(self.skipped)})")
