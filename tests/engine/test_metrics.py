"""Top-1, confusion-matrix mIoU and COCO mAP against hand-computed cases."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from deformconv.engine import (
    coco_map,
    confusion_matrix,
    detection_record,
    evaluate,
    iou_from_confusion,
    make_evaluator,
    top1_correct,
)


def test_make_evaluator_lists_the_tasks_for_an_unknown_one():
    with pytest.raises(ValueError, match=re.escape(
            "task must be one of ('classification', 'segmentation', 'detection'), got 'depth'")):
        make_evaluator("depth")


class TestTop1:
    def test_counts(self):
        logits = torch.tensor([[0.1, 0.9], [2.0, 1.0], [0.0, 3.0]])
        assert top1_correct(logits, torch.tensor([1, 1, 1])) == 2

    def test_shape_errors(self):
        with pytest.raises(ValueError, match=r"logits must be \(N, C\)"):
            top1_correct(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))
        with pytest.raises(ValueError, match=r"targets must have shape \(2,\)"):
            top1_correct(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))

    def test_float_targets_are_refused(self):
        """Float targets were compared with the argmax: 1.7 never matched, silently."""
        with pytest.raises(ValueError, match="targets must hold integer class ids, got "
                                             r"dtype torch\.float32"):
            top1_correct(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1.7, 0.2]))

    def test_evaluator(self):
        ev = make_evaluator("classification")
        ev.update(None, torch.tensor([0, 1]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
        ev.update(None, torch.tensor([1]), torch.tensor([[0.0, 1.0]]))
        assert ev.compute() == {"top1": pytest.approx(2 / 3), "num_images": 3}


class TestMIoU:
    # target / prediction over 3 classes (class 2 never appears), 255 ignored:
    TARGET = torch.tensor([[0, 0, 1, 1], [0, 1, 255, 255]])
    PRED = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])

    def test_confusion_matrix(self):
        conf = confusion_matrix(self.PRED, self.TARGET, num_classes=3)
        # rows = target, cols = prediction; the two 255 pixels are skipped
        assert conf.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]

    def test_iou_by_hand(self):
        result = iou_from_confusion(confusion_matrix(self.PRED, self.TARGET, 3))
        # class 0: TP 2, FP 1, FN 1 -> 2/4; class 1: TP 2, FP 1, FN 1 -> 2/4; class 2 absent
        assert result["iou"][:2] == pytest.approx([0.5, 0.5])
        assert math.isnan(result["iou"][2])
        assert result["miou"] == pytest.approx(0.5)
        assert result["pixel_acc"] == pytest.approx(4 / 6)

    def test_the_models_ignore_index_is_left_out_of_pixels_and_mean(self):
        """Evaluation ignored 255 whatever the model's ignore_index. With 0 its pixels are
        not counted, and class 0 (no labelled pixels) is not in the mean: its IoU would be
        0 from its false positives alone. Those still miss class 1 (IoU 2/3)."""
        target = torch.where(self.TARGET == 255, 0, self.TARGET).unsqueeze(0)
        logits = nn.functional.one_hot(self.PRED, 3).permute(2, 0, 1).float().unsqueeze(0)

        class Model(nn.Module):
            ignore_index = 0

            def forward(self, images):
                return logits.expand(len(images), -1, -1, -1)

        dataset = [(torch.zeros(3, 2, 4), target[0])]
        results = [evaluate(Model(), dataset, "segmentation")]
        evaluator = make_evaluator("segmentation", Model())
        evaluator.update(None, target, logits)
        results.append(evaluator.compute())
        for result in results:
            assert result["miou"] == pytest.approx(2 / 3) and math.isnan(result["iou"][0])
            assert (result["pixel_acc"], result["num_pixels"]) == (pytest.approx(2 / 3), 3)
        # a 255 pixel is then an id the model has no class for, refused as such
        with pytest.raises(ValueError, match=r"target holds class ids outside \[0, 3\) "
                                             r"other than 0: min 1, max 255"):
            evaluate(Model(), [(torch.zeros(3, 2, 4), self.TARGET)], "segmentation")

    def test_predicted_but_absent_class_counts(self):
        # class 1 predicted once but never true: IoU 0, and it lowers the mean
        conf = confusion_matrix(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 0]), 2)
        result = iou_from_confusion(conf)
        assert result["iou"] == pytest.approx([2 / 3, 0.0])
        assert result["miou"] == pytest.approx(1 / 3)

    def test_bad_labels(self):
        with pytest.raises(ValueError, match=r"class ids outside \[0, 2\)"):
            confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 5]), 2)
        # a prediction out of range used to count as another class's (5 in row 1 -> [2, 0])
        for bad in (5, -1):
            with pytest.raises(ValueError, match=rf"pred holds class ids outside \[0, 3\): "
                                                 rf"min {min(bad, 0)}, max {max(bad, 1)}"):
                confusion_matrix(torch.tensor([0, 1, bad]), torch.tensor([0, 1, 1]), 3)
        with pytest.raises(ValueError, match="same shape"):
            confusion_matrix(torch.zeros(2), torch.zeros(3), 2)

    def test_input_errors(self):
        """Float ids were truncated, num_classes=0 gave an empty matrix and -1 a raw
        RuntimeError; a negative count gave mIoU 1.75, a non-square matrix an IndexError."""
        ids = torch.tensor([0, 1])
        with pytest.raises(ValueError, match="target must hold integer class ids, got dtype "
                                             r"torch\.float32"):
            confusion_matrix(ids, torch.tensor([0.9, 1.5]), 3)
        with pytest.raises(ValueError, match="pred must hold integer class ids, got dtype "
                                             r"torch\.float64"):
            confusion_matrix(ids.double(), ids, 3)
        for bad in (0, -1):
            with pytest.raises(ValueError, match=f"num_classes must be > 0, got {bad}"):
                confusion_matrix(ids, ids, bad)
        with pytest.raises(ValueError, match=r"confusion must hold counts >= 0, got min -1"):
            iou_from_confusion(torch.tensor([[3, -1], [0, 2]]))
        for shape in [(3,), (2, 3)]:
            with pytest.raises(ValueError, match=rf"confusion must be a square \(C, C\) "
                                                 rf"matrix, got shape {re.escape(str(shape))}"):
                iou_from_confusion(torch.zeros(shape, dtype=torch.int64))

    def test_evaluator_upsamples_and_accumulates(self):
        ev = make_evaluator("segmentation")
        logits = torch.zeros(1, 3, 2, 4)
        logits[0, :, :, :][self.PRED.unsqueeze(0).expand(3, -1, -1)
                           == torch.arange(3).view(3, 1, 1)] = 1.0
        ev.update(None, self.TARGET.unsqueeze(0), logits)
        assert ev.compute()["miou"] == pytest.approx(0.5)


def _record(gt_boxes, gt_labels, boxes, scores, labels, size=(100, 100)):
    target = {"boxes": torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
              "labels": torch.tensor(gt_labels, dtype=torch.int64)}
    output = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
              "scores": torch.tensor(scores), "labels": torch.tensor(labels, dtype=torch.int64)}
    return detection_record(size, target, output)


class TestCocoMap:
    def test_perfect_predictions(self):
        rec = _record([[10, 10, 50, 60], [0, 0, 99, 99]], [1, 2],
                      [[10, 10, 50, 60], [0, 0, 99, 99]], [0.9, 0.8], [1, 2])
        result = coco_map([rec])
        # area 40*50 = 2000 is "medium" (32^2..96^2), 99*99 = 9801 is "large"; no small box
        assert result["AP"] == pytest.approx(1.0)
        assert result["AP50"] == result["AP75"] == pytest.approx(1.0)
        assert math.isnan(result["APs"])
        assert result["APm"] == result["APl"] == pytest.approx(1.0)

    def test_false_positive_ranked_first_halves_ap(self):
        # one object, two detections: a higher-scored miss, then an exact hit.
        # Precision at recall 1 is 1/2; COCO's interpolated precision is 0.5 at every
        # recall threshold, at every IoU threshold: AP = 0.5.
        rec = _record([[0, 0, 20, 20]], [1], [[50, 50, 70, 70], [0, 0, 20, 20]],
                      [0.9, 0.6], [1, 1])
        result = coco_map([rec])
        assert result["AP"] == pytest.approx(0.5)
        assert result["APs"] == pytest.approx(0.5)  # 400 px < 32^2: small

    def test_partial_overlap_counts_at_low_thresholds_only(self):
        # IoU = (10 * 6.25) / (10 * 10) = 0.625: a hit at thresholds .50, .55, .60 of the
        # ten (.50:.05:.95), a miss above -> AP = 3/10, AP50 = 1, AP75 = 0.
        rec = _record([[0, 0, 10, 10]], [1], [[0, 0, 10, 6.25]], [0.9], [1])
        result = coco_map([rec])
        assert result["AP"] == pytest.approx(0.3)
        assert result["AP50"] == pytest.approx(1.0)
        assert result["AP75"] == pytest.approx(0.0)

    def test_no_predictions_is_zero(self):
        rec = _record([[0, 0, 10, 10]], [1], [], [], [])
        assert coco_map([rec])["AP"] == 0.0

    def test_several_images_and_classes(self):
        # image 1: class 1 found; image 2: class 2 missed (no detection) -> class 1 AP 1,
        # class 2 AP 0: the mean over categories is 0.5.
        recs = [_record([[0, 0, 40, 40]], [1], [[0, 0, 40, 40]], [0.9], [1]),
                _record([[0, 0, 40, 40]], [2], [], [], [])]
        assert coco_map(recs)["AP"] == pytest.approx(0.5)

    def test_errors(self):
        with pytest.raises(ValueError, match="at least one image"):
            coco_map([])
        with pytest.raises(KeyError, match=r"output is missing \['scores'\]"):
            detection_record((10, 10), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)},
                             {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)})


class _Diverged(torch.nn.Module):
    """Outputs of a diverged model: NaN logits, or NaN boxes with confident scores."""

    def __init__(self, task: str) -> None:
        super().__init__()
        self.task = task

    def forward(self, images):
        nan = float("nan")
        if self.task == "classification":
            return torch.full((images.shape[0], 3), nan)
        if self.task == "segmentation":
            return torch.full((images.shape[0], 3, 8, 8), nan)
        return [{"boxes": torch.full((1, 4), nan), "scores": torch.ones(1),
                 "labels": torch.ones(1, dtype=torch.long)} for _ in images]


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection"])
def test_non_finite_outputs_score_nan(task):
    """argmax of NaN logits is class 0 (top-1 0.33 here) and COCO's matching counts a NaN
    box as a hit (AP 1.0): a diverged model used to be scored as a good one."""
    from deformconv.engine import evaluate

    samples = {
        "classification": [(torch.rand(3, 8, 8), i % 3) for i in range(6)],
        "segmentation": [(torch.rand(3, 8, 8), torch.randint(0, 3, (8, 8))) for _ in range(4)],
        "detection": [(torch.rand(3, 32, 32), {"boxes": torch.tensor([[2.0, 3.0, 12.0, 20.0]]),
                                               "labels": torch.tensor([1])}) for _ in range(3)],
    }[task]
    with pytest.warns(RuntimeWarning, match=r"gave NaN or inf outputs .*every score is NaN"):
        metrics = evaluate(_Diverged(task), samples, task, batch_size=2)
    primary = {"classification": "top1", "segmentation": "miou", "detection": "AP"}[task]
    assert math.isnan(metrics[primary])
    assert metrics.get("num_images", metrics.get("num_pixels")) > 0


def test_coco_map_refuses_nan_boxes():
    record = {"height": 32, "width": 40, "gt_boxes": np.array([[2.0, 3.0, 12.0, 20.0]]),
              "gt_labels": np.array([1]), "gt_iscrowd": np.zeros(1, np.int64),
              "gt_area": np.array([170.0]), "boxes": np.full((1, 4), np.nan),
              "scores": np.ones(1), "labels": np.array([1])}
    with pytest.raises(ValueError, match=r"record 0: predicted boxes hold NaN or inf"):
        coco_map([record])


class _Returns(torch.nn.Module):
    def __init__(self, make) -> None:
        super().__init__()
        self.make = make

    def forward(self, images):
        return self.make(images)


@pytest.mark.parametrize(("task", "make", "error", "match"), [
    ("segmentation", lambda x: {"out": torch.zeros(x.shape[0], 3, 8, 8)}, TypeError,
     r"must return its logits \(N, C, H, W\) as one tensor, got dict with keys \['out'\] "
     r"\(torchvision's segmentation models"),
    ("classification", lambda x: (torch.zeros(x.shape[0], 3), None), TypeError,
     r"a classification model must return its logits \(N, C\) as one tensor, got tuple"),
    ("segmentation", lambda x: torch.zeros(x.shape[0], 8, 8), ValueError,
     r"segmentation logits must be \(N, C, H, W\), got shape \(2, 8, 8\)"),
])
def test_model_outputs_of_another_form_are_named(task, make, error, match):
    """They used to fail deep inside: "'dict' object has no attribute 'shape'", "pred and
    target must have the same shape"."""
    from deformconv.engine import compute_loss, evaluate

    target = torch.zeros(8, 8, dtype=torch.long) if task == "segmentation" else 1
    samples = [(torch.rand(3, 8, 8), target)] * 2
    with pytest.raises(error, match=match):
        evaluate(_Returns(make), samples, task, batch_size=2)
    batch = torch.rand(2, 3, 8, 8)
    targets = torch.zeros(2, 8, 8, dtype=torch.long) if task == "segmentation" else torch.ones(2)
    with pytest.raises(error, match=match):
        compute_loss(task, _Returns(make), batch, targets.long())


