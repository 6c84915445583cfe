"""Tests for the U-Net weight map (paper eq. 2)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk
from skimage.segmentation import find_boundaries

from napari_unet.core import weightmap
from napari_unet.core.weightmap import border_weight, unet_weight_map


def reference_weight_map(
    labels: np.ndarray,
    *,
    w0: float,
    sigma: float,
    class_weights: str | tuple[float, float] | None = "balanced",
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Slow, exact eq. 2 on one 2D plane: a full-image distance map per cell."""
    ids = [i for i in np.unique(labels) if i != 0]
    border = np.zeros(labels.shape)
    if len(ids) >= 2:
        dists = np.sort(np.stack([ndimage.distance_transform_edt(labels != i) for i in ids]), 0)
        border = w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
        border[labels != 0] = 0

    known = np.ones(labels.shape, bool) if mask is None else mask
    classes = [labels == 0, labels != 0]
    class_map = np.ones(labels.shape)
    if class_weights == "balanced":
        counts = [np.count_nonzero(c & known) for c in classes]
        n_present = sum(n > 0 for n in counts)
        for c, n in zip(classes, counts, strict=True):
            if n:
                class_map[c] = known.sum() / (n_present * n)
    elif class_weights is not None:
        for c, value in zip(classes, class_weights, strict=True):
            class_map[c] = value
    return np.where(known, class_map + border, 0.0)


