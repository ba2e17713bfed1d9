"""Write datasets to disk in standard layouts: COCO (detection) and VOC (segmentation).

Useful to freeze a synthetic set, to feed other tools, and for tests of the loaders.
An export writes its files into a temporary folder inside the target first and moves them
into place only once all are written, so a failed export (a full disk, a sample that
raises) leaves the folder as it was. One export at a time per folder (another, from any
process or thread, waits for it): it holds the folder's lock, under which it removes the
temporary folders of exports killed mid-write.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._extras import require
from .._folder_lock import TEMP_NAME_PART, folder_lock, remove_stale
from .._paths import naming_the_file
from ._common import NoReadableSamplesError, readable_sample, sample_index
from .voc import _IMAGE_EXTS

__all__ = ["export_coco", "export_voc", "save_image"]

# What export_*'s ``indices`` takes: see _sample_indices.
Indices = Iterable[int] | Tensor | np.ndarray

_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}
_STAGE_PREFIX = ".export-"
_STAGE_NAME = re.compile(re.escape(_STAGE_PREFIX) + TEMP_NAME_PART)  # what mkdtemp gives
# Not the training runs' .lock: a dataset folder may hold a file of that name.
_LOCK_FILE = ".export.lock"


def save_image(image: Tensor, path: Path) -> None:
    """Write a (3, H, W) float image in [0, 1] as 8-bit RGB (format from the suffix)."""
    Image = require("PIL.Image", __name__)

    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu()
    options = {} if path.suffix.lower() == ".png" else {"quality": 95}
    with naming_the_file(path):
        Image.fromarray(array.numpy()).save(path, **options)


def _names(dataset: Dataset, class_names: Sequence[str] | None) -> list[str]:
    names = class_names if class_names is not None else getattr(dataset, "class_names", None)
    if names is None:
        raise ValueError(
            f"{type(dataset).__name__} has no class_names; pass class_names=[...] for labels 1..C"
        )
    return list(names)


def _sample_indices(dataset: Dataset, indices: Indices | None) -> list[int]:
    """The samples that ``indices`` (default: all) names, as positions in ``[0, len)``.

    Takes ints, NumPy and torch integer scalars, and 1-D integer tensors and arrays; a
    negative index counts from the end, as in a Sequence (``-1`` is the last sample).
    Refused before anything is written: bools and floats (TypeError), an index out of
    range (IndexError), a sample named twice (``-1`` and ``len - 1`` too) or none at all
    (ValueError): an empty export would replace an earlier one with one the loaders refuse.
    A dataset without a ``len()`` takes non-negative indices, unchecked for range.
    """
    length = _length(dataset)
    if indices is None:
        if length is None:
            raise TypeError(f"the dataset {dataset!r} has no len(): pass indices=[...] to "
                            "export")
        if not length:
            raise ValueError(f"the dataset {dataset!r} is empty: nothing to export")
        return list(range(length))
    if isinstance(indices, (Tensor, np.ndarray)):
        if indices.ndim != 1 or not _integer_typed(indices):
            raise TypeError("indices must be a 1-D integer tensor or array, got "
                            f"{indices.ndim}-D {indices.dtype}")
        items: list[Any] = indices.tolist()
    else:
        items = list(indices)
    if not items:
        raise ValueError("indices is empty: give at least one sample to export")
    given: dict[int, Any] = {}  # position -> how indices named it first
    for item in items:
        if isinstance(item, (bool, np.bool_)) or (
                isinstance(item, (Tensor, np.ndarray))
                and (item.ndim != 0 or not _integer_typed(item))):
            raise TypeError(f"indices must hold integers, got {type(item).__name__} {item!r}")
        try:
            position = _position(item, length)
        except (TypeError, IndexError) as err:
            raise type(err)(f"indices: {err}") from None
        if position in given:
            first = int(given[position])
            alias = f" (as {first} and {int(item)})" if first != int(item) else ""
            raise ValueError(f"indices holds sample {position} twice{alias}; each may be "
                             "exported once")
        given[position] = item
    return list(given)


def _integer_typed(array: Tensor | np.ndarray) -> bool:
    """Whether a tensor or array holds integers (not bools, floats or complex numbers)."""
    if isinstance(array, Tensor):
        return not (array.dtype.is_floating_point or array.dtype.is_complex
                    or array.dtype == torch.bool)
    return array.dtype.kind in "iu"


def _check_split(split: str) -> None:
    """Refuse a ``split`` that is no plain file-name part: it names the split file and
    begins each sample's file names, which must stay inside the export's folders."""
    if (not isinstance(split, str) or split in ("", ".", "..") or "/" in split
            or os.sep in split or (os.altsep and os.altsep in split) or "\0" in split):
        raise ValueError("split must be a plain file-name part (non-empty, no path "
                         f"separator, not '.' or '..'), got {split!r}")


def _length(dataset: Dataset) -> int | None:
    """``len(dataset)``, None for a dataset without one (a map-style ``Dataset`` need not
    have it)."""
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


def _position(index: object, length: int | None) -> int:
    """``index`` as a position of a dataset of ``length`` samples (``sample_index``); of a
    dataset without a length, as given: a non-negative integer, its range unchecked."""
    if length is not None:
        return sample_index(index, length)
    position = sample_index(index, sys.maxsize)  # the type checks, no range
    if position != index:
        raise IndexError(f"index {index} counts from the end, which a dataset without a "
                         "len() has not")
    return position


def _readable_samples(dataset: Dataset, indices: list[int],
                      writer: str) -> Iterator[tuple[int, Any]]:
    """``(i, dataset[i])`` for each readable sample ``i`` of ``indices`` (from
    :func:`_sample_indices`).

    Samples the dataset cannot read are left out, with one warning from ``writer`` naming
    them (``dataset[i]`` would give the next readable sample instead, written twice);
    :class:`NoReadableSamplesError` when none is readable.
    """
    left_out: list[int] = []
    written = 0
    for i in indices:
        sample = readable_sample(dataset, i)
        if sample is None:
            left_out.append(i)
            continue
        written += 1
        yield i, sample
    if left_out and not written:
        raise NoReadableSamplesError.of(dataset)
    if left_out:
        more = ", ..." if len(left_out) > 10 else ""
        warnings.warn(
            f"{writer}: left out {len(left_out)} unreadable sample(s) of {dataset!r}: "
            f"{', '.join(map(str, left_out[:10]))}{more}",
            RuntimeWarning,
            stacklevel=4,  # here, export_*'s writer, export_*, its caller
        )


@contextlib.contextmanager
def _staged(folder: Path) -> Iterator[Path]:
    """A new temporary folder inside ``folder`` (created) for an export's files, removed on
    the way out with whatever is left in it; ``folder``'s lock is held meanwhile.

    Writing there and renaming each file into place at the end (:func:`_move_in`) keeps a
    failure while writing from touching an earlier export in ``folder``; the renames need no
    disk space. Inside ``folder``, not beside it: same file system, and the parent may be
    read-only. An export killed (SIGKILL) leaves its temporary folder; the next one removes
    it, under the lock, so that no live export's is removed.
    """
    # waits for an export into the folder from another process or thread: exports of
    # other splits accumulate
    with folder_lock(folder, None, lock_file=_LOCK_FILE, keep_lock_file=False):
        remove_stale(folder, _STAGE_NAME)
        stage = Path(tempfile.mkdtemp(prefix=_STAGE_PREFIX, dir=folder))
        try:
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _move_in(stage: Path, folder: Path, names: Iterable[str]) -> None:
    """Rename each ``stage/<name>`` to ``folder/<name>`` (``name`` relative, with ``/``)."""
    for name in names:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / name, target)


def _rle(mask: Tensor) -> dict[str, Any]:
    mask_utils = require("pycocotools.mask", __name__)

    rle = mask_utils.encode(np.asfortranarray(mask.cpu().numpy().astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def export_coco(
    dataset: Dataset,
    folder: str | Path,
    *,
    indices: Indices | None = None,
    image_format: str = "png",
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write a detection dataset as ``folder/images/*.png`` + ``folder/annotations.json``.

    ``dataset[i]`` must give ``(image (3, H, W), target)`` with ``boxes`` and ``labels``
    (1..C) and optionally ``image_id``, ``area``, ``iscrowd``, ``masks`` (stored as RLE).
    Labels become category ids as they are, so :class:`CocoDetection` reads the same labels
    back. ``indices`` picks the samples (default: all): ints or integer scalars, or a 1-D
    integer tensor or array; negative ones count from the end; each sample once, at least
    one. Samples the dataset cannot read (an unreadable image of a :class:`CocoDetection`)
    are left out, with a warning naming them. Returns the annotation file's path.

    Exporting into a folder that holds an earlier export replaces its ``annotations.json``
    and the images of the same ids; other files stay. Everything is written to a temporary
    folder inside ``folder`` first: a failure while writing (a full disk, a sample that
    raises) leaves ``folder`` as it was. The old ``annotations.json`` is then removed before
    the images are renamed into place, so a failure during the renames leaves a folder that
    refuses to load (no annotation file), never new images under old annotations. One
    export at a time per folder (another waits for it); it removes the temporary folders
    that exports killed mid-write left there.
    """
    ext = image_format.lower().lstrip(".")
    if ext not in _FORMATS:
        raise ValueError(f"image_format must be one of {sorted(_FORMATS)}, got {image_format!r}")
    names = _names(dataset, class_names)
    samples = _sample_indices(dataset, indices)
    folder = Path(folder)
    with _staged(folder) as stage:
        (stage / "images").mkdir()
        coco = _write_coco(dataset, stage, samples, ext, names)
        path = folder / "annotations.json"
        (stage / path.name).write_text(json.dumps(coco), encoding="utf-8")
        path.unlink(missing_ok=True)  # before the images: never new images, old boxes
        _move_in(stage, folder, [image["file_name"] for image in coco["images"]] + [path.name])
    return path