@pytest.mark.parametrize(("targets", "match"), [
    (("cat", "dog"), r"classification targets must be a tensor of \(N,\) class ids "
                     r"\(integers\), got tuple"),
    (torch.tensor([0.0, 1.0]), r"must be \(N,\) class ids of an integer dtype, got shape "
                               r"\(2,\) of torch.float32"),
])
def test_targets_of_another_form_are_named(targets, match):
    from deformconv.engine import compute_loss

    model = _Returns(lambda x: torch.zeros(x.shape[0], 3, requires_grad=True))
    with pytest.raises((TypeError, ValueError), match=match):
        compute_loss("classification", model, torch.rand(2, 3, 8, 8), targets)


def test_class_probabilities_train_classification():
    """(N, C) probabilities (mixup, label smoothing in the data) are cross_entropy's soft
    targets; the target check must let them through."""
    from deformconv.engine import compute_loss

    torch.manual_seed(0)
    model, images = torch.nn.Linear(4, 3), torch.randn(5, 4)
    soft = torch.softmax(torch.randn(5, 3), 1)
    loss, _ = compute_loss("classification", model, images, soft)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(model(images), soft))


def test_a_module_kept_as_module_attribute_is_evaluated_whole():
    """Only DDP and DataParallel are unwrapped: a user's wrapper that keeps its net as
    ``.module`` (normalising first) used to be skipped, scoring the bare net."""
    from deformconv.engine import evaluate

    class Normalized(torch.nn.Module):
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, x):
            return self.module((x - 0.5) / 0.1)

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    images = torch.rand(64, 3, 2, 2)
    with torch.no_grad():
        labels = net((images - 0.5) / 0.1).argmax(1)
    samples = list(zip(images, labels, strict=True))
    assert evaluate(Normalized(net), samples, "classification")["top1"] == 1.0


