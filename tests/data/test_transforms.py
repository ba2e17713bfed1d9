"""Joint transforms keep images, boxes, masks and areas consistent; detection collate."""

from __future__ import annotations

import re

import pytest
import torch

from deformconv.data import SyntheticDetection, SyntheticSegmentation, detection_collate
from deformconv.data import transforms as T
from deformconv.data.scene import boxes_from_masks


def _sample(size: int = 64, seed: int = 0):
    return SyntheticDetection(length=4, seed=seed, image_size=size, masks=True,
                              max_objects=4, min_objects=2)[1]


def _mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(boxes_from_masks(masks.bool().numpy()))


def test_hflip_moves_boxes_with_masks_and_is_an_involution() -> None:
    image, target = _sample()
    original = target["boxes"].clone()
    fimage, ft = T.hflip(image, target)
    assert torch.equal(fimage, image.flip(-1))
    assert torch.equal(ft["boxes"], _mask_boxes(ft["masks"]))
    back_image, back = T.hflip(fimage, ft)
    assert torch.equal(back_image, image) and torch.equal(back["boxes"], target["boxes"])
    assert torch.equal(ft["labels"], target["labels"])
    assert torch.equal(target["boxes"], original)  # the input target is not modified


@pytest.mark.parametrize("k", [1, 2, 3, -1, 4])
def test_rot90_turns_boxes_with_masks_on_non_square_images(k: int) -> None:
    image, target = T.crop(*_sample(), top=0, left=8, height=64, width=48)  # (3, 64, 48)
    turned, t = T.rot90(image, target, k)
    assert torch.equal(turned, image.rot90(k, (-2, -1)))
    assert torch.equal(t["boxes"], _mask_boxes(t["masks"]))
    assert torch.equal(t["labels"], target["labels"])
    mask = SyntheticSegmentation(length=1, seed=2, image_size=32)[0][1]
    assert torch.equal(T.rot90(image[:, :32, :32], mask, k)[1], mask.rot90(k, (-2, -1)))


def test_random_rot90_draws_all_four_turns() -> None:
    image = torch.arange(3 * 4 * 4, dtype=torch.float32).view(3, 4, 4)
    torch.manual_seed(0)
    seen = {T.RandomRot90()(image, 0)[0].flatten()[0].item() for _ in range(40)}
    assert len(seen) == 4


def test_resize_scales_boxes_area_and_masks() -> None:
    image, target = _sample(64)
    out, t = T.resize(image, target, (96, 128))
    assert out.shape == (3, 96, 128) and t["masks"].shape[-2:] == (96, 128)
    scale = torch.tensor([2.0, 1.5, 2.0, 1.5])
    assert torch.allclose(t["boxes"], target["boxes"] * scale)
    assert torch.allclose(t["area"], target["area"] * 3.0)
    wh = t["boxes"][:, 2:] - t["boxes"][:, :2]
    assert torch.allclose(t["sizes"], (wh[:, 0] * wh[:, 1]).sqrt())
    # nearest-resized masks agree with the scaled boxes to within a pixel
    assert (t["boxes"] - _mask_boxes(t["masks"])).abs().max() <= 1.0
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_crop_clips_boxes_drops_empty_and_recounts_area() -> None:
    image, target = _sample(64)
    box = target["boxes"][0]
    # a window that starts right after object 0: it must disappear
    left = int(box[2])
    out, t = T.crop(image, target, 0, left, 64, 64 - left)
    assert out.shape == (3, 64, 64 - left)
    assert len(t["boxes"]) == len(t["labels"]) == len(t["masks"]) == len(t["area"])
    assert len(t["boxes"]) < len(target["boxes"])
    assert torch.equal(t["boxes"], _mask_boxes(t["masks"]))
    assert torch.equal(t["area"], t["masks"].flatten(1).sum(1).float())
    assert bool((t["boxes"][:, 2] <= 64 - left).all())


def test_crop_without_masks_scales_area_with_box() -> None:
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1]),
              "area": torch.tensor([50.0])}
    _, t = T.crop(torch.zeros(3, 20, 20), target, 0, 5, 20, 20)
    assert torch.equal(t["boxes"], torch.tensor([[0.0, 0.0, 5.0, 10.0]]))
    assert torch.allclose(t["area"], torch.tensor([25.0]))


