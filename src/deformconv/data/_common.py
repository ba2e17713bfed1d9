"""Shared by the file-backed datasets: image loading, box clean-up and skip-and-count."""

from __future__ import annotations

import bisect
import operator
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Subset

from .._extras import require
from ..conventions import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "NoReadableSamplesError",
    "SampleError",
    "SkippingDataset",
    "Transform",
    "box_sizes",
    "clip_boxes",
    "load_rgb",
    "orientation_hint",
    "read_utf8",
    "readable_sample",
    "require_path",
    "sample_index",
    "upright_size",
]

# What needs PIL here, as a missing-extra error says it
_READING_IMAGES = "reading images in deformconv.data"
# A joint transform: (image (3, H, W), target) -> (image, target); see data.transforms.
Transform = Callable[[Tensor, Any], tuple[Tensor, Any]]


class SampleError(Exception):
    """One sample cannot be used; ``reason`` is the key it is counted under in ``skipped``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NoReadableSamplesError(RuntimeError):
    """Not one sample of a dataset could be read (every image file corrupt, say)."""

    @classmethod
    def of(cls, dataset: Any) -> NoReadableSamplesError:
        """The error for ``dataset``, named by its repr (which shows what it skipped)."""
        return cls(f"none of the {len(dataset)} samples of {dataset!r} could be read")


# One-channel PIL modes of more than 8 bits, which convert("RGB") would clip to 0 / 255.
_WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


# EXIF orientations (tag 0x0112) whose display swaps the stored width and height.
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def load_rgb(path: Path) -> Tensor:
    """Decode an image file to a float32 (3, H, W) tensor in [0, 1] (any PIL mode -> RGB).

    The file's EXIF orientation tag is applied (as viewers and annotation tools show the
    image, and as detectron2 reads it): a photo stored 40 wide, 30 high with orientation 6
    loads 30 wide, 40 high.

    8-bit images are divided by 255. Grey images of more than 8 bits are scaled by their
    format's range and repeated over the 3 channels: 16-bit ("I;16*" modes) by 65535;
    32-bit integer ("I", the mode some PIL versions open 16-bit PNGs in) by 65535 when
    every value fits in 16 bits, else by 2**31 - 1; float ("F") is taken to be in [0, 1]
    already. Values outside [0, 1] are then clipped, NaN becomes 0.
    """
    Image = require("PIL.Image", _READING_IMAGES)
    ImageOps = require("PIL.ImageOps", _READING_IMAGES)

    try:
        with Image.open(path) as img:
            img.load()  # decode now, so truncated files fail here and not later
            ImageOps.exif_transpose(img, in_place=True)
            if img.mode in _WIDE_GREY_MODES:
                return _wide_grey_to_rgb(np.asarray(img, dtype=np.float64), img.mode)
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as err:
        raise SampleError("missing_image", f"image file not found: {path}") from err
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for unreadable data
        raise SampleError("corrupt_image", f"cannot decode image {path}: {err}") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def upright_size(path: Path) -> tuple[int, int] | None:
    """(height, width) that ``load_rgb`` will return for image ``path``, from the file's
    header and EXIF orientation tag, without decoding the pixels; None when the header
    cannot be read (``load_rgb`` then fails too). A PNG whose EXIF chunk follows its pixel
    data is read unturned here: loading then finds a size mismatch, whose message says so."""
    Image = require("PIL.Image", _READING_IMAGES)

    try:
        with Image.open(path) as img:
            width, height = img.size
            # Image.getexif, not PNG's override: that decodes the pixels to look for an
            # EXIF chunk after them (one there is met on load, as a size mismatch)
            orientation = Image.Image.getexif(img).get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):  # PIL's errors for unreadable data
        return None
    return (width, height) if orientation in _SWAPPING_ORIENTATIONS else (height, width)


def orientation_hint(path: Path, loaded: tuple[int, int], expected: tuple[object, object],
                     what: str) -> str:
    """For image ``path`` loaded (H, W) ``loaded`` where ``what`` (a plural noun phrase)
    expect ``expected``: a sentence when the EXIF orientation tag swapped the stored width
    and height and the stored size is the expected one, else ''."""
    Image = require("PIL.Image", _READING_IMAGES)

    if tuple(expected) != tuple(loaded)[::-1]:
        return ""
    try:
        with Image.open(path) as img:  # the error path: reading an EXIF chunk late is fine
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):
        return ""
    if orientation not in _SWAPPING_ORIENTATIONS:
        return ""
    return (f"; {what} appear to be in the file's stored pixel orientation "
            f"({expected[0]} high, {expected[1]} wide), ignoring its EXIF orientation "
            f"tag ({orientation}), which the loader applies as viewers do. If they are right "
            "for the stored pixels, strip the tag (e.g. exiftool -Orientation= FILE); else "
            "redo them for the image as viewers show it")


def _wide_grey_to_rgb(grey: np.ndarray, mode: str) -> Tensor:
    """(H, W) values of a ``_WIDE_GREY_MODES`` image -> float32 (3, H, W) in [0, 1]."""
    if mode == "F":
        full_scale = 1.0
    elif mode == "I" and grey.max(initial=0) > 65535:
        full_scale = 2.0**31 - 1
    else:
        full_scale = 65535.0
    unit = np.clip(np.nan_to_num(grey / full_scale), 0.0, 1.0).astype(np.float32)
    return torch.from_numpy(unit).repeat(3, 1, 1)


def require_path(path: Path, what: str, *, folder: bool) -> None:
    """Raise, naming ``what`` and ``path``, unless ``path`` is a folder (``folder``) or
    a file (not ``folder``)."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if folder and not path.is_dir():
        raise NotADirectoryError(f"{what} is a file, not a folder: {path}")
    if not folder and path.is_dir():
        raise IsADirectoryError(f"{what} is a folder, not a file: {path}")


