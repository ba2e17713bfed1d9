"""COCO box mAP with pycocotools, ground truth built in memory from torchvision-style targets."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from .._extras import require

__all__ = ["COCO_METRICS", "DetectionRecord", "coco_map", "detection_record"]

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

# One image's ground truth and predictions as numpy arrays:
# {"height", "width", "image_id" (int or None), "gt_boxes" (K, 4) x1y1x2y2, "gt_labels" (K,),
#  "gt_iscrowd" (K,), "gt_area" (K,), "boxes" (D, 4), "scores" (D,), "labels" (D,)}
DetectionRecord = dict[str, Any]


def _numpy(x: Tensor | np.ndarray | Sequence, dtype: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().float().cpu().numpy() if dtype is np.float64 else x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _array(x: Any) -> np.ndarray:
    """``x`` (a tensor, array, sequence or scalar) as a numpy array of its own dtype."""
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _integers(x: Tensor | np.ndarray | Sequence, what: str) -> np.ndarray:
    """``x`` as int64, refusing floating-point values, which the cast would truncate (a
    label of 1.9 counted as class 1)."""
    values = _array(x)
    if values.size and values.dtype.kind not in "iub":
        raise ValueError(f"{what} must hold integers, got dtype {values.dtype}")
    return values.astype(np.int64)


def detection_record(
    image_size: tuple[int, int], target: dict[str, Tensor], output: dict[str, Tensor]
) -> DetectionRecord:
    """Pack one image's target and model output (torchvision detection dicts) for :func:`coco_map`.

    ``target`` needs ``boxes`` (K, 4) x1y1x2y2 and ``labels`` (K,); optional ``iscrowd``,
    ``area`` (default: not crowd, box area) and ``image_id`` (an int orders the images:
    :func:`coco_map`). ``output`` needs ``boxes``, ``scores``, ``labels``. Labels and
    ``iscrowd`` must be integers.
    """
    for name, d, keys in (("target", target, ("boxes", "labels")),
                          ("output", output, ("boxes", "scores", "labels"))):
        missing = [k for k in keys if k not in d]
        if missing:
            raise KeyError(f"detection {name} is missing {missing}; it has {sorted(d)}")
    gt_boxes = _per_box(target, "target", "boxes", np.float64, None)
    widths, heights = gt_boxes[:, 2] - gt_boxes[:, 0], gt_boxes[:, 3] - gt_boxes[:, 1]
    k = len(gt_boxes)
    boxes = _per_box(output, "output", "boxes", np.float64, None)
    return {
        "height": int(image_size[0]),
        "width": int(image_size[1]),
        "image_id": _image_id(target.get("image_id")),
        "gt_boxes": gt_boxes,
        "gt_labels": _per_box(target, "target", "labels", np.int64, k),
        "gt_iscrowd": (np.zeros(k, np.int64) if target.get("iscrowd") is None
                       else _per_box(target, "target", "iscrowd", np.int64, k)),
        "gt_area": (widths * heights if target.get("area") is None
                    else _per_box(target, "target", "area", np.float64, k)),
        "boxes": boxes,
        "scores": _per_box(output, "output", "scores", np.float64, len(boxes)),
        "labels": _per_box(output, "output", "labels", np.int64, len(boxes)),
    }


def _image_id(value: Any) -> int | None:
    """``value`` as an int where it is one integer (a Python, numpy or one-element tensor
    int), else None: a name such as VOC's ``"2008_000123"`` orders nothing."""
    ids = _array(value)
    return int(ids.reshape(1)[0]) if ids.size == 1 and ids.dtype.kind in "iu" else None


def _per_box(d: dict[str, Any], name: str, key: str, dtype: Any, count: int | None
             ) -> np.ndarray:
    """``d[key]`` as ``(count,)`` values, or as ``(K, 4)`` boxes when ``count`` is None;
    refused with the expected and actual shape otherwise."""
    values = (_integers(d[key], f"detection {name}[{key!r}]") if dtype is np.int64
              else _numpy(d[key], dtype))
    if count is None:
        if values.size and (values.ndim != 2 or values.shape[1] != 4):
            raise ValueError(f"detection {name}['boxes'] must be (K, 4) x1y1x2y2, got shape "
                             f"{values.shape}")
        return values.reshape(-1, 4)
    if values.size != count:
        raise ValueError(f"detection {name}[{key!r}] must hold one value per box ({count}), "
                         f"got shape {values.shape}")
    return values.reshape(count)


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    return [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in boxes]


def coco_map(records: Sequence[DetectionRecord]) -> dict[str, float]:
    """COCO box AP (IoU .50:.95), AP50, AP75 and AP for small/medium/large objects.

    Builds the ground-truth and result ``COCO`` objects in memory (category ids = label
    values) and runs ``COCOeval`` with its default parameters (100 detections per image).
    COCOeval breaks score ties by image order: the images are ordered by their
    ``image_id`` when every record has a distinct one (COCOeval's order of a json's images),
    else as given. Values are fractions in [0, 1]; ``nan`` where COCO reports -1 (no ground
    truth of that kind). No predictions at all gives AP 0 for every category with objects.
    Predicted boxes or scores with NaN or inf are refused: COCO's matching would count a
    NaN box as a hit.
    """
    COCO = require("pycocotools.coco", "deformconv.engine.coco_map").COCO
    COCOeval = require("pycocotools.cocoeval", "deformconv.engine.coco_map").COCOeval

    if not records:
        raise ValueError("coco_map needs at least one image record, got none")
    ids = [rec.get("image_id") for rec in records]
    order: Sequence[int] = range(len(records))
    if None not in ids and len(set(ids)) == len(ids):
        order = sorted(order, key=ids.__getitem__)
    images, gt_anns, dt_anns, categories = [], [], [], set()
    for image_id, index in enumerate(order, start=1):
        rec = records[index]
        for key in ("boxes", "scores"):
            if not np.isfinite(np.asarray(rec[key], dtype=np.float64)).all():
                raise ValueError(f"record {index}: predicted {key} hold NaN or inf")
        images.append({"id": image_id, "height": rec["height"], "width": rec["width"]})
        boxes = _xywh(rec["gt_boxes"])
        for box, label, crowd, area in zip(
            boxes, rec["gt_labels"], rec["gt_iscrowd"], rec["gt_area"], strict=True
        ):
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": image_id, "bbox": box,
                            "category_id": int(label), "iscrowd": int(crowd),
                            "area": float(area)})
            categories.add(int(label))
        for box, score, label in zip(
            _xywh(rec["boxes"]), rec["scores"], rec["labels"], strict=True
        ):
            # COCOeval uses annotation ids as "matched" flags: they must be >= 1.
            dt_anns.append({"id": len(dt_anns) + 1, "image_id": image_id, "bbox": box,
                            "category_id": int(label), "score": float(score),
                            "area": box[2] * box[3], "iscrowd": 0})
            categories.add(int(label))
    cats = [{"id": c, "name": str(c)} for c in sorted(categories)]

    def _coco(anns: list[dict]) -> COCO:
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns, "categories": cats}
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    evaluator = COCOeval(_coco(gt_anns), _coco(dt_anns), iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats[: len(COCO_METRICS)]
    return {name: float("nan") if v < 0 else float(v) for name, v in zip(COCO_METRICS, stats,
                                                                          strict=True)}