def test_integer_boxes_and_areas_are_moved_in_float() -> None:
    """Integer boxes (as parsed from annotation files) used to be scaled in their own dtype
    (halved to [0, 0, 0, 0] and kept) and a cut area's ratio rounded to 0."""
    image = torch.rand(3, 40, 60)
    target = {"boxes": torch.tensor([[10, 5, 25, 30]]), "labels": torch.tensor([1]),
              "area": torch.tensor([375])}
    _, resized = T.resize(image, target, (20, 30))
    assert torch.equal(resized["boxes"], torch.tensor([[5.0, 2.5, 12.5, 15.0]]))
    assert torch.equal(resized["area"], torch.tensor([93.75]))
    _, cut = T.crop(image, target, 0, 0, 20, 20)
    assert torch.equal(cut["boxes"], torch.tensor([[10.0, 5.0, 20.0, 20.0]]))
    assert torch.equal(cut["area"], torch.tensor([150.0]))
    for _, moved in (T.hflip(image, target), T.rot90(image, target, 1)):
        assert moved["boxes"].dtype == torch.float32
    assert target["boxes"].dtype == torch.int64  # the caller's dict is left as it was


def test_crop_pads_segmentation_with_ignore() -> None:
    image, mask = SyntheticSegmentation(length=1, seed=0, image_size=32)[0]
    out, m = T.crop(image, mask, -4, -2, 40, 36, fill=0.5)
    assert out.shape == (3, 40, 36) and m.shape == (40, 36)
    assert torch.equal(m[4:36, 2:34], mask)
    assert bool((m[:4] == 255).all()) and bool((m[:, :2] == 255).all())
    assert bool((out[:, :4] == 0.5).all())


def test_random_scale_and_crop_give_fixed_size_batches() -> None:
    ds = SyntheticSegmentation(length=6, seed=0, image_size=48)
    tf = T.Compose([T.RandomHorizontalFlip(), T.RandomScale((0.5, 1.5)), T.RandomCrop(40)])
    sizes = set()
    for i in range(len(ds)):
        image, mask = ds[i]
        scaled, _ = T.RandomScale((0.5, 1.5))(image, mask)
        sizes.add(scaled.shape[-1])
        out, m = tf(image, mask)
        assert out.shape == (3, 40, 40) and m.shape == (40, 40) and m.dtype == torch.int64
        assert set(m.unique().tolist()) <= set(range(11)) | {255}
    assert len(sizes) > 1 and min(sizes) >= 24 and max(sizes) <= 72


def test_random_transforms_follow_the_global_seed() -> None:
    image, target = _sample()
    tf = T.Compose([T.RandomHorizontalFlip(), T.RandomScale((0.5, 2.0))])
    torch.manual_seed(7)
    a = tf(image, target)
    torch.manual_seed(7)
    b = tf(image, target)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    flips = [bool(torch.equal(T.RandomHorizontalFlip(0.5)(image, 0)[0], image))
             for _ in range(40)]
    assert 5 < sum(flips) < 35


def test_classification_target_passes_through() -> None:
    image = torch.rand(3, 20, 30)
    out, label = T.Compose([T.RandomHorizontalFlip(1.0), T.Resize(10)])(image, 3)
    assert out.shape == (3, 10, 10) and label == 3


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="p must be in"):
        T.RandomHorizontalFlip(1.5)
    with pytest.raises(ValueError, match="scale_range"):
        T.RandomScale((2.0, 1.0))
    with pytest.raises(ValueError, match="size must be positive"):
        T.RandomCrop(0)
    with pytest.raises(ValueError, match="image must be a"):
        T.hflip(torch.rand(20, 20), None)


def test_bad_sizes_turns_and_transforms_are_named() -> None:
    image = torch.rand(3, 20, 30)
    assert T.resize(image, 3, 10)[0].shape == (3, 10, 10)  # an int is a square, as in Resize
    with pytest.raises(TypeError, match=r"size must be an int or a pair of ints, got 10\.5"):
        T.resize(image, 3, 10.5)
    with pytest.raises(TypeError, match=r"size must be an int or a pair of ints, got \(8\.0, 8"):
        T.Resize((8.0, 8))
    with pytest.raises(ValueError, match=r"size must be positive, got \(4, 0\)"):
        T.resize(image, 3, (4, 0))
    with pytest.raises(TypeError, match=r"k must be an int, got 1\.5"):
        T.rot90(image, 3, k=1.5)
    with pytest.raises(TypeError, match=r"transforms\[1\] must be a callable .* got 1"):
        T.Compose([T.hflip, 1])
    with pytest.raises(TypeError, match="transforms must be a list of transforms, got 3"):
        T.Compose(3)


_TRANSFORMS = {
    "hflip": T.hflip,
    "rot90": T.rot90,
    "resize": lambda image, target: T.resize(image, target, (5, 8)),
    "crop": lambda image, target: T.crop(image, target, 2, 2, 6, 6),
    "padding crop": lambda image, target: T.crop(image, target, -2, -2, 14, 20),
}


