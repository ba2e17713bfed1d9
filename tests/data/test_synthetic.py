"""Synthetic scenes and their three dataset views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deformconv.data import (
    CLASSES,
    IGNORE_INDEX,
    SceneConfig,
    SceneGenerator,
    SyntheticClassification,
    SyntheticDetection,
    SyntheticSegmentation,
    semantic_mask,
    synthetic_dataset,
)
from deformconv.data.scene import boxes_from_masks

SIZE = 64


def _same_sample(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_sample(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same_sample(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("view", [SyntheticClassification, SyntheticSegmentation,
                                  SyntheticDetection])
class TestViews:
    def test_deterministic_for_a_seed(self, view) -> None:
        first = view(length=6, seed=3, image_size=SIZE)
        second = view(length=6, seed=3, image_size=SIZE)
        torch.manual_seed(0)  # the global RNG must not matter
        a = [first[i] for i in (4, 0, 2)]
        torch.manual_seed(1)
        b = [second[i] for i in (4, 0, 2)]
        assert all(_same_sample(x, y) for x, y in zip(a, b, strict=True))
        assert _same_sample(first[-2], first[4])

    def test_seeds_and_indices_differ(self, view) -> None:
        a = view(length=4, seed=0, image_size=SIZE)
        b = view(length=4, seed=1, image_size=SIZE)
        assert not torch.equal(a[0][0], b[0][0])
        assert not torch.equal(a[0][0], a[1][0])

    def test_image_shape_dtype_range(self, view) -> None:
        ds = view(length=3, seed=0, image_size=(48, 80))
        for i in range(len(ds)):
            image = ds[i][0]
            assert image.shape == (3, 48, 80) and image.dtype == torch.float32
            assert image.is_contiguous()
            assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0

    def test_length_and_index_errors(self, view) -> None:
        ds = view(length=2, seed=0, image_size=SIZE)
        assert len(ds) == 2
        with pytest.raises(IndexError, match="out of range"):
            ds[2]
        with pytest.raises(ValueError, match="length must be a positive int"):
            view(length=0)
        with pytest.raises(TypeError, match="unknown scene option"):
            view(length=2, image_sise=32)

    def test_indices_are_a_sequences(self, view) -> None:
        ds = view(length=3, seed=0, image_size=SIZE)
        last = ds[2][0]
        for index in (-1, np.int64(2), torch.tensor(2)):
            assert torch.equal(ds[index][0], last)
        with pytest.raises(IndexError, match="index -4 out of range for a dataset of 3"):
            ds[-4]
        with pytest.raises(TypeError, match=r"dataset indices must be integers, got float 1.7"):
            ds[1.7]
        with pytest.raises(TypeError, match=r"got slice .*use torch.utils.data.Subset"):
            ds[0:2]
        with pytest.raises(TypeError, match="got Tensor"):
            ds[torch.tensor(1.0)]


def test_detection_image_id_is_the_position_as_an_int() -> None:
    ds = SyntheticDetection(length=3, seed=0, image_size=SIZE)
    assert ds[np.int64(-1)][1]["image_id"] == 2
    assert type(ds[np.int64(1)][1]["image_id"]) is int


def test_classification_labels() -> None:
    ds = SyntheticClassification(length=40, seed=5, image_size=SIZE)
    labels = [ds[i][1] for i in range(len(ds))]
    assert all(isinstance(lab, int) and 0 <= lab < ds.num_classes for lab in labels)
    assert len(set(labels)) >= 6  # ten classes, forty draws
    for i in range(5):
        scene = ds.scene(i)
        assert len(scene.labels) == 1 and scene.labels[0] == labels[i]


def test_detection_target_format_and_consistency() -> None:
    ds = SyntheticDetection(length=12, seed=2, image_size=(72, 56), masks=True, max_objects=5)
    counts = []
    for i in range(len(ds)):
        image, t = ds[i]
        k = len(t["boxes"])
        counts.append(k)
        assert t["boxes"].dtype == torch.float32 and t["boxes"].shape == (k, 4)
        assert t["labels"].dtype == torch.int64 and t["labels"].shape == (k,)
        assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (k, 72, 56)
        assert t["iscrowd"].dtype == torch.int64 and not t["iscrowd"].any()
        assert t["area"].dtype == torch.float32 and t["sizes"].dtype == torch.float32
        assert t["image_id"] == i
        assert bool(((t["labels"] >= 1) & (t["labels"] <= ds.num_classes)).all())
        boxes = t["boxes"]
        assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all())
        assert bool((boxes[:, 2] <= 56).all() and (boxes[:, 3] <= 72).all())
        assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())
        # boxes are the tight boxes of the masks, area is the mask's pixel count
        expected = torch.from_numpy(boxes_from_masks(t["masks"].bool().numpy()))
        assert torch.equal(boxes, expected)
        assert torch.equal(t["area"], t["masks"].flatten(1).sum(1).float())
        wh = boxes[:, 2:] - boxes[:, :2]
        assert torch.allclose(t["sizes"], (wh[:, 0] * wh[:, 1]).sqrt())
        assert int(t["masks"].sum(0).max()) <= 1  # visible masks do not overlap
    assert min(counts) >= 1 and max(counts) >= 3


def test_detection_without_masks_has_no_mask_key() -> None:
    _, t = SyntheticDetection(length=1, seed=0, image_size=SIZE)[0]
    assert "masks" not in t


def test_segmentation_mask_matches_instances() -> None:
    ds = SyntheticSegmentation(length=6, seed=4, image_size=SIZE)
    for i in range(len(ds)):
        _, mask = ds[i]
        scene = ds.scene(i)
        assert mask.dtype == torch.int64 and mask.shape == (SIZE, SIZE)
        expected = np.zeros((SIZE, SIZE), dtype=np.int64)
        for label, pixels in zip(scene.labels, scene.masks, strict=True):
            expected[pixels] = label + 1
        assert np.array_equal(mask.numpy(), expected)
        assert int(mask.max()) <= ds.num_classes and IGNORE_INDEX not in mask


def test_segmentation_ignore_border() -> None:
    plain = SyntheticSegmentation(length=3, seed=1, image_size=SIZE)
    border = SyntheticSegmentation(length=3, seed=1, image_size=SIZE, ignore_border=1)
    for i in range(3):
        a, b = plain[i][1], border[i][1]
        ignored = b == IGNORE_INDEX
        assert ignored.any()
        assert torch.equal(a[~ignored], b[~ignored])  # only pixels next to a change move
        # every ignored pixel has a differently labelled 8-neighbour in the plain mask
        p = torch.nn.functional.pad(a[None, None].float(), (1, 1, 1, 1), mode="replicate")
        hi = torch.nn.functional.max_pool2d(p, 3, stride=1)[0, 0]
        lo = -torch.nn.functional.max_pool2d(-p, 3, stride=1)[0, 0]
        assert torch.equal(ignored, hi != lo)


def test_object_sizes_span_a_wide_range() -> None:
    """Log-uniform scale from 8 px to 70% of the side: tiny and huge objects both occur."""
    ds = SyntheticDetection(length=60, seed=0, image_size=128)
    scales = np.concatenate([ds.scene(i).scales for i in range(len(ds))])
    sizes = torch.cat([ds[i][1]["sizes"] for i in range(len(ds))]).numpy()
    assert scales.min() >= 8 and scales.max() <= 0.7 * 128 + 1e-3
    assert (scales < 16).sum() >= 5 and (scales > 50).sum() >= 5
    assert np.percentile(sizes, 90) / np.percentile(sizes, 10) > 4
    buckets = np.histogram(sizes, bins=[0, 16, 32, 64, 1e9])[0]
    assert (buckets > 0).all(), buckets


def test_aspect_and_rotation_vary() -> None:
    gen = SceneGenerator(SceneConfig(image_size=SIZE), seed=0)
    scenes = [gen(i) for i in range(30)]
    aspects = np.concatenate([s.aspects for s in scenes])
    angles = np.concatenate([s.angles for s in scenes])
    assert aspects.min() < 0.6 and aspects.max() > 1.6
    assert angles.min() < -90 and angles.max() > 90


def test_every_catalog_class_renders() -> None:
    for name in CLASSES:
        gen = SceneGenerator(SceneConfig(image_size=48, classes=(name,), max_objects=1), seed=0)
        scene = gen(0)
        assert scene.labels.tolist() == [0] and scene.masks[0].sum() >= 4


@pytest.mark.parametrize("size", [16, 19, (16, 40)])
def test_the_smallest_allowed_images_render(size) -> None:
    """16 px is the stated minimum; the clutter's arcs once needed 20."""
    config = SceneConfig(image_size=size, min_object_size=4.0, clutter=1.0, max_distractors=6)
    gen = SceneGenerator(config, seed=0)
    for index in range(20):
        assert gen(index).image.shape[:2] == ((size, size) if isinstance(size, int) else size)


