"""Tests for napari_unet.core.augment (elastic deformation and sample augmentation)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.core.augment import (
    _node_displacements,
    _sampling_coordinates,
    augment_sample,
    elastic_deform,
)


def _block_labels(
    shape: tuple[int, int], block: int, ids: np.ndarray, seed: int = 0
) -> np.ndarray:
    """Label image of ``block x block`` squares with ids drawn from ``ids``."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(ids, size=(-(-shape[0] // block), -(-shape[1] // block)))
    return np.kron(coarse, np.ones((block, block), dtype=coarse.dtype))[: shape[0], : shape[1]]


def _interior(labels: np.ndarray) -> np.ndarray:
    """1.0 where the 5 x 5 neighbourhood holds a single label value, else 0.0.

    Warped along with the labels (linear or cubic), a value of 1 means every
    interpolation tap lies inside one region, so the warped values must agree there.
    """
    inside = ndi.maximum_filter(labels, 5) == ndi.minimum_filter(labels, 5)
    return inside.astype(np.float32)


# --- label preservation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "ids",
    [
        np.arange(0, 40, dtype=np.uint8),
        np.arange(0, 60_000, 1500, dtype=np.uint16),
        np.arange(2**32 - 40, 2**32, dtype=np.uint32),
        np.arange(-1, 39, dtype=np.int32),
        # Consecutive ids around 2**31 collapse if they pass through float32.
        np.concatenate([[-1, 0], np.arange(2**31 - 20, 2**31 + 20)]).astype(np.int64),
    ],
    ids=["uint8", "uint16", "uint32", "int32", "int64"],
)
def test_nearest_keeps_label_values_exactly(ids: np.ndarray) -> None:
    labels = _block_labels((96, 80), 8, ids)
    (out,) = elastic_deform(labels, sigma=3.0, rng=1)
    assert out.dtype == labels.dtype
    assert set(np.unique(out)) <= set(np.unique(labels))
    # With a small deformation nearly every region survives.
    assert len(np.unique(out)) >= 0.9 * len(np.unique(labels))
    assert np.mean(out == labels) > 0.5


def test_bool_labels_default_to_nearest() -> None:
    mask = _block_labels((64, 64), 8, np.array([False, True]))
    (out,) = elastic_deform(mask, sigma=5.0, rng=0)
    (ref,) = elastic_deform(mask.astype(np.uint8), sigma=5.0, rng=0)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, ref.astype(bool))


# --- identity, determinism ----------------------------------------------------------------


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32, np.float64])
def test_sigma_zero_is_identity(order: int, dtype: type) -> None:
    rng = np.random.default_rng(0)
    array = (rng.random((3, 33, 47)) * 200).astype(dtype)
    (out,) = elastic_deform(array, sigma=0.0, orders=[order], rng=0)
    assert out.dtype == array.dtype
    assert out is not array
    np.testing.assert_array_equal(out, array)


def test_same_seed_same_result_different_seed_different() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((64, 64), dtype=np.float32)
    labels = _block_labels((64, 64), 8, np.arange(30))
    a = elastic_deform(image, labels, rng=7)
    b = elastic_deform(image, labels, rng=np.random.default_rng(7))
    c = elastic_deform(image, labels, rng=8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])


# --- alignment and boundary semantics -----------------------------------------------------


def test_arrays_are_warped_jointly() -> None:
    labels = _block_labels((96, 96), 12, np.arange(1, 50))
    as_float = labels.astype(np.float32)
    # Large sigma so that many samples are mirrored at the borders.
    nearest, nearest_float = elastic_deform(labels, as_float, sigma=15.0, orders=(0, 0), rng=3)
    np.testing.assert_array_equal(nearest_float, nearest.astype(np.float32))

    nearest, linear, inside = elastic_deform(
        labels, as_float, _interior(labels), sigma=15.0, orders=(0, 1, 1), rng=3
    )
    inside = inside > 1 - 1e-5
    assert inside.mean() > 0.3
    np.testing.assert_array_equal(np.rint(linear)[inside], nearest[inside])


@pytest.mark.parametrize("order", [0, 1])
def test_matches_scipy_mirror_mode(order: int) -> None:
    """Mirror boundaries (d c b | a b c d | c b a) as in scipy's mode='mirror'."""
    image = np.random.default_rng(0).random((40, 57)).astype(np.float32)
    # Large displacements: many samples fall outside the image and are mirrored.
    nodes = _node_displacements(3, 30.0, np.random.default_rng(1))
    cy, cx = (c.numpy().astype(np.float64) for c in _sampling_coordinates(nodes, image.shape))
    assert cy.min() < 0 and cx.max() > image.shape[1] - 1
    expected = ndi.map_coordinates(image, [cy, cx], order=order, mode="mirror")
    (out,) = elastic_deform(image, sigma=30.0, orders=[order], rng=1)
    if order == 0:
        # float32 vs float64 coordinates may round differently on rare exact ties.
        assert np.mean(out != expected) < 1e-3
    else:
        np.testing.assert_allclose(out, expected, atol=1e-5)