@pytest.mark.parametrize("transform", _TRANSFORMS.values(), ids=_TRANSFORMS.keys())
@pytest.mark.parametrize(("target", "match"), [
    (torch.zeros(20, 32, dtype=torch.int64),
     r"target mask must have the image's size \(10, 16\), got \(20, 32\)"),
    (torch.zeros(10, 16, dtype=torch.int8),
     r"target mask must have an integer dtype that holds 255 .*, got torch\.int8"),
    (torch.zeros(10, 16, dtype=torch.float32), r"integer dtype .*, got torch\.float32"),
    (torch.zeros(1, 10, 16, dtype=torch.int64),
     r"target tensor must be a 0-d class label or an \(H, W\) mask, got shape \(1, 10, 16\)"),
    ({"boxes": torch.zeros(1, 4), "labels": torch.ones(1, dtype=torch.int64),
      "masks": torch.zeros(1, 20, 32, dtype=torch.uint8)},
     r"target\['masks'\] must be a \(K, H, W\) tensor of the image's size \(H, W\) = "
     r"\(10, 16\), got \(1, 20, 32\)"),
    ({"labels": torch.ones(1, dtype=torch.int64)},
     r"target\['boxes'\] must be a \(K, 4\) tensor, got NoneType"),
    ({"boxes": torch.zeros(2, 4), "labels": torch.ones(3, dtype=torch.int64)},
     r"target\['labels'\] must have one row per box \(2\), got shape \(3,\)"),
], ids=["mask size", "int8 mask", "float mask", "3-d mask", "masks size", "no boxes",
        "labels length"])
def test_targets_that_do_not_fit_the_image_are_refused(transform, target, match) -> None:
    """A target of another size than the image came back misaligned without an error; a
    dict without boxes raised KeyError, an int8 mask a RuntimeError in a padding crop."""
    with pytest.raises(ValueError, match=match):
        transform(torch.rand(3, 10, 16), target)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: T.RandomHorizontalFlip("a"), "p must be a finite number, got 'a'"),
    (lambda: T.RandomHorizontalFlip(1.5), "p must be in [0, 1], got 1.5"),
    (lambda: T.RandomScale(("a", 2)), "scale_range must be two finite numbers 0 < low <= high"),
    (lambda: T.RandomScale(2.0), "scale_range must be two finite numbers 0 < low <= high"),
    (lambda: T.RandomScale((0.5, 2.0, 3.0)), "got (0.5, 2.0, 3.0)"),
    (lambda: T.RandomScale((2.0, 0.5)), "0 < low <= high, got (2.0, 0.5)"),
])
def test_random_transforms_name_a_bad_probability_or_range(make, message) -> None:
    """p='a' and scale_range=('a', 2) raised Python's '<=' not supported between ...,
    scale_range=2.0 'cannot unpack non-iterable float'."""
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        make()


def test_empty_targets_survive_every_transform() -> None:
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "masks": torch.zeros(0, 16, 16, dtype=torch.uint8), "area": torch.zeros(0)}
    tf = T.Compose([T.RandomHorizontalFlip(1.0), T.RandomScale((1.5, 1.5)), T.RandomCrop(20)])
    out, t = tf(torch.rand(3, 16, 16), target)
    assert out.shape == (3, 20, 20) and t["boxes"].shape == (0, 4)
    assert t["masks"].shape == (0, 20, 20)


def test_detection_collate() -> None:
    ds = SyntheticDetection(length=3, seed=0, image_size=32)
    images, targets = detection_collate([ds[i] for i in range(3)])
    assert len(images) == len(targets) == 3
    assert images[0].shape == (3, 32, 32) and targets[2]["image_id"] == 2
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=detection_collate)
    images, targets = next(iter(loader))
    assert len(images) == 2 and "boxes" in targets[1]
    with pytest.raises(ValueError, match="batch item 0"):
        detection_collate([torch.zeros(3)])


@pytest.mark.parametrize(("box", "error", "match"), [
    ((0, 0, -3, 5), ValueError, r"height must be > 0, got -3"),
    ((0, 0, 5, 0), ValueError, r"width must be > 0, got 0"),
    ((1.5, 0, 5, 5), TypeError, r"top must be an int, got 1\.5"),
    ((0, torch.tensor(1.0), 5, 5), TypeError, r"left must be an int, got tensor\(1\.\)"),
])
def test_crop_names_a_bad_window(box, error, match) -> None:
    """A height of -3 gave a 7-row crop and dropped every box; a float top failed in a
    slice naming nothing."""
    mask = torch.zeros(10, 12, dtype=torch.int64)
    with pytest.raises(error, match=match):
        T.crop(torch.rand(3, 10, 12), mask, *box)


def test_crop_takes_one_element_integer_tensors() -> None:
    """A window drawn with torch.randint (as before the argument checks) still crops."""
    image = torch.rand(3, 10, 12)
    out, _ = T.crop(image, None, torch.tensor(1), torch.tensor([2]), torch.tensor(5),
                    torch.tensor(4, dtype=torch.int32))
    assert torch.equal(out, image[:, 1:6, 2:6])