def test_semantic_mask_is_importable_helper() -> None:
    scene = SceneGenerator(SceneConfig(image_size=SIZE), seed=9)(0)
    assert semantic_mask(scene).shape == (SIZE, SIZE)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"image_size": 8}, "image_size must be at least 16"),
        ({"classes": ("triangle", "hexagon")}, "unknown names"),
        ({"classes": ()}, "classes must be a non-empty"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects <= max_objects"),
        ({"max_object_size": 1.5}, "max_object_size must be"),
        ({"max_aspect": 0.5}, "max_aspect must be >= 1"),
        ({"max_rotation": 270}, "max_rotation must be"),
        ({"image_size": 32, "min_object_size": 30}, "smaller than min_object_size"),
    ],
)
def test_config_errors(changes, match) -> None:
    with pytest.raises(ValueError, match=match):
        SceneConfig(**changes)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"clutter": float("inf")}, r"clutter must be a finite number, got inf"),
        ({"clutter": float("nan")}, r"clutter must be a finite number, got nan"),
        ({"clutter": 1e30}, r"clutter must be in \[0, 1e\+06\], got 1e\+30"),
        ({"max_aspect": float("nan")}, r"max_aspect must be a finite number, got nan"),
        ({"max_aspect": float("inf")}, r"max_aspect must be a finite number, got inf"),
        ({"min_object_size": float("nan")}, r"min_object_size must be a finite number"),
        ({"max_rotation": float("nan")}, r"max_rotation must be a finite number"),
        ({"outline_prob": "0.5"}, r"outline_prob must be a finite number, got '0\.5'"),
        ({"min_objects": 1.5, "max_objects": 2.5}, r"min_objects must be an int, got 1\.5"),
        ({"max_objects": 2.0}, r"max_objects must be an int, got 2\.0"),
        ({"max_distractors": True}, r"max_distractors must be an int, got True"),
        ({"image_size": (32.5, 32)}, r"image_size must be an int or \(H, W\) of ints"),
        ({"image_size": float("nan")}, r"image_size must be an int or \(H, W\) of ints"),
    ],
)
def test_config_refuses_non_finite_numbers_and_non_integer_counts(changes, match) -> None:
    """NaN passed every range check (clutter=inf drew NaN images, max_aspect=nan a raw
    numpy OverflowError), and min_objects=1.5 failed only when a scene was drawn."""
    with pytest.raises(ValueError, match=match):
        SceneConfig(**changes)