# --- displacement field ---------------------------------------------------------------------


def test_field_passes_through_node_draws_and_is_smooth() -> None:
    shape = (65, 97)  # nodes of a 3 x 3 grid at rows 0, 32, 64 and columns 0, 48, 96
    for seed in range(5):
        nodes = _node_displacements(3, 10.0, np.random.default_rng(seed))
        cy, cx = (c.numpy() for c in _sampling_coordinates(nodes, shape))
        dy = cy - np.arange(shape[0])[:, None]
        dx = cx - np.arange(shape[1])[None, :]
        rows, cols = np.ix_([0, 32, 64], [0, 48, 96])
        np.testing.assert_allclose(dy[rows, cols], nodes[0], atol=1e-4)
        np.testing.assert_allclose(dx[rows, cols], nodes[1], atol=1e-4)
        # Smooth: neighbouring pixels move by far less than the node spacing allows.
        for field, node in ((dy, nodes[0]), (dx, nodes[1])):
            spread = node.max() - node.min()
            assert np.abs(np.diff(field, axis=0)).max() <= 1.5 * spread / 32
            assert np.abs(np.diff(field, axis=1)).max() <= 1.5 * spread / 48


def test_displacement_at_nodes_is_the_gaussian_draw() -> None:
    """Warping coordinate ramps reveals the displacement; at the nodes it is the draw."""
    grid, spacing, sigma = 21, 10, 2.0
    size = (grid - 1) * spacing + 1
    y, x = np.mgrid[:size, :size].astype(np.float32)
    out_y, out_x = elastic_deform(y, x, grid=grid, sigma=sigma, orders=(1, 1), rng=5)
    nodes = _node_displacements(grid, sigma, np.random.default_rng(5))
    # Interior nodes only: at the border nodes the displaced position may be mirrored.
    at = np.s_[spacing:-spacing:spacing, spacing:-spacing:spacing]
    shifts = np.stack([out_y[at] - y[at], out_x[at] - x[at]])
    np.testing.assert_allclose(shifts, nodes[:, 1:-1, 1:-1], atol=1e-3)
    assert np.std(shifts) == pytest.approx(sigma, rel=0.1)
    assert abs(np.mean(shifts)) < 3 * sigma / np.sqrt(shifts.size)


# --- shapes and dtypes ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 40), (3, 40, 40), (2, 3, 31, 52), (50, 23)])
def test_shape_dtype_and_contiguity_preserved(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float32)
    labels = rng.integers(0, 5, shape[-2:]).astype(np.uint16)
    weights = rng.random(shape[-2:]).astype(np.float64)
    outputs = elastic_deform(image, labels, weights, rng=0)
    for out, original in zip(outputs, (image, labels, weights), strict=True):
        assert out.shape == original.shape
        assert out.dtype == original.dtype
        assert out.flags.c_contiguous


def test_default_orders() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((48, 48), dtype=np.float32)
    weights = rng.random((48, 48), dtype=np.float32)
    labels = rng.integers(0, 9, (48, 48))
    default = elastic_deform(image, weights, labels, rng=2)
    explicit = elastic_deform(image, weights, labels, orders=(3, 1, 0), rng=2)
    for x, y in zip(default, explicit, strict=True):
        np.testing.assert_array_equal(x, y)
    linear = elastic_deform(image, rng=2, orders=[1])[0]
    assert not np.array_equal(default[0], linear)


