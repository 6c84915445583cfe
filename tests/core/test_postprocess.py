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