class _PaddingDetector(torch.nn.Module):
    """Scores that depend on the padded batch, as a detector's do (it pads a batch to its
    largest image): a miss scored by the image's share of the padded area, a hit at 0.5."""

    def forward(self, images):
        height = max(image.shape[-2] for image in images)
        width = max(image.shape[-1] for image in images)
        outputs = []
        for image in images:
            share = image.shape[-2] * image.shape[-1] / (height * width)
            outputs.append({"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0], [10.0, 10.0, 20.0, 20.0]]),
                            "scores": torch.tensor([share, 0.5]),
                            "labels": torch.tensor([1, 1])})
        return outputs


def test_detection_scores_do_not_depend_on_the_batch():
    """Images of one size run together, others apart: with mixed sizes in a batch the AP
    used to change with the batch size (0.5 here at batch 1, 0.67 at batch 4)."""
    from deformconv.engine import evaluate

    target = {"boxes": torch.tensor([[10.0, 10.0, 20.0, 20.0]]), "labels": torch.tensor([1])}
    samples = [(torch.zeros(3, size, 32), target) for size in (32, 12, 32, 8, 12, 32)]
    metrics = [evaluate(_PaddingDetector(), samples, "detection", batch_size=size)["AP"]
               for size in (1, 4, 6)]
    assert metrics[0] == metrics[1] == metrics[2]


