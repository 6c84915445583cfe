"""Tests for napari_unet.core.metrics."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from skimage.draw import disk

from napari_unet.core.metrics import InstanceScores, f1_at, foreground_iou, instance_scores

THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)


def square(shape: tuple[int, int], rows: slice, cols: slice, label: int = 1) -> np.ndarray:
    image = np.zeros(shape, dtype=np.int32)
    image[rows, cols] = label
    return image


# --- brute-force reference ------------------------------------------------------------------


def reference_scores(true: np.ndarray, pred: np.ndarray, threshold: float) -> tuple:
    """Slow reference: IoU from boolean masks of every pair, then matching.

    Thresholds >= 0.5 match greedily by IoU; lower thresholds count a maximum
    bipartite matching (Hopcroft-Karp) and take the matched IoU sum from a
    dense StarDist-style assignment.
    """
    t_ids = [i for i in np.unique(true) if i > 0]
    p_ids = [j for j in np.unique(pred) if j > 0]
    iou = np.zeros((len(t_ids), len(p_ids)))
    for a, t_id in enumerate(t_ids):
        t_mask = true == t_id
        for b, p_id in enumerate(p_ids):
            p_mask = pred == p_id
            iou[a, b] = np.count_nonzero(t_mask & p_mask) / np.count_nonzero(t_mask | p_mask)
    ok = iou >= threshold
    if threshold >= 0.5:
        used_t, used_p, matched = set(), set(), []
        for flat in np.argsort(-iou, axis=None, kind="stable"):
            a, b = np.unravel_index(flat, iou.shape)
            if ok[a, b] and a not in used_t and b not in used_p:
                used_t.add(a)
                used_p.add(b)
                matched.append(iou[a, b])
        tp, iou_sum = len(matched), float(np.sum(matched))
    else:
        tp = int(np.count_nonzero(maximum_bipartite_matching(csr_matrix(ok)) >= 0))
        n = max(min(iou.shape), 1)
        rows, cols = linear_sum_assignment(-(ok + iou * ok / (2 * n)))
        iou_sum = float(iou[rows, cols][ok[rows, cols]].sum())
    return tp, len(p_ids) - tp, len(t_ids) - tp, iou_sum


def random_labels(rng: np.random.Generator, shape: tuple[int, ...], n_cells: int) -> np.ndarray:
    """Overlapping disks (cylinders through a random z-range in 3D) with random ids."""
    labels = np.zeros(shape, dtype=np.int64)
    ids = rng.choice(np.arange(1, 10_000), size=n_cells, replace=False)
    for cell_id in ids:
        center = rng.uniform(0, shape[-2:])
        rr, cc = disk(center, rng.uniform(3, 9), shape=shape[-2:])
        if len(shape) == 2:
            labels[rr, cc] = cell_id
        else:
            z0 = rng.integers(0, shape[0])
            labels[z0 : z0 + rng.integers(1, 6), rr, cc] = cell_id
    return labels


def perturb(rng: np.random.Generator, true: np.ndarray) -> np.ndarray:
    """Predict each true cell with a random error: dilated, eroded, shifted or dropped;
    then add some spurious cells. Predicted ids are random and unrelated to the true ones."""
    pred = np.zeros_like(true, dtype=np.uint32)
    cell_ids = [i for i in np.unique(true) if i > 0]
    new_ids = iter(rng.choice(np.arange(1, 1_000_000), size=2 * len(cell_ids) + 20, replace=False))
    for cell_id in rng.permutation(cell_ids):
        mask = true == cell_id
        op = rng.choice(["keep", "dilate", "erode", "shift", "drop"])
        if op == "dilate":
            mask = ndi.binary_dilation(mask, iterations=int(rng.integers(1, 4)))
        elif op == "erode":
            mask = ndi.binary_erosion(mask, iterations=int(rng.integers(1, 3)))
        elif op == "shift":
            mask = np.roll(mask, tuple(rng.integers(-5, 6, size=2)), axis=(-2, -1))
        elif op == "drop":
            continue
        pred[mask] = next(new_ids)
    for _ in range(rng.integers(0, 8)):  # spurious cells, drawn over the others
        pred[random_labels(rng, true.shape, 1) > 0] = next(new_ids)
    return pred


@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force_2d(seed: int) -> None:
    rng = np.random.default_rng(seed)
    true = random_labels(rng, (96, 96), 30)
    pred = perturb(rng, true)
    for score in instance_scores(true, pred, thresholds=THRESHOLDS):
        tp, fp, fn, iou_sum = reference_scores(true, pred, score.threshold)
        assert (score.tp, score.fp, score.fn) == (tp, fp, fn), score.threshold
        assert score.mean_matched_iou * score.tp == pytest.approx(iou_sum)


@pytest.mark.parametrize("seed", range(3))
def test_matches_brute_force_3d(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    true = random_labels(rng, (10, 48, 48), 15)
    pred = perturb(rng, true)
    for score in instance_scores(true, pred, thresholds=THRESHOLDS):
        tp, fp, fn, iou_sum = reference_scores(true, pred, score.threshold)
        assert (score.tp, score.fp, score.fn) == (tp, fp, fn), score.threshold
        assert score.mean_matched_iou * score.tp == pytest.approx(iou_sum)


# --- hand-computed instance cases ------------------------------------------------------------


def test_identical_images_score_one() -> None:
    rng = np.random.default_rng(0)
    labels = random_labels(rng, (64, 64), 12)
    n = len(np.unique(labels)) - 1
    (score,) = instance_scores(labels, labels)
    assert score == InstanceScores(0.5, n, 0, 0, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert f1_at(labels, labels, 0.9) == 1.0
    assert foreground_iou(labels, labels) == 1.0


def test_shifted_square_matched_at_0_3_not_0_5() -> None:
    true = square((20, 20), slice(0, 10), slice(0, 10))
    pred = square((20, 20), slice(0, 10), slice(5, 15), label=4)  # overlap 10x5: IoU 50/150
    low, high = instance_scores(true, pred, thresholds=(0.3, 0.5))
    assert (low.tp, low.fp, low.fn) == (1, 0, 0)
    assert low.mean_matched_iou == pytest.approx(1 / 3)
    assert (high.threshold, high.tp, high.fp, high.fn) == (0.5, 0, 1, 1)
    assert high.precision == high.recall == high.f1 == high.ap == high.mean_matched_iou == 0.0
    assert foreground_iou(true, pred) == pytest.approx(1 / 3)


def test_split_into_exact_halves() -> None:
    true = square((10, 10), slice(0, 10), slice(0, 10))
    pred = square((10, 10), slice(0, 10), slice(0, 5), label=3)
    pred[:, 5:] = 8  # two halves, each with IoU exactly 0.5: only one may match
    at_half, above = instance_scores(true, pred, thresholds=[0.5, 0.51])
    assert (at_half.tp, at_half.fp, at_half.fn) == (1, 1, 0)
    assert at_half.precision == 0.5
    assert at_half.recall == 1.0
    assert at_half.f1 == pytest.approx(2 / 3)
    assert at_half.ap == 0.5
    assert at_half.mean_matched_iou == 0.5
    assert (above.tp, above.fp, above.fn) == (0, 2, 1)


def test_merge_of_two_cells() -> None:
    true = square((10, 10), slice(0, 10), slice(0, 4), label=2)
    true[:, 4:] = 5  # IoUs 0.4 and 0.6 with the merged prediction
    pred = square((10, 10), slice(0, 10), slice(0, 10))
    (score,) = instance_scores(true, pred, thresholds=0.3)
    assert (score.tp, score.fp, score.fn) == (1, 0, 1)
    assert score.mean_matched_iou == pytest.approx(0.6)  # the better pair wins
    assert (score.precision, score.recall) == (1.0, 0.5)


def test_low_threshold_matching_is_optimal_not_greedy() -> None:
    # 1-D: true A=[0,10), B=[10,14); pred Y=[0,3), X=[3,14).
    # IoU(A,X)=0.5, IoU(B,X)=4/11, IoU(A,Y)=0.3. Greedy takes A-X and leaves B alone;
    # the maximum matching is A-Y and B-X.
    true = np.array([1] * 10 + [2] * 4)
    pred = np.array([5] * 3 + [9] * 11)
    low, high = instance_scores(true, pred, thresholds=(0.25, 0.5))
    assert (low.tp, low.fp, low.fn) == (2, 0, 0)
    assert low.mean_matched_iou == pytest.approx((0.3 + 4 / 11) / 2)
    assert (high.tp, high.fp, high.fn) == (1, 1, 1)
    assert high.mean_matched_iou == 0.5


def test_relabelling_and_dtype_do_not_change_scores() -> None:
    rng = np.random.default_rng(3)
    true = random_labels(rng, (64, 64), 15)
    pred = perturb(rng, true)
    expected = instance_scores(true, pred, thresholds=THRESHOLDS)

    def relabel(labels: np.ndarray, dtype: type) -> np.ndarray:
        ids = np.unique(labels)
        new = np.concatenate([[0], rng.permutation(np.arange(1, ids.size) * 97 + 5)])
        return new[np.searchsorted(ids, labels)].astype(dtype)

    got = instance_scores(
        relabel(true, np.uint16), relabel(pred, np.uint64), thresholds=THRESHOLDS
    )
    as_float = instance_scores(true.astype(float), pred, thresholds=THRESHOLDS)
    for scores in (got, as_float):  # equal up to float summation order
        assert [astuple(s) for s in scores] == [pytest.approx(astuple(s)) for s in expected]


def test_stack_is_matched_as_3d_objects() -> None:
    true = np.zeros((4, 6, 6), dtype=np.int32)
    true[:, 1:5, 1:5] = 7  # one object through all 4 slices
    pred = true.copy()
    assert instance_scores(true, pred)[0] == InstanceScores(0.5, 1, 0, 0, 1.0, 1.0, 1.0, 1.0, 1.0)
    pred[2:] = 3  # split in z: two halves of IoU 0.5 each
    (score,) = instance_scores(true, pred)
    assert (score.tp, score.fp, score.fn) == (1, 1, 0)


def test_bool_images_are_one_instance_each() -> None:
    true = square((20, 20), slice(0, 10), slice(0, 10)) > 0
    pred = square((20, 20), slice(0, 10), slice(2, 12)) > 0  # IoU 80/120
    (score,) = instance_scores(true, pred)
    assert (score.tp, score.fp, score.fn) == (1, 0, 0)
    assert score.mean_matched_iou == pytest.approx(2 / 3)


def test_empty_images() -> None:
    empty = np.zeros((8, 8), dtype=np.uint8)
    cells = square((8, 8), slice(0, 3), slice(0, 3))
    cells[5:, 5:] = 2
    assert instance_scores(empty, empty)[0] == InstanceScores(0.5, 0, 0, 0, 1, 1, 1, 0, 1)
    assert instance_scores(cells, empty)[0] == InstanceScores(0.5, 0, 0, 2, 0, 0, 0, 0, 0)
    assert instance_scores(empty, cells)[0] == InstanceScores(0.5, 0, 2, 0, 0, 0, 0, 0, 0)
    assert f1_at(empty, empty) == 1.0
    assert f1_at(cells, empty) == 0.0


def test_f1_at_and_threshold_order() -> None:
    true = square((20, 20), slice(0, 10), slice(0, 10))
    pred = square((20, 20), slice(0, 10), slice(5, 15))
    assert f1_at(true, pred, 0.3) == 1.0
    assert f1_at(true, pred) == 0.0
    scores = instance_scores(true, pred, thresholds=(0.9, 0.2, 0.5))
    assert [s.threshold for s in scores] == [0.9, 0.2, 0.5]
    assert [s.tp for s in scores] == [0, 1, 0]


# --- foreground IoU --------------------------------------------------------------------------


def test_foreground_iou_hand_values() -> None:
    true = square((20, 20), slice(0, 10), slice(0, 10), label=3)
    pred = square((20, 20), slice(0, 10), slice(0, 5), label=9)  # labels do not matter
    assert foreground_iou(true, pred) == 0.5
    assert foreground_iou(true > 0, pred > 0) == 0.5
    assert foreground_iou(true, np.zeros_like(true)) == 0.0
    assert foreground_iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0


def test_foreground_iou_mask() -> None:
    true = square((20, 20), slice(0, 10), slice(0, 10))
    pred = square((20, 20), slice(0, 10), slice(5, 15))
    assert foreground_iou(true, pred) == pytest.approx(1 / 3)
    mask = np.zeros((20, 20), dtype=bool)
    mask[:, :10] = True  # true 100 px, pred 50 px, overlap 50 px
    assert foreground_iou(true, pred, mask=mask) == 0.5
    mask[:] = False
    mask[:, 12:] = True  # only pred pixels inside
    assert foreground_iou(true, pred, mask=mask) == 0.0
    assert foreground_iou(true, pred, mask=np.zeros((20, 20), dtype=bool)) == 1.0


# --- bad input -------------------------------------------------------------------------------


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"same shape.*\(4, 4\).*\(4, 5\)"):
        instance_scores(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="same shape"):
        foreground_iou(np.zeros((4, 4), int), np.zeros((4, 4, 1), int))
    with pytest.raises(ValueError, match=r"`mask`.*\(4, 4\).*\(4, 3\)"):
        foreground_iou(np.zeros((4, 4), int), np.zeros((4, 4), int), mask=np.ones((4, 3), bool))


def test_bad_label_values() -> None:
    good = np.zeros((3, 3), dtype=int)
    fractional = np.zeros((3, 3))
    fractional[1, 1] = 1.5
    with pytest.raises(ValueError, match=r"`pred`.*1\.5"):
        instance_scores(good, fractional)
    with pytest.raises(ValueError, match=r"`true`.*1\.5"):
        foreground_iou(fractional, good)
    with pytest.raises(ValueError, match=r"`true`.*NaN"):
        instance_scores(np.full((3, 3), np.nan), good)
    with pytest.raises(ValueError, match=r"`pred`.*negative.*-2"):
        instance_scores(good, good - 2)
    with pytest.raises(ValueError, match=r"`true`.*dtype"):
        instance_scores(np.full((3, 3), "a"), good)


def test_bad_mask_and_thresholds() -> None:
    labels = np.ones((3, 3), dtype=int)
    with pytest.raises(ValueError, match=r"`mask`.*bool.*uint8"):
        foreground_iou(labels, labels, mask=np.ones((3, 3), np.uint8))
    for bad in (0.0, 1.5, -0.1, (0.5, 2.0)):
        with pytest.raises(ValueError, match=r"`thresholds`.*in \(0, 1\]"):
            instance_scores(labels, labels, thresholds=bad)
    with pytest.raises(ValueError, match=r"`thresholds`.*non-empty"):
        instance_scores(labels, labels, thresholds=())
    with pytest.raises(ValueError, match=r"`thresholds`"):
        f1_at(labels, labels, threshold=0.0)


def _seg_reference(true, pred):
    """CTC SEG object by object: IoU with the predicted object covering > half, else 0."""
    values = []
    for t in np.unique(true[true > 0]):
        obj = true == t
        ids, counts = np.unique(pred[obj], return_counts=True)
        best = [i for i, c in zip(ids, counts, strict=True) if i > 0 and c > obj.sum() / 2]
        if best:
            other = pred == best[0]
            values.append((obj & other).sum() / (obj | other).sum())
        else:
            values.append(0.0)
    return float(np.mean(values)) if values else 1.0


@pytest.mark.parametrize("seed", range(4))
def test_seg_score_matches_an_object_by_object_reference(seed):
    from napari_unet.core.metrics import seg_score

    rng = np.random.default_rng(seed)
    true = rng.integers(0, 6, (30, 40)).repeat(2, axis=0).repeat(2, axis=1)
    pred = np.roll(true, rng.integers(-3, 4), axis=1) * (rng.random(true.shape) > 0.1)
    pred[rng.random(true.shape) < 0.05] = 7
    assert seg_score(true, pred) == pytest.approx(_seg_reference(true, pred))


def test_seg_score_half_coverage_is_not_a_match():
    from napari_unet.core.metrics import seg_score

    true = np.array([[1, 1, 1, 1]])
    assert seg_score(true, np.array([[2, 2, 0, 0]])) == 0.0  # exactly half: no match
    assert seg_score(true, np.array([[2, 2, 2, 0]])) == pytest.approx(0.75)
    assert seg_score(np.zeros((3, 3), int), np.ones((3, 3), int)) == 1.0
