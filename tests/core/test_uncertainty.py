import math

import numpy as np
import pytest

from napari_unet.core import SuggestedRegion, next_region, uncertainty_map
from napari_unet.core.annotations import Rectangle


def probs(fg: np.ndarray) -> np.ndarray:
    fg = np.asarray(fg, np.float32)
    return np.stack([1 - fg, fg])


def slow_entropy(p: float) -> float:
    """Binary entropy in bits, one pixel at a time."""
    return -sum(q * math.log(q, 2) for q in (p, 1 - p) if q > 0)


def confident_plane(shape=(96, 128), seed=0) -> np.ndarray:
    """Foreground probability of soft-edged disks: near 0 or 1, unsure only on the edges."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices(shape)
    fg = np.zeros(shape)
    for cy, cx in [(20, 20), (20, 60), (70, 25), (30, 105)]:
        dist = np.hypot(rows - cy, cols - cx) - 9
        fg = np.maximum(fg, 1 / (1 + np.exp(2.0 * dist)))  # a 1-2 px wide soft edge
    return np.clip(fg + rng.normal(0, 0.01, shape), 0.005, 0.995)


def test_entropy_equals_the_slow_reference():
    rng = np.random.default_rng(1)
    p = rng.dirichlet([1.0, 1.0, 1.0], size=(7, 9)).transpose(2, 0, 1)  # 3 classes
    p[:, 0, :3] = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]  # exact 0 and 1
    u = uncertainty_map(p)
    assert u.dtype == np.float32 and u.shape == (7, 9)
    expected = [[slow_entropy(1 - p[0, i, j]) for j in range(9)] for i in range(7)]
    np.testing.assert_allclose(u, expected, atol=1e-6)
    assert u[0, 0] == 0 and u[0, 1] == 0  # p = 1 and p = 0
    assert uncertainty_map(probs(np.full((2, 2), 0.5))).tolist() == [[1.0, 1.0], [1.0, 1.0]]
    np.testing.assert_allclose(uncertainty_map(1 - p[0]), u)  # a 2D foreground probability


def test_entropy_of_a_stack_is_plane_by_plane():
    rng = np.random.default_rng(2)
    fg = rng.random((2, 3, 5, 6))
    stack = np.stack([1 - fg, fg], axis=-3)  # (2, 3, 2, 5, 6)
    u = uncertainty_map(stack)
    assert u.shape == (2, 3, 5, 6)
    for index in np.ndindex(2, 3):
        np.testing.assert_array_equal(u[index], uncertainty_map(stack[index]))


def test_views_count_their_disagreement():
    confident = probs(np.array([[0.0, 1.0, 0.9, 0.9]]))
    other = probs(np.array([[1.0, 0.0, 0.9, 0.7]]))
    views = np.stack([confident, other])  # (V, n_classes, M, N)
    u = uncertainty_map(views, views=True)
    # each view is sure of the first two pixels but they contradict each other
    assert uncertainty_map(confident)[0, :2].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(u[0, :3], [1.0, 1.0, slow_entropy(0.9)], atol=1e-6)
    np.testing.assert_allclose(u, uncertainty_map(views.mean(axis=0)), atol=1e-6)
    mean_entropy = (uncertainty_map(confident) + uncertainty_map(other)) / 2
    assert (u >= mean_entropy - 1e-6).all() and u[0, 3] > mean_entropy[0, 3] + 0.01


def test_an_ambiguous_region_is_ranked_first():
    fg = confident_plane()
    rng = np.random.default_rng(3)
    fg[60:76, 90:106] = 0.5 + rng.uniform(-0.05, 0.05, (16, 16))  # the model cannot decide
    u = uncertainty_map(probs(fg))
    region = next_region(u, 16)
    assert isinstance(region, SuggestedRegion)
    assert region.plane == () and region.window == (slice(60, 76), slice(90, 106))
    assert region.score == pytest.approx(u[60:76, 90:106].mean(), abs=1e-6)
    assert region.score > 0.98
    assert region.center == (68.0, 98.0)
    # without it, the best window is far less uncertain (only soft disk edges)
    assert next_region(uncertainty_map(probs(confident_plane())), 16).score < 0.5


def test_annotated_windows_are_skipped_for_the_second_most_uncertain():
    fg = confident_plane()
    fg[60:76, 90:106] = 0.5  # most uncertain (1.0)
    fg[50:66, 45:61] = 0.7  # second (0.88)
    u = uncertainty_map(probs(fg))
    assert next_region(u, 16).window == (slice(60, 76), slice(90, 106))
    painted = np.zeros(u.shape, np.uint32)  # painted labels work as the mask
    painted[60:76, 90:106] = 3
    second = next_region(u, 16, annotated=painted)
    assert second.window == (slice(50, 66), slice(45, 61))
    assert second.score == pytest.approx(slow_entropy(0.7), abs=1e-6)
    # one annotated pixel inside a window is enough to skip it
    mask = np.zeros(u.shape, bool)
    mask[75, 105] = mask[65, 60] = True
    third = next_region(u, 16, annotated=mask)
    assert not mask[third.window].any()
    assert third.window not in [(slice(60, 76), slice(90, 106)), (slice(50, 66), slice(45, 61))]


def brute_force(u, h, w, mask):
    best, where = -np.inf, None
    for y in range(u.shape[0] - h + 1):
        for x in range(u.shape[1] - w + 1):
            if mask[y : y + h, x : x + w].any():
                continue
            score = u[y : y + h, x : x + w].mean()
            if score > best + 1e-9:
                best, where = score, (y, x)
    return best, where


@pytest.mark.parametrize("seed", range(4))
def test_the_best_window_equals_a_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    u = rng.random((13, 17)).astype(np.float32)
    mask = rng.random((13, 17)) < 0.02
    best, (y, x) = brute_force(u, 4, 5, mask)
    region = next_region(u, (4, 5), annotated=mask)
    assert (region.y0, region.x0, region.y1 - region.y0, region.x1 - region.x0) == (y, x, 4, 5)
    assert region.score == pytest.approx(best, abs=1e-6)


def test_a_stack_returns_the_plane_of_the_window():
    fg = np.stack(
        [np.stack([confident_plane(seed=3 * t + z) for z in range(3)]) for t in range(2)]
    )
    fg[1, 2, 10:26, 40:56] = 0.5
    fg[0, 1, 70:86, 70:86] = 0.6  # less ambiguous, in another plane
    prob = np.stack([1 - fg, fg], axis=-3)  # (T, Z, n_classes, M, N)
    u = uncertainty_map(prob)
    assert u.shape == (2, 3, 96, 128)
    region = next_region(u, 16)
    assert region.plane == (1, 2) and region.window == (slice(10, 26), slice(40, 56))
    done = np.zeros(u.shape, bool)
    done[1, 2, 10:26, 40:56] = True
    assert next_region(u, 16, annotated=done).plane == (0, 1)
    with pytest.raises(ValueError, match="one plane axis"):
        region.as_rectangle()
    zstack = next_region(u[1], 16)
    assert zstack.plane == (2,) and zstack.as_rectangle() == Rectangle(2, 10, 26, 40, 56)
    assert next_region(u[1, 2], 16).as_rectangle() == Rectangle(None, 10, 26, 40, 56)


def test_stride_grid_covers_the_far_edges():
    u = np.zeros((50, 61), np.float32)
    u[-9:, -10:] = 1.0  # in the corner, off the stride grid
    region = next_region(u, (9, 10), stride=8)
    assert region.window == (slice(41, 50), slice(51, 61)) and region.score == 1.0
    u = np.zeros((50, 61), np.float32)
    u[13:22, 21:31] = 1.0
    region = next_region(u, (9, 10), stride=8)
    assert region.y0 % 8 == 0 and region.x0 % 8 == 0  # on the grid, overlapping the spot
    assert region.score < 1.0 and u[region.window].any()
    # when every grid window is annotated, the free windows off the grid are found
    done = np.ones(u.shape, bool)
    done[13:22, 21:31] = False
    assert next_region(u, (9, 10), annotated=done, stride=8).window == (
        slice(13, 22),
        slice(21, 31),
    )


def test_ties_go_to_the_first_window():
    assert next_region(np.ones((2, 20, 20)), 5).plane == (0,)
    assert next_region(np.ones((20, 20)), 5).window == (slice(0, 5), slice(0, 5))


@pytest.mark.parametrize(
    ("prob", "kwargs", "message"),
    [
        (np.full((2, 4, 4), 1.5), {}, r"in \[0, 1\]"),
        (np.full((2, 4, 4), np.nan), {}, "NaN"),
        (np.ones((1, 4, 4)), {}, "n_classes >= 2"),
        (np.ones(4), {}, "n_classes >= 2"),
        (np.array([["a"]]), {}, "numeric"),
        (np.ones((4, 4)), {"views": True}, "leading axis of views"),
        (np.ones((3, 1, 4, 4)), {"views": True}, "after averaging the views"),
    ],
)
def test_uncertainty_map_bad_inputs(prob, kwargs, message):
    with pytest.raises(ValueError, match=message):
        uncertainty_map(prob, **kwargs)


@pytest.mark.parametrize(
    ("u", "size", "kwargs", "message"),
    [
        (np.zeros((10, 12)), 11, {}, "larger than the planes"),
        (np.zeros((10, 12)), (4, 13), {}, "larger than the planes"),
        (np.zeros((10, 12)), 0, {}, "`size` must be an int >= 1"),
        (np.zeros((10, 12)), 2.5, {}, "`size` must be an int >= 1"),
        (np.zeros((10, 12)), (2, 3, 4), {}, "`size` must be an int >= 1"),
        (np.zeros(12), 2, {}, r"shape \(M, N\)"),
        (np.zeros((0, 10, 12)), 2, {}, "no planes"),
        (np.full((10, 12), np.nan), 2, {}, "finite"),
        (np.zeros((10, 12)), 2, {"stride": 0}, "`stride` must be"),
        (np.zeros((10, 12)), 2, {"annotated": np.zeros((10, 11), bool)}, "shape of"),
        (np.zeros((2, 10, 12)), 2, {"annotated": np.zeros((10, 12), bool)}, "shape of"),
        (np.zeros((10, 12)), 2, {"annotated": np.ones((10, 12), bool)}, "nothing left"),
    ],
)
def test_next_region_bad_inputs(u, size, kwargs, message):
    with pytest.raises(ValueError, match=message):
        next_region(u, size, **kwargs)


def test_nothing_left_when_annotations_leave_only_small_gaps():
    done = np.ones((2, 30, 30), bool)
    done[1, 5:9, 5:9] = False  # a 4 x 4 hole: too small for 5 x 5
    with pytest.raises(ValueError, match="every 5 x 5 window overlaps"):
        next_region(np.zeros((2, 30, 30)), 5, annotated=done)
    assert next_region(np.zeros((2, 30, 30)), 4, annotated=done).window == (
        slice(5, 9),
        slice(5, 9),
    )