def read_utf8(path: Path) -> str:
    """The text of a UTF-8 file, without a byte-order mark (as some editors save);
    ValueError naming the file when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file ({err})") from err


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Clip x1y1x2y2 boxes (K, 4) to the image; drop those left with no area.

    Returns the kept boxes, the bool keep mask (K,) and how many kept boxes were clipped.
    """
    clipped = boxes.copy()
    np.clip(clipped[:, 0::2], 0, width, out=clipped[:, 0::2])
    np.clip(clipped[:, 1::2], 0, height, out=clipped[:, 1::2])
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    changed = int((np.abs(clipped - boxes).max(axis=1, initial=0) > 0)[keep].sum())
    return clipped[keep], keep, changed


def box_sizes(boxes: Tensor) -> Tensor:
    """Object size ``sqrt(w * h)`` in pixels of (K, 4) x1y1x2y2 boxes -> (K,)."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    return (wh[:, 0] * wh[:, 1]).sqrt()


class SkippingDataset(Dataset):
    """Base for datasets whose samples can turn out unreadable only when loaded.

    Subclasses implement ``_load(index)`` and raise :class:`SampleError` for a bad sample.
    ``load_or_skip(index)`` then warns, counts the reason in ``skipped`` (a ``Counter``),
    remembers the index and returns None; evaluation uses it to leave the sample out.
    ``__getitem__`` returns the next good sample instead, so a training epoch never stops
    half way, and raises :class:`NoReadableSamplesError` when none is left.
    Counts made at construction (missing files, dropped annotations) are in ``skipped`` too.
    With DataLoader workers, each worker process keeps its own count.
    """

    def __init__(self) -> None:
        self.skipped: Counter[str] = Counter()
        self._bad: set[int] = set()
        self._skip_examples: dict[str, list[str]] = {}  # reason -> the first few named

    def _skip(self, reason: str, example: object) -> None:
        """Count one sample dropped at construction under ``reason``; the summary warning
        names the first few ``example``s (a file, an id)."""
        self.skipped[reason] += 1
        examples = self._skip_examples.setdefault(reason, [])
        if len(examples) < 3:
            examples.append(str(example))

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, index: int) -> Any:
        raise NotImplementedError

    def load_or_skip(self, index: int) -> Any | None:
        """Sample ``index`` (in ``[0, len)``), or None when it cannot be read."""
        if index in self._bad:
            return None
        try:
            return self._load(index)
        except SampleError as err:
            self._bad.add(index)
            self.skipped[err.reason] += 1
            warnings.warn(f"skipping sample {index}: {err}", RuntimeWarning, stacklevel=3)
            return None

    def __getitem__(self, index: int) -> Any:
        return next_readable(self, index)

    def _warn_skipped(self, source: object, total: int) -> None:
        """One summary warning for what construction dropped."""
        if self.skipped:
            detail = ", ".join(self._skip_detail(k, v) for k, v in sorted(self.skipped.items()))
            warnings.warn(
                f"{source}: dropped while indexing {total} images ({detail}); "
                "see the dataset's .skipped",
                RuntimeWarning,
                stacklevel=3,
            )

    def _skip_detail(self, reason: str, count: int) -> str:
        examples = self._skip_examples.get(reason)
        if not examples:
            return f"{reason}: {count}"
        more = ", ..." if count > len(examples) else ""
        return f"{reason}: {count}, e.g. {', '.join(examples)}{more}"


def sample_index(index: object, length: int) -> int:
    """``index`` of a dataset of ``length`` samples as a position in ``[0, length)``, as a
    Sequence takes it: an int (numpy and torch integer scalars too), negative from the end.

    Raises:
        TypeError: ``index`` is not an integer (a float, a slice ...).
        IndexError: ``index`` is outside ``[-length, length)``.
    """
    try:
        position = operator.index(index)  # type: ignore[arg-type]
    except TypeError:
        hint = " (to take a part, use torch.utils.data.Subset)" if isinstance(index, slice) else ""
        raise TypeError(f"dataset indices must be integers, got {type(index).__name__} "
                        f"{index!r}{hint}") from None
    if not -length <= position < length:
        raise IndexError(f"index {position} out of range for a dataset of {length} samples")
    return position % length


def next_readable(dataset: Any, index: int) -> Any:
    """Sample ``index`` of a dataset with ``load_or_skip``, or the next readable one after
    it (wrapping around); :class:`NoReadableSamplesError` when none is."""
    n = len(dataset)
    index = sample_index(index, n)
    for step in range(n):
        sample = dataset.load_or_skip((index + step) % n)
        if sample is not None:
            return sample
    raise NoReadableSamplesError.of(dataset)


def readable_sample(dataset: Dataset, index: int) -> Any | None:
    """``dataset[index]``, or None for a sample the dataset cannot read.

    A dataset whose class defines ``load_or_skip`` (:class:`SkippingDataset`,
    ``data.InMemory``; also inside a ``Subset`` or ``ConcatDataset``) answers with it: its
    ``dataset[index]`` would give the next readable sample instead, which an evaluation
    would count twice. Other datasets answer ``dataset[index]``. (The class, not the
    instance: a wrapper that forwards attributes must not answer for its source.)
    """
    if callable(getattr(type(dataset), "load_or_skip", None)):
        return dataset.load_or_skip(  # type: ignore[attr-defined]
            sample_index(index, len(dataset)))
    if isinstance(dataset, Subset):
        return readable_sample(dataset.dataset, dataset.indices[index])
    if isinstance(dataset, ConcatDataset):
        index = sample_index(index, len(dataset))
        part = bisect.bisect_right(dataset.cumulative_sizes, index)
        start = dataset.cumulative_sizes[part - 1] if part else 0
        return readable_sample(dataset.datasets[part], index - start)
    return dataset[index]