def _write_coco(dataset: Dataset, stage: Path, indices: list[int], ext: str,
                names: list[str]) -> dict[str, Any]:
    """Write ``export_coco``'s images into ``stage/images``; returns the annotations."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    seen: set[int] = set()
    for i, (image, target) in _readable_samples(dataset, indices, "export_coco"):
        image_id = int(target.get("image_id", i))
        if image_id in seen:
            raise ValueError(f"image_id {image_id} (sample {i}) occurs twice; ids must be unique")
        seen.add(image_id)
        file_name = f"images/{image_id:06d}.{ext}"
        save_image(image, stage / file_name)
        h, w = image.shape[-2:]
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        boxes = target["boxes"].tolist()
        labels = target["labels"].tolist()
        for k, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels, strict=True)):
            if not 1 <= label <= len(names):
                raise ValueError(f"sample {i} has label {label}; expected 1..{len(names)}")
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(label),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float(target["area"][k]) if "area" in target else (x2 - x1) * (y2 - y1),
                "iscrowd": int(target["iscrowd"][k]) if "iscrowd" in target else 0,
            }
            if "masks" in target:
                ann["segmentation"] = _rle(target["masks"][k])
            annotations.append(ann)
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _palette() -> list[int]:
    """The VOC colour map: bit-interleaved colours for 0..254, white for 255 (ignore)."""
    colours = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours += [r, g, b]
    colours[-3:] = [255, 255, 255]
    return colours


def export_voc(
    dataset: Dataset,
    folder: str | Path,
    split: str = "train",
    *,
    indices: Indices | None = None,
    image_format: str = "png",
) -> Path:
    """Write a segmentation dataset in the VOC layout; returns the split file's path.

    ``folder/JPEGImages/<id>.png``, ``folder/SegmentationClass/<id>.png`` (palette PNG,
    values are the class ids, 255 ignore) and ``folder/ImageSets/Segmentation/<split>.txt``.
    Splits accumulate: writing ``val`` after ``train`` keeps both; an id written again
    replaces its files (an image of another format included). ``<id>`` is
    ``<split>_<index>``: ``split`` must be a plain file-name part (no path separator).
    ``indices`` picks the samples (default: all): ints or integer scalars, or a 1-D integer
    tensor or array; negative ones count from the end (``-1`` of 4 samples is written as
    ``<split>_000003``); each sample once, at least one. Samples the dataset cannot read
    are left out (no id), with a warning naming them.

    Everything is written to a temporary folder inside ``folder`` first: a failure while
    writing (a full disk, a sample that raises) leaves ``folder`` as it was. The old split
    file is then removed before the images and masks are renamed into place, so a failure
    during the renames leaves the split missing (it refuses to load), never a sample whose
    image and mask come from two exports. One export at a time per folder (another waits for
    it); it removes the temporary folders that exports killed mid-write left there.
    """
    ext = image_format.lower().lstrip(".")
    if ext not in _FORMATS:
        raise ValueError(f"image_format must be one of {sorted(_FORMATS)}, got {image_format!r}")
    _check_split(split)
    samples = _sample_indices(dataset, indices)
    folder = Path(folder)
    split_name = f"ImageSets/Segmentation/{split}.txt"
    with _staged(folder) as stage:
        ids = _write_voc(dataset, stage, split, samples, ext)
        (stage / split_name).write_text("".join(f"{n}\n" for n in ids), encoding="utf-8")
        (folder / split_name).unlink(missing_ok=True)  # before its files: never a mixed sample
        for name in ids:
            for other in _IMAGE_EXTS:  # an earlier export's image in another format
                if other != f".{ext}":  # (before moving: on a case-insensitive disk .JPG is .jpg)
                    (folder / "JPEGImages" / f"{name}{other}").unlink(missing_ok=True)
            _move_in(stage, folder, [f"JPEGImages/{name}.{ext}", f"SegmentationClass/{name}.png"])
        _move_in(stage, folder, [split_name])
    return folder / split_name


def _write_voc(dataset: Dataset, stage: Path, split: str, indices: list[int],
               ext: str) -> list[str]:
    """Write ``export_voc``'s images and masks into ``stage``; returns their ids."""
    Image = require("PIL.Image", __name__)

    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (stage / sub).mkdir(parents=True)
    palette = _palette()
    ids = []
    for i, (image, mask) in _readable_samples(dataset, indices, "export_voc"):
        if mask.dim() != 2 or (mask.numel() and not 0 <= int(mask.min()) <= int(mask.max()) <= 255):
            raise ValueError(f"sample {i}: mask must be (H, W) with values in 0..255")
        if mask.shape != image.shape[-2:]:
            raise ValueError(f"sample {i}: mask is {tuple(mask.shape)} but its image is "
                             f"{tuple(image.shape[-2:])}; they must be the same size")
        name = f"{split}_{i:06d}"
        save_image(image, stage / "JPEGImages" / f"{name}.{ext}")
        png = Image.fromarray(mask.cpu().numpy().astype(np.uint8), mode="P")
        png.putpalette(palette)
        mask_path = stage / "SegmentationClass" / f"{name}.png"
        with naming_the_file(mask_path):
            png.save(mask_path)
        ids.append(name)
    return ids