def test_detection_records_are_scored_in_dataset_order():
    """COCO breaks score ties by image order: records gathered rank by rank (dataset
    indices 0, 2, 4, then 1, 3, 5) are put back in dataset order first."""
    def batch(index):
        hit, miss = [10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 5.0, 5.0]
        order = [hit, miss] if index % 2 else [miss, hit]
        return ([torch.zeros(3, 32, 32)],
                [{"boxes": torch.tensor([hit]), "labels": torch.tensor([1])}],
                [{"boxes": torch.tensor(order), "scores": torch.tensor([0.5, 0.5]),
                  "labels": torch.tensor([1, 1])}])

    in_order, gathered, unindexed = (make_evaluator("detection") for _ in range(3))
    for index in range(6):
        in_order.update(*batch(index))
    for index in (0, 2, 4, 1, 3, 5):
        gathered.update(*batch(index), [index])
        unindexed.update(*batch(index))
    expected = in_order.compute()["AP"]
    assert gathered.compute()["AP"] == expected
    assert unindexed.compute()["AP"] != expected  # the order matters in this case


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection"])
def test_an_empty_dataset_is_refused_for_every_task(task):
    """Each task used to fail its own way (NaN top-1, "needs one class count, got set()")."""
    from deformconv.engine import evaluate

    with pytest.raises(ValueError, match=rf"the {task} dataset is empty \(0 samples\)"):
        evaluate(torch.nn.Identity(), [], task)


