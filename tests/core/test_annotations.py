"""What is annotated (marked planes, rectangles, the nothing-marked rule) and its targets."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.annotations import (
    Annotation,
    Crop,
    PlaneTargets,
    Rectangle,
    training_crops,
)
from napari_unet.core.dataset import UNKNOWN, prepare_sample
from synthetic import image_of, touching_disks


def reference_crops(image, labels, *, planes=(), rectangles=(), channel_axis=None):
    """``training_crops`` as it was before :class:`Annotation` (the behaviour to keep)."""
    if channel_axis is not None:
        image = np.moveaxis(np.asarray(image), channel_axis, -3)
    stack = labels.ndim == 3
    if not planes and not rectangles:
        if stack:
            planes = [p for p in range(labels.shape[0]) if np.asarray(labels[p]).any()]
        else:
            planes = [0] if np.asarray(labels).any() else []

    def plane_of(arr, p):
        return np.asarray(arr[p] if stack and p is not None else arr)

    crops = []
    for p in sorted(set(planes)) if stack else ([None] if planes else []):
        lab = plane_of(labels, p)
        if lab.any():
            crops.append(Crop(plane_of(image, p), lab, np.ones(lab.shape, bool), f"plane {p}"))
    for r in rectangles:
        lab = plane_of(labels, r.plane)
        y0, y1 = sorted((max(r.y0, 0), min(r.y1, lab.shape[0])))
        x0, x1 = sorted((max(r.x0, 0), min(r.x1, lab.shape[1])))
        if y1 - y0 < 1 or x1 - x0 < 1 or not lab[y0:y1, x0:x1].any():
            continue
        img = plane_of(image, r.plane)[..., y0:y1, x0:x1]
        crops.append(
            Crop(img, lab[y0:y1, x0:x1], np.ones((y1 - y0, x1 - x0), bool), f"rectangle {r}")
        )
    return crops


def assert_same_crops(got, expected):
    assert [c.source for c in got] == [c.source for c in expected]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.mask.dtype == bool and a.mask.all()


class Lazy:
    """A read-only array read plane by plane (like dask or zarr): no ``__array__``."""

    def __init__(self, data):
        self._data = data
        self.shape, self.ndim, self.dtype = data.shape, data.ndim, data.dtype
        self.reads = 0

    def __getitem__(self, index):
        self.reads += 1
        return self._data[index]


@pytest.fixture
def stack():
    """(image, labels) of 4 planes: plane 0 unpainted, cells on planes 1-3."""
    labels = np.stack([touching_disks(seed=s) for s in range(4)]).astype(np.uint16)
    labels[0] = 0
    image = np.stack([image_of(lab, seed=s) for s, lab in enumerate(labels)])
    return image, labels


# --------------------------------------------------------------------- what is annotated


def test_nothing_marked_planes_with_cells_count(stack):
    image, labels = stack
    ann = Annotation(labels)
    assert not ann.marked and ann.is_stack and ann.n_planes == 4
    assert ann.annotated_planes() == [1, 2, 3]
    assert all(ann.region(p) is None for p in range(4))
    assert [c.source for c in ann.crops(image)] == ["plane 1", "plane 2", "plane 3"]
    # 2D: the image counts if it has cells
    assert Annotation(labels[1]).annotated_planes() == [None]
    assert Annotation(labels[1]).region(None) is None
    assert Annotation(labels[0]).annotated_planes() == []
    assert Annotation(labels[0]).crops(image[0]) == []


def test_marked_planes_and_rectangles_on_a_stack(stack):
    image, labels = stack
    rects = [Rectangle(1, 10, 40, 5, 50), Rectangle(1, 50, 200, 40, 200), Rectangle(0, 0, 9, 0, 9)]
    ann = Annotation(labels, [3, 3], rects)
    assert ann.planes == (3,) and isinstance(ann.rectangles, tuple)
    # plane 2 has cells but is not marked: it does not count any more
    assert ann.annotated_planes() == [0, 1, 3]
    assert ann.region(3) is None
    assert not ann.region(2).any()
    expected = np.zeros(labels.shape[1:], bool)
    expected[10:40, 5:50] = True
    expected[50:, 40:] = True  # clipped to the plane
    np.testing.assert_array_equal(ann.region(1), expected)
    crops = ann.crops(image)
    # plane 0's rectangle holds no cell: skipped; planes first, then rectangles
    assert [c.source for c in crops] == [
        "plane 3",
        f"rectangle {rects[0]}",
        f"rectangle {rects[1]}",
    ]
    np.testing.assert_array_equal(crops[1].labels, labels[1, 10:40, 5:50])
    np.testing.assert_array_equal(crops[2].image, image[1, 50:, 40:])


def test_region_of_a_2d_image():
    labels = touching_disks()
    # a 2D rectangle may say plane 0 (the image) or None
    ann = Annotation(
        labels, rectangles=[Rectangle(0, 5, 20, 30, 40), Rectangle(None, 15, 25, 0, 8)]
    )
    assert ann.rectangles[0].plane is None
    expected = np.zeros(labels.shape, bool)
    expected[5:20, 30:40] = expected[15:25, 0:8] = True
    np.testing.assert_array_equal(ann.region(None), expected)
    np.testing.assert_array_equal(ann.region(0), expected)
    assert ann.annotated_planes() == [None]
    assert Annotation(labels, planes=[0]).region(None) is None  # the image is marked


@pytest.mark.parametrize(
    ("planes", "rectangles"),
    [
        ((), ()),
        ((2, 0, 2), ()),
        ((), (Rectangle(1, 10, 40, 5, 50), Rectangle(2, -5, 30, 70, 120))),
        ((3,), (Rectangle(1, 40, 10, 50, 5), Rectangle(3, 0, 96, 0, 96))),
        ((0,), (Rectangle(0, 0, 50, 0, 50),)),
    ],
)
def test_crops_equal_the_old_training_crops(stack, planes, rectangles):
    image, labels = stack
    expected = reference_crops(image, labels, planes=planes, rectangles=rectangles)
    assert_same_crops(Annotation(labels, planes, rectangles).crops(image), expected)
    got = training_crops(image, labels, planes=planes, rectangles=rectangles)
    assert_same_crops(got, expected)
    # lazy arrays, read plane by plane
    lazy_image, lazy_labels = Lazy(image), Lazy(labels)
    assert_same_crops(Annotation(lazy_labels, planes, rectangles).crops(lazy_image), expected)
    assert lazy_labels.reads >= 1


def test_crops_with_channels_and_2d(stack):
    image, labels = stack
    rgb = np.stack([image, image // 2, image // 3], axis=-1)  # (P, M, N, C)
    rect = (Rectangle(2, 10, 60, 20, 70),)
    got = Annotation(labels, (1,), rect).crops(rgb, channel_axis=-1)
    expected = reference_crops(rgb, labels, planes=(1,), rectangles=rect, channel_axis=-1)
    assert_same_crops(got, expected)
    assert got[0].image.shape == (3, 96, 96) and got[1].image.shape == (3, 50, 50)
    for planes in ((), (0,)):
        assert_same_crops(
            Annotation(labels[1], planes).crops(image[1]),
            reference_crops(image[1], labels[1], planes=planes),
        )
    rect2d = (Rectangle(None, 0, 48, 0, 48),)
    assert_same_crops(
        Annotation(labels[1], rectangles=rect2d).crops(image[1]),
        reference_crops(image[1], labels[1], rectangles=rect2d),
    )


# --------------------------------------------------------------------- targets


def rectangle_stack():
    """A stack whose plane 1 has cells inside rows 20:70, cols 10:80 and one far outside."""
    labels = np.zeros((3, 96, 96), np.uint16)
    labels[1, 20:70, 10:80] = touching_disks()[20:70, 10:80]
    labels[1, 85:92, 85:92] = 99  # painted, but outside the annotated rectangle
    labels[2] = touching_disks(seed=3)
    image = np.stack([image_of(lab, seed=s) for s, lab in enumerate(labels)])
    return image, labels, Rectangle(1, 20, 70, 10, 80)


@pytest.mark.parametrize("weighting", ["border", "unet", "none"])
def test_targets_are_what_training_uses_for_a_rectangle(weighting):
    image, labels, rect = rectangle_stack()
    ann = Annotation(labels, rectangles=[rect])
    params = {"weighting": weighting, "w0": 8.0, "sigma": 4.0}
    t = ann.targets(1, **params)
    assert isinstance(t, PlaneTargets) and t.plane == 1
    assert t.weights.dtype == np.float32 and t.labels.dtype == np.int32
    # training trains on the rectangle's crop: the map shown is the map trained on
    (crop,) = ann.crops(image)
    trained = prepare_sample(crop.image, crop.labels, crop.mask, **params)
    np.testing.assert_allclose(t.weights[20:70, 10:80], trained.weights, rtol=1e-6)
    np.testing.assert_array_equal(t.labels[20:70, 10:80], trained.labels)
    np.testing.assert_array_equal(t.target[20:70, 10:80], trained.target)
    assert not t.weights[t.region == 0].any() and (t.target[~t.region] == UNKNOWN).all()
    assert not t.labels[88, 88]  # the cell outside the rectangle is unknown
    # and the plane-wide sample with the rectangle as its mask
    whole = prepare_sample(image[1], labels[1], t.region, **params)
    np.testing.assert_allclose(t.weights, whole.weights, rtol=1e-6)


def test_targets_of_a_marked_plane_and_a_2d_image():
    image, labels, rect = rectangle_stack()
    ann = Annotation(labels, planes=[2], rectangles=[rect])
    t = ann.targets(2, weighting="unet", w0=10.0, sigma=5.0)
    assert t.region is None and not t.outside and (t.target >= 0).all()
    sample = prepare_sample(image[2], labels[2], weighting="unet")
    np.testing.assert_allclose(t.weights, sample.weights, rtol=1e-6)
    np.testing.assert_array_equal(t.labels, sample.labels)
    t0 = ann.targets(0)
    assert t0.outside and not t0.weights.any() and (t0.target == UNKNOWN).all()
    flat = Annotation(labels[2]).targets(None)  # 2D, nothing marked: the whole image
    np.testing.assert_allclose(flat.weights, prepare_sample(image[2], labels[2]).weights)
    np.testing.assert_allclose(Annotation(labels[2]).targets(0).weights, flat.weights)


def test_iter_targets_planes_top_and_outside():
    _, labels, rect = rectangle_stack()
    ann = Annotation(labels, rectangles=[rect])
    items = list(ann.iter_targets(w0=3.0, sigma=2.0))  # None: the annotated planes
    assert [t.plane for t in items] == [1]
    (t,) = items
    cells = t.labels > 0
    assert t.top == pytest.approx(3.0 + max(t.weights[cells].max(), 1.0))
    items = list(ann.iter_targets([0, 1, 2], weighting="unet", w0=3.0, sigma=2.0))
    assert [t.outside for t in items] == [True, False, True]
    assert not items[0].weights.any() and not items[2].weights.any()
    # class balance: the top is w0 plus the larger class weight
    balanced = items[1]
    known = balanced.region
    fg_weight = balanced.weights[(balanced.labels > 0) & known].max()
    assert fg_weight > 1 and balanced.top == pytest.approx(3.0 + fg_weight)
    # nothing marked: every plane with cells, 2D: [None]
    assert [t.plane for t in Annotation(labels).iter_targets()] == [1, 2]
    assert [t.plane for t in Annotation(labels[1]).iter_targets()] == [None]


def test_painting_after_targets_does_not_change_them():
    _, labels, _ = rectangle_stack()
    t = Annotation(labels).targets(2)
    before = t.weights.copy()
    labels[2] = 0
    np.testing.assert_array_equal(t.weights, before)


# --------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("labels", "kwargs", "match"),
    [
        (np.zeros((2, 3, 8, 8)), {}, "2D"),
        (np.zeros(8), {}, "2D"),
        (np.zeros((3, 8, 8)), {"rectangles": [Rectangle(None, 0, 4, 0, 4)]}, "need a plane"),
        (np.zeros((3, 8, 8)), {"rectangles": [Rectangle(3, 0, 4, 0, 4)]}, "out of range"),
        (np.zeros((3, 8, 8)), {"planes": [3]}, "out of range"),
        (np.zeros((3, 8, 8)), {"planes": [-1]}, "out of range"),
        (np.zeros((3, 8, 8)), {"planes": [1.5]}, "plane indices"),
        (np.zeros((8, 8)), {"planes": [1]}, "out of range"),
        (np.zeros((8, 8)), {"rectangles": [Rectangle(2, 0, 4, 0, 4)]}, "2D"),
        (np.zeros((8, 8)), {"rectangles": [(0, 0, 4, 0, 4)]}, "Rectangle"),
    ],
)
def test_bad_annotation(labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Annotation(labels, **kwargs)


def test_bad_plane_and_image():
    ann = Annotation(np.zeros((3, 8, 8), np.uint8))
    for plane, match in [(3, "out of range"), (None, "plane index")]:
        with pytest.raises(ValueError, match=match):
            ann.targets(plane)
        with pytest.raises(ValueError, match=match):
            ann.region(plane)
    with pytest.raises(ValueError, match="must be None"):
        Annotation(np.zeros((8, 8))).targets(1)
    with pytest.raises(ValueError, match="planes"):
        ann.crops(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="last two dimensions"):
        ann.crops(np.zeros((3, 8, 9)))
    with pytest.raises(ValueError, match="weighting"):
        Annotation(np.ones((8, 8), np.uint8)).targets(None, weighting="paper")


def test_exported_from_core():
    import napari_unet.core as core

    assert core.Annotation is Annotation
    assert core.training_crops is training_crops and core.Rectangle is Rectangle
