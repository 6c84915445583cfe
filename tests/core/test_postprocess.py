import numpy as np
import pytest

from napari_unet.core.postprocess import probabilities_to_labels


def probs_from_mask(mask: np.ndarray) -> np.ndarray:
    fg = mask.astype(np.float32)
    return np.stack([1 - fg, fg])


def test_components_and_small_objects():
    mask = np.zeros((40, 40), bool)
    mask[2:10, 2:10] = True  # 64 px
    mask[20:30, 20:30] = True  # 100 px
    mask[35:37, 35:37] = True  # 4 px: removed
    labels = probabilities_to_labels(probs_from_mask(mask), min_size=16)
    assert labels.dtype == np.uint32
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert (labels[2:10, 2:10] > 0).all() and labels[36, 36] == 0
    assert len(np.unique(labels[20:30, 20:30])) == 1


def test_threshold_and_diagonal_gap():
    fg = np.zeros((10, 10), np.float32)
    fg[1:4, 1:4] = 0.7
    fg[4:7, 4:7] = 0.7  # touches only diagonally: separate cells (4-connectivity)
    assert probabilities_to_labels(fg, min_size=1).max() == 2
    assert probabilities_to_labels(fg, threshold=0.8, min_size=1).max() == 0


def test_watershed_splits_touching_disks():
    yy, xx = np.mgrid[:60, :90]
    mask = ((yy - 30) ** 2 + (xx - 28) ** 2 < 15**2) | ((yy - 30) ** 2 + (xx - 52) ** 2 < 15**2)
    prob = probs_from_mask(mask)
    assert probabilities_to_labels(prob).max() == 1
    split = probabilities_to_labels(prob, split=True, min_distance=8)
    assert split.max() == 2
    assert split[30, 28] != split[30, 52]


def test_stack_ids_are_unique_across_planes():
    mask = np.zeros((3, 20, 20), bool)
    mask[:, 2:8, 2:8] = True
    mask[1, 12:18, 12:18] = True
    prob = np.stack([probs_from_mask(m) for m in mask])
    labels = probabilities_to_labels(prob)
    assert labels.shape == (3, 20, 20)
    assert [sorted(np.unique(p))[1:] for p in labels] == [[1], [2, 3], [4]]


@pytest.mark.parametrize(
    ("prob", "kwargs"),
    [
        (np.zeros((1, 5, 5)), {}),
        (np.zeros(5), {}),
        (np.zeros((2, 5, 5)), {"threshold": 1.5}),
        (np.zeros((2, 5, 5)), {"min_distance": 0}),
    ],
)
def test_bad_input(prob, kwargs):
    with pytest.raises(ValueError):
        probabilities_to_labels(prob, **kwargs)


def test_object_diameter_of_disks():
    from skimage.draw import disk

    from napari_unet.core.postprocess import object_diameter

    labels = np.zeros((200, 200), np.int32)
    for i, (r, c) in enumerate([(40, 40), (40, 140), (140, 90)], start=1):
        labels[disk((r, c), 20)] = i
    assert object_diameter(labels) == pytest.approx(40, rel=0.02)
    assert object_diameter([labels, np.zeros((5, 5), int)]) == pytest.approx(40, rel=0.02)
    assert object_diameter(np.zeros((5, 5), int)) is None


def test_close_gaps_gives_touching_cells_back_their_boundary_without_merging():
    from scipy import ndimage as ndi

    from napari_unet.core.dataset import separate_touching
    from napari_unet.core.postprocess import close_gaps
    from synthetic import touching_disks

    truth = touching_disks((96, 96), n=14, seed=3).astype(np.int32)
    separated = separate_touching(truth)  # what a network trained on separated cells predicts
    lost = (truth > 0) & (separated == 0)
    assert lost.sum() > 50
    filled = close_gaps(separated, 1)
    # the same cells: nothing merged, added or removed; old pixels unchanged
    assert set(np.unique(filled)) == set(np.unique(separated))
    assert (filled[separated > 0] == separated[separated > 0]).all()
    # slow reference: exact distances to every cell, the rule of the docstring
    ids = [i for i in np.unique(separated) if i]
    dist = np.stack([ndi.distance_transform_edt(separated != i) for i in ids])
    order = np.sort(dist, axis=0)
    nearest = np.array(ids)[np.argmin(dist, axis=0)]
    between = (separated == 0) & (order[0] <= 1.5) & (order[0] + order[1] <= 4)
    expected = np.where(between, nearest, separated)
    ties = between & (np.sum(dist == order[0], axis=0) > 1)  # equidistant: either cell
    np.testing.assert_array_equal(filled[~ties], expected[~ties])
    assert np.isin(filled[ties], ids).all()
    # most given-back pixels are the lost boundary, and most of it comes back
    grown = (filled > 0) & (separated == 0)
    assert (truth[grown] > 0).mean() > 0.7 and (grown & lost).sum() > 0.85 * lost.sum()
    # a lone cell's outer edge is not grown
    lone = np.zeros((30, 30), np.int32)
    lone[10:20, 10:20] = 1
    np.testing.assert_array_equal(close_gaps(lone, 2), lone)
    np.testing.assert_array_equal(close_gaps(separated, 0), separated)


def test_fill_gaps_in_probabilities_to_labels():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 2:9] = mask[5:15, 10:18] = True  # two cells, a 1-px gap at column 9
    labels = probabilities_to_labels(probs_from_mask(mask), min_size=1, fill_gaps=1)
    assert labels.max() == 2 and (labels[5:15, 9] > 0).all()
    outer = labels.copy()
    outer[4:16, 8:11] = 0  # the gap and its corners
    assert (outer[:5] == 0).all() and (outer[15:] == 0).all()  # outer edges stay
    with pytest.raises(ValueError, match="fill_gaps"):
        probabilities_to_labels(probs_from_mask(mask), fill_gaps=-1)