@pytest.mark.parametrize(("target", "output", "match"), [
    ({"labels": torch.tensor([1])}, {}, r"target\['labels'\] must hold one value per box \(2\), "
                                        r"got shape \(1,\)"),
    ({"iscrowd": torch.tensor([0])}, {}, r"target\['iscrowd'\] must hold one value per box"),
    ({"area": torch.tensor([1.0, 2.0, 3.0])}, {}, r"target\['area'\] must hold one value"),
    ({}, {"scores": torch.tensor([0.5])}, r"output\['scores'\] must hold one value per box \(2\)"),
    ({"boxes": torch.zeros(2, 5)}, {}, r"target\['boxes'\] must be \(K, 4\) x1y1x2y2, got "
                                       r"shape \(2, 5\)"),
    ({}, {"boxes": torch.zeros(1, 2, 4)}, r"output\['boxes'\] must be \(K, 4\)"),
])
def test_detection_fields_of_another_length_are_named(target, output, match):
    """They used to fail inside zip() or a numpy reshape, naming no field."""
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 8.0, 8.0]])
    target = {"boxes": boxes, "labels": torch.tensor([1, 1]), **target}
    output = {"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 1]),
              **output}
    with pytest.raises(ValueError, match=match):
        detection_record((16, 16), target, output)


def test_evaluation_leaves_each_submodule_in_its_own_mode():
    """A submodule kept in eval in a training model (frozen BatchNorm) went back to training
    mode after evaluate() (model.train(was_training)), so the next steps updated its
    statistics; each module's own mode is restored now (deformconv.nn.eval_mode)."""
    from deformconv.engine import evaluate

    net = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Flatten(),
                              torch.nn.Linear(12, 3)).train()
    net[0].eval()
    samples = [(torch.rand(3, 2, 2), 0) for _ in range(4)]
    evaluate(net, samples, "classification")
    assert net.training and net[2].training and not net[0].training