def test_config_takes_numpy_integers() -> None:
    config = SceneConfig(image_size=np.int64(32), max_objects=np.int64(3), clutter=np.float32(1))
    assert config.image_size == (32, 32) and config.max_objects == 3


def test_seed_must_be_non_negative_int() -> None:
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        SceneGenerator(seed=-1)


def test_synthetic_dataset_factory() -> None:
    ds = synthetic_dataset("segmentation", length=3, seed=2, image_size=32, ignore_border=1)
    assert isinstance(ds, SyntheticSegmentation) and len(ds) == 3 and ds.ignore_border == 1
    assert ds.config.image_size == (32, 32) and ds.seed == 2
    with pytest.raises(ValueError, match="task must be one of"):
        synthetic_dataset("depth")


def test_classification_rejects_object_counts() -> None:
    with pytest.raises(TypeError, match="exactly one object"):
        SyntheticClassification(length=2, max_objects=3)
    ds = SyntheticClassification(length=2, config=SceneConfig(image_size=32, max_objects=4))
    assert ds.config.max_objects == 1


def test_scenes_without_objects_give_empty_targets() -> None:
    det = SyntheticDetection(length=2, seed=0, image_size=32, masks=True, min_objects=0,
                             max_objects=0)
    _, t = det[0]
    assert t["boxes"].shape == (0, 4) and t["boxes"].dtype == torch.float32
    assert t["labels"].shape == (0,) and t["masks"].shape == (0, 32, 32)
    assert t["sizes"].shape == (0,) and t["area"].shape == (0,)
    _, mask = SyntheticSegmentation(length=1, image_size=32, min_objects=0, max_objects=0)[0]
    assert not mask.any()