def test_uint8_cubic_is_rounded_and_clipped() -> None:
    # Sharp 0/255 edges make cubic interpolation overshoot below 0 and above 255.
    image = (_block_labels((64, 64), 4, np.array([0, 1])) * 255).astype(np.uint8)
    (out,) = elastic_deform(image, sigma=6.0, orders=[3], rng=0)
    (as_float,) = elastic_deform(image.astype(np.float32), sigma=6.0, orders=[3], rng=0)
    assert out.dtype == np.uint8
    assert as_float.min() < -1 and as_float.max() > 256
    np.testing.assert_array_equal(out, np.clip(np.rint(as_float), 0, 255))


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrays", "kwargs", "match"),
    [
        ((np.zeros((8, 8)), np.zeros((8, 9))), {}, r"arrays\[1\].*\(8, 9\)"),
        ((np.zeros((8, 8)), np.zeros(8)), {}, r"arrays\[1\].*at least 2 dimensions"),
        ((np.zeros((8, 8)),), {"orders": (0, 1)}, r"orders.*\(1\), got 2"),
        ((np.zeros((8, 8)),), {"orders": [2]}, r"orders\[0\].*got 2"),
        ((np.zeros((8, 8)),), {"grid": 1}, r"grid.*got 1"),
        ((np.zeros((8, 8)),), {"sigma": -1.0}, r"sigma.*got -1.0"),
        ((np.zeros((8, 8)),), {"sigma": float("nan")}, r"sigma.*got nan"),
        ((np.zeros((8, 8), dtype=complex),), {}, r"arrays\[0\].*complex"),
        ((), {}, r"arrays"),
    ],
)
def test_invalid_input_raises(arrays: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        elastic_deform(*arrays, **kwargs)


# --- augment_sample -----------------------------------------------------------------------


def _sample(shape: tuple[int, int] = (64, 64)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (with -1 for unknown), image = [labels, interior mask], weights = labels + 0.25."""
    labels = _block_labels(shape, 16, np.arange(-1, 30)).astype(np.int32)
    image = np.stack([labels.astype(np.float32), _interior(labels)])
    weights = labels.astype(np.float32) + 0.25
    return image, labels, weights


@pytest.mark.parametrize("seed", range(5))
def test_augment_sample_keeps_arrays_aligned(seed: int) -> None:
    image, labels, weights = _sample()
    out_image, out_labels, out_weights = augment_sample(
        image, labels, weights, rng=seed, sigma=8.0, intensity=False
    )
    assert set(np.unique(out_labels)) <= set(np.unique(labels))
    assert -1 in out_labels
    inside = np.abs(out_image[1] - 1) < 1e-4
    assert inside.mean() > 0.2
    np.testing.assert_array_equal(np.rint(out_image[0])[inside], out_labels[inside])
    np.testing.assert_allclose(out_weights[inside], out_labels[inside] + 0.25, atol=1e-4)


def test_augment_sample_outputs() -> None:
    image, labels, _ = _sample()
    out_image, out_labels, out_weights = augment_sample(image, labels, rng=0)
    assert out_weights is None
    assert out_image.shape == image.shape and out_image.dtype == image.dtype
    assert out_labels.shape == labels.shape and out_labels.dtype == labels.dtype
    assert out_image.flags.c_contiguous and out_labels.flags.c_contiguous


def test_augment_sample_reproducible() -> None:
    image, labels, weights = _sample()
    a = augment_sample(image, labels, weights, rng=11)
    b = augment_sample(image, labels, weights, rng=11)
    c = augment_sample(image, labels, weights, rng=12)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_augment_sample_flips_and_rotations() -> None:
    image, labels, weights = _sample((32, 48))
    seen = set()
    for seed in range(30):
        out_image, out_labels, out_weights = augment_sample(
            image, labels, weights, rng=seed, elastic=False, intensity=False
        )
        assert out_image.shape == image.shape and out_labels.shape == labels.shape
        assert out_image.flags.c_contiguous and out_weights.flags.c_contiguous
        variants = {
            (flip_y, flip_x): labels[:: -1 if flip_y else 1, :: -1 if flip_x else 1]
            for flip_y in (False, True)
            for flip_x in (False, True)
        }
        match = [key for key, variant in variants.items() if np.array_equal(out_labels, variant)]
        assert len(match) == 1
        np.testing.assert_array_equal(out_image[0], out_labels.astype(np.float32))
        np.testing.assert_array_equal(out_weights, out_labels + np.float32(0.25))
        seen.add(match[0])
    assert len(seen) == 4  # every flip combination (rot90 by 180 degrees included) occurs


def test_augment_sample_square_rotations() -> None:
    labels = np.arange(16).reshape(4, 4)
    rotations = {k: np.rot90(labels, k) for k in range(4)}
    seen = set()
    for seed in range(40):
        _, out_labels, _ = augment_sample(
            labels.astype(np.float32), labels, rng=seed, elastic=False, flips=False
        )
        seen.update(k for k, r in rotations.items() if np.array_equal(out_labels, r))
    assert seen == {0, 1, 2, 3}


def test_augment_sample_intensity_is_monotonic_and_mild() -> None:
    image = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    labels = np.zeros((32, 32), dtype=np.int32)
    for seed in range(10):
        out, out_labels, _ = augment_sample(
            image, labels, rng=seed, elastic=False, flips=False, rot90=False
        )
        np.testing.assert_array_equal(out_labels, labels)
        assert not np.array_equal(out, image)
        assert np.all(np.diff(out.ravel()[np.argsort(image.ravel())]) >= 0)
        assert -0.1 - 1e-6 <= out.min() and out.max() <= 1.2 + 1e-6


def test_augment_sample_invalid_input() -> None:
    image, labels, weights = _sample()
    with pytest.raises(ValueError, match=r"image.*uint8"):
        augment_sample(image.astype(np.uint8), labels)
    with pytest.raises(ValueError, match=r"image.*\(64,\)"):
        augment_sample(image[0, 0], labels)
    with pytest.raises(ValueError, match=r"labels.*\(63, 64\)"):
        augment_sample(image, labels[:-1])
    with pytest.raises(ValueError, match=r"weights.*\(64, 63\)"):
        augment_sample(image, labels, weights[:, :-1])