def test_coco_map_without_pycocotools_names_the_extra(run_without):
    run_without(["pycocotools"], """
        from deformconv.engine import coco_map
        missing_extra(lambda: coco_map([{}]), "deformconv.engine.coco_map needs pycocotools, "
                      "part of the vision extra: pip install 'deformconv[vision]'")
    """)


def _tied_records(image_ids):
    """One box per image, both detections scored 0.9: a hit on the first image, a miss on
    the second."""
    box = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    records = []
    for image_id, guess in zip(image_ids, (box, torch.tensor([[35.0, 35.0, 45.0, 45.0]])),
                               strict=True):
        target = {"boxes": box, "labels": torch.tensor([1])}
        if image_id is not None:
            target["image_id"] = image_id
        records.append(detection_record((50, 50), target, {
            "boxes": guess, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}))
    return records


def _cocoeval_ap(image_ids):
    """pycocotools' AP on a json that lists the images of :func:`_tied_records` in order."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ground_truth = COCO()
    ground_truth.dataset = {
        "images": [{"id": i, "height": 50, "width": 50} for i in image_ids],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": k, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20],
                         "area": 400, "iscrowd": 0} for k, i in enumerate(image_ids, 1)]}
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
        results = ground_truth.loadRes([
            {"image_id": image_ids[0], "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
            {"image_id": image_ids[1], "category_id": 1, "bbox": [35, 35, 10, 10], "score": 0.9}])
        evaluator = COCOeval(ground_truth, results, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


@pytest.mark.parametrize("image_ids", [(2, 1), (1, 2), (7, 3)])
def test_coco_map_breaks_score_ties_as_cocoeval_on_the_json(image_ids):
    """COCOeval orders a json's images by id: a json listing image 2 before image 1, with
    tied scores, gave AP 0.505 here and 0.252 in COCOeval (images were numbered in dataset
    order)."""
    assert coco_map(_tied_records(image_ids))["AP"] == pytest.approx(_cocoeval_ap(image_ids),
                                                                     abs=1e-12)


@pytest.mark.parametrize("image_ids", [(5, 5), ("b", "a"), (2.0, 1.0), (None, 1)])
def test_coco_map_keeps_the_given_order_without_distinct_integer_image_ids(image_ids):
    """Records without integer image ids (VOC's are names: "2008_000123"; they were refused),
    or with one id twice, are scored in the order given."""
    expected = coco_map(_tied_records((None, None)))["AP"]
    assert coco_map(_tied_records(image_ids))["AP"] == expected
    assert coco_map(_tied_records((None, None))[::-1])["AP"] != expected  # order matters


@pytest.mark.parametrize(("target", "match"), [
    ({"labels": torch.tensor([1.9])}, r"target\['labels'\] must hold integers, got dtype "
                                      r"float32"),
    ({"iscrowd": [0.0]}, r"target\['iscrowd'\] must hold integers, got dtype float64"),
])
def test_detection_class_ids_of_a_float_dtype_are_refused(target, match):
    """A ground-truth label of 1.9 was truncated to class 1 (a perfect box scored AP 0), as
    ``confusion_matrix`` and ``top1_correct`` already refuse."""
    box = torch.tensor([[1.0, 1.0, 5.0, 5.0]])
    target = {"boxes": box, "labels": torch.tensor([1]), **target}
    no_output = {"boxes": box[:0], "scores": torch.zeros(0), "labels": torch.zeros(0).long()}
    with pytest.raises(ValueError, match=match):
        detection_record((10, 10), target, no_output)


def test_detection_output_labels_of_a_float_dtype_are_refused():
    box = torch.tensor([[1.0, 1.0, 5.0, 5.0]])
    with pytest.raises(ValueError, match=r"output\['labels'\] must hold integers"):
        detection_record((10, 10), {"boxes": box, "labels": torch.tensor([1])},
                         {"boxes": box, "scores": torch.tensor([0.9]),
                          "labels": torch.tensor([2.0])})