def touching_disks(seed: int, shape: tuple[int, int] = (128, 160)) -> np.ndarray:
    """Random overlapping disks; odd seeds get thin background lines between cells."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for cell_id in range(1, rng.integers(20, 61) + 1):
        center = rng.integers(0, shape)
        rr, cc = disk(tuple(center), rng.integers(5, 15), shape=shape)
        labels[rr, cc] = cell_id
    if seed % 2:
        labels[find_boundaries(labels, mode="inner")] = 0
    return labels


def two_columns() -> np.ndarray:
    """7x9 image: cell 1 in column 1, cell 2 in column 4 (a two-pixel gap)."""
    labels = np.zeros((7, 9), np.uint16)
    labels[:, 1] = 1
    labels[:, 4] = 2
    return labels


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("w0", "sigma"), [(10.0, 5.0), (5.0, 2.0), (10.0, 9.0)])
def test_matches_slow_reference_on_touching_cells(seed: int, w0: float, sigma: float) -> None:
    labels = touching_disks(seed)
    got = unet_weight_map(labels, w0=w0, sigma=sigma)
    expected = reference_weight_map(labels, w0=w0, sigma=sigma)
    # The images must exercise the border term, not just the class weights.
    assert (expected - reference_weight_map(labels, w0=0, sigma=sigma)).max() > 0.25 * w0
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("seed", [10, 11])
def test_matches_slow_reference_with_mask(seed: int) -> None:
    labels = touching_disks(seed)
    mask = np.zeros(labels.shape, bool)
    mask[20:90, 30:120] = True
    got = unet_weight_map(labels, mask=mask)
    np.testing.assert_allclose(
        got, reference_weight_map(labels, w0=10, sigma=5, mask=mask), rtol=0, atol=1e-4
    )


def test_hand_checked_two_cells() -> None:
    labels = two_columns()
    w = unet_weight_map(labels, w0=10, sigma=2)
    w_bg, w_fg = 63 / (2 * 49), 63 / (2 * 14)
    expected_row = [
        w_bg + 10 * np.exp(-((1 + 4) ** 2) / 8),  # column 0: d1 = 1, d2 = 4
        w_fg,
        w_bg + 10 * np.exp(-((1 + 2) ** 2) / 8),  # gap: d1 = 1, d2 = 2
        w_bg + 10 * np.exp(-((1 + 2) ** 2) / 8),
        w_fg,
        w_bg + 10 * np.exp(-((1 + 4) ** 2) / 8),
        w_bg + 10 * np.exp(-((2 + 5) ** 2) / 8),
        w_bg + 10 * np.exp(-((3 + 6) ** 2) / 8),
        w_bg + 10 * np.exp(-((4 + 7) ** 2) / 8),
    ]
    np.testing.assert_allclose(w, np.tile(expected_row, (7, 1)), rtol=0, atol=1e-5)


def test_distances_are_euclidean() -> None:
    labels = np.zeros((7, 9), np.int32)
    labels[0, 0] = 1
    labels[6, 8] = 2
    border = border_weight(labels, w0=10, sigma=5)
    # (3, 4) is 5 pixels from both cells: 10 * exp(-10**2 / 50).
    assert border[3, 4] == pytest.approx(10 * np.exp(-2), abs=1e-5)
    assert border[0, 0] == border[6, 8] == 0


def test_no_cells_gives_uniform_weight() -> None:
    labels = np.zeros((20, 30), np.uint8)
    np.testing.assert_array_equal(unet_weight_map(labels), np.ones((20, 30)))
    np.testing.assert_array_equal(border_weight(labels), np.zeros((20, 30)))


def test_single_cell_has_no_border_term() -> None:
    labels = np.zeros((20, 30), np.uint8)
    labels[5:9, 5:12] = 3
    w = unet_weight_map(labels, class_weights=None)
    np.testing.assert_array_equal(w, np.ones((20, 30)))


def test_bool_labels_are_one_cell() -> None:
    labels = two_columns().astype(bool)
    w = unet_weight_map(labels, class_weights=(0.5, 2.0))
    np.testing.assert_array_equal(w, np.where(labels, 2.0, 0.5))


def test_sparse_label_ids() -> None:
    labels = two_columns().astype(np.int64)
    sparse = np.where(labels == 2, 10**12, labels)
    np.testing.assert_array_equal(unet_weight_map(sparse), unet_weight_map(labels))


def test_stack_equals_per_plane() -> None:
    planes = [touching_disks(seed, (48, 64)) for seed in range(4)]
    stack = np.stack(planes).reshape(2, 2, 48, 64)
    mask = np.random.default_rng(0).random(stack.shape) > 0.3
    got = unet_weight_map(stack, w0=7, sigma=3, mask=mask)
    assert got.shape == stack.shape
    for index in np.ndindex(2, 2):
        np.testing.assert_array_equal(
            got[index], unet_weight_map(stack[index], w0=7, sigma=3, mask=mask[index])
        )


def test_mask_zeroes_outside_and_limits_class_counts() -> None:
    labels = two_columns()
    mask = np.zeros(labels.shape, bool)
    mask[:, :4] = True  # cell 2 (column 4) lies outside the mask
    w = unet_weight_map(labels, w0=10, sigma=2, mask=mask)
    assert np.all(w[~mask] == 0)
    w_bg, w_fg = 28 / (2 * 21), 28 / (2 * 7)
    # Cell 2 still counts as the second-nearest cell for the gap.
    expected = np.where(labels == 0, w_bg, w_fg) + border_weight(labels, w0=10, sigma=2)
    np.testing.assert_allclose(w[mask], expected[mask], rtol=0, atol=1e-6)
    assert w[0, 2] > w_bg + 1


def test_empty_mask_gives_zeros() -> None:
    labels = two_columns()
    w = unet_weight_map(labels, mask=np.zeros(labels.shape, bool))
    np.testing.assert_array_equal(w, 0)


def test_class_weights_none_and_tuple() -> None:
    labels = two_columns()
    border = border_weight(labels, w0=10, sigma=2)
    w_none = unet_weight_map(labels, w0=10, sigma=2, class_weights=None)
    w_pair = unet_weight_map(labels, w0=10, sigma=2, class_weights=(0.25, 4.0))
    np.testing.assert_allclose(w_none, 1 + border, atol=1e-6)
    np.testing.assert_allclose(w_pair, np.where(labels == 0, 0.25, 4.0) + border, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64, np.float64, bool])
def test_output_is_float32(dtype: type) -> None:
    w = unet_weight_map(two_columns().astype(dtype))
    assert w.dtype == np.float32
    assert w.shape == (7, 9)


def test_integer_valued_float_labels_are_accepted() -> None:
    labels = two_columns()
    np.testing.assert_array_equal(
        unet_weight_map(labels.astype(np.float32)), unet_weight_map(labels)
    )


@pytest.mark.parametrize(
    ("labels", "kwargs", "match"),
    [
        (np.array([[0.0, 1.5]]), {}, "labels"),
        (np.array([[0.0, np.nan]]), {}, "labels"),
        (np.array([[0, -1]]), {}, "labels"),
        (np.array([[9.223372e18]], np.float32), {}, "below 2\\*\\*53"),  # found by Hypothesis
        (np.array([0, 1, 2]), {}, "labels"),
        (np.array([["a", "b"]]), {}, "labels"),
        (np.zeros((4, 5), int), {"mask": np.ones((5, 4), bool)}, "mask"),
        (np.zeros((4, 5), int), {"class_weights": "inverse"}, "class_weights"),
        (np.zeros((4, 5), int), {"class_weights": (1.0, 2.0, 3.0)}, "class_weights"),
        (np.zeros((4, 5), int), {"class_weights": (-1.0, 2.0)}, "class_weights"),
        (np.zeros((4, 5), int), {"w0": -1.0}, "w0"),
        (np.zeros((4, 5), int), {"sigma": 0.0}, "sigma"),
    ],
)
def test_bad_input_raises(labels: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        unet_weight_map(labels, **kwargs)


def test_border_weight_needs_2d() -> None:
    with pytest.raises(ValueError, match="labels2d"):
        border_weight(np.zeros((2, 4, 5), int))


def test_docstring_example() -> None:
    result = doctest.testmod(weightmap)
    assert result.attempted > 0
    assert result.failed == 0
