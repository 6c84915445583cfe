import numpy as np
import pytest
from skimage.measure import label

from napari_unet.core.linking import MinPlanes, PlaneLinker, link_planes, match_by_iou


def sphere_stack(seed=0, n=12, shape=(24, 96, 96)):
    """Spheres of known ids (some touching, some starting/ending inside the stack)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    truth = np.zeros(shape, np.uint32)
    centres = []
    for i in range(1, n + 1):
        for _ in range(100):
            r = rng.uniform(5, 9)
            c = rng.uniform([0, r, r], [shape[0], shape[1] - r, shape[2] - r])
            # touching is allowed (centres r_a + r_b apart), overlapping is not
            if all(np.linalg.norm(c - c2) >= r + r2 - 1 for c2, r2 in centres):
                break
        centres.append((c, r))
        inside = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r
        truth[inside & (truth == 0)] = i
    # the caps a 2D segmentation keeps: sections of at least 16 px (its min_size)
    for plane in truth:
        area = np.bincount(plane.ravel())
        plane[area[plane] < 16] = 0
    return truth


def per_plane_ids(truth):
    """What a 2D segmentation gives: objects numbered anew in every plane."""
    out = np.zeros_like(truth)
    for k, plane in enumerate(truth):
        ids = np.unique(plane[plane > 0])
        shuffled = np.random.default_rng(k).permutation(len(ids)) + 1
        lut = np.zeros(int(truth.max()) + 1, np.uint32)
        lut[ids] = shuffled
        out[k] = lut[plane]
    return out


def recovered_whole(truth, linked):
    """Fraction of true objects that are exactly one linked object (pixels and planes)."""
    whole = 0
    for i in np.unique(truth[truth > 0]):
        ids = np.unique(linked[truth == i])
        if len(ids) == 1 and ids[0] > 0 and ((linked == ids[0]) == (truth == i)).all():
            whole += 1
    return whole / len(np.unique(truth[truth > 0]))


@pytest.mark.parametrize("seed", range(4))
def test_spheres_are_linked_back_to_their_ids(seed):
    truth = sphere_stack(seed, n=16)
    linked = np.stack(list(link_planes(per_plane_ids(truth))))
    assert recovered_whole(truth, linked) == 1.0


def test_touching_spheres_stay_apart_and_a_gap_is_bridged():
    truth = sphere_stack(seed=1, n=16)
    planes = per_plane_ids(truth)
    victim = np.unique(truth[12][truth[12] > 0])[0]
    ids_in_plane = np.unique(planes[12][truth[12] == victim])
    dropped = planes.copy()
    dropped[12][np.isin(planes[12], ids_in_plane)] = 0  # missed in one plane
    without = np.stack(list(link_planes(dropped)))
    bridged = np.stack(list(link_planes(dropped, bridge=1)))
    above, below = truth[11] == victim, truth[13] == victim
    assert np.unique(without[11][above]) != np.unique(without[13][below])
    assert np.unique(bridged[11][above]) == np.unique(bridged[13][below])
    kept = truth.copy()
    kept[12][truth[12] == victim] = 0
    assert recovered_whole(kept, bridged) == 1.0


def test_moving_blobs_keep_their_ids():
    """A time-lapse of discs moving 3 px per frame (less than their radius)."""
    yy, xx = np.indices((80, 120))
    frames = []
    for t in range(15):
        frame = np.zeros((80, 120), np.int32)
        for i, (y, x, vy, vx) in enumerate([(20, 10, 0, 3), (60, 110, -1, -3), (40, 60, 2, 0)]):
            frame[(yy - y - vy * t) ** 2 + (xx - x - vx * t) ** 2 <= 64] = i + 1
        frames.append(label(frame > 0) * 1)  # ids renumbered by position each frame
    linked = np.stack(list(link_planes(frames)))
    for t in range(15):
        assert set(np.unique(linked[t])) == {0, 1, 2, 3}

    def centres(t):
        return [(20, 10 + 3 * t), (60 - t, 110 - 3 * t), (40 + 2 * t, 60)]

    first = [linked[0][c] for c in centres(0)]
    assert sorted(first) == [1, 2, 3]
    for t in range(1, 15):  # every disc keeps the id it had in frame 0
        assert [linked[t][c] for c in centres(t)] == first


def test_one_to_one_assignment_prefers_the_best_total():
    # previous: ids 1 and 2 side by side; current: one object mostly on 2, one on 1
    prev = np.zeros((10, 20), int)
    prev[:, :10], prev[:, 10:] = 1, 2
    cur = np.zeros((10, 20), int)
    cur[:, 2:12], cur[:, 14:20] = 3, 4
    matches = {(a, b) for a, b, _ in match_by_iou(prev, cur, 0.1)}
    assert matches == {(1, 3), (2, 4)}


def test_short_objects_are_reported():
    linker = PlaneLinker()
    a = np.zeros((10, 10), int)
    a[2:5, 2:5] = 1
    b = a.copy()
    b[7:9, 7:9] = 2  # appears once only
    for plane in (a, b, a):
        linker.link(plane)
    assert linker.result.n_objects == 2
    assert linker.result.short(2).tolist() == [2]


@pytest.mark.parametrize("threshold", [0, -0.1, 1.5])
def test_bad_threshold(threshold):
    with pytest.raises(ValueError, match=r"IoU threshold must be in \(0, 1\]"):
        PlaneLinker(threshold)


def test_bad_planes():
    linker = PlaneLinker()
    with pytest.raises(ValueError, match="2D integer label image"):
        linker.link(np.zeros((2, 4, 4), int))
    with pytest.raises(ValueError, match="2D integer label image"):
        linker.link(np.zeros((4, 4), float))
    linker.link(np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="differ in shape"):
        linker.link(np.zeros((5, 4), int))


def brute_force_min_planes(linked, min_planes):
    """Objects in fewer than ``min_planes`` planes removed, from the whole linked stack."""
    stack = np.stack(linked)
    counts = {i: sum(int((p == i).any()) for p in stack) for i in np.unique(stack[stack > 0])}
    short = [i for i, n in counts.items() if n < min_planes]
    return np.where(np.isin(stack, short), 0, stack)


@pytest.mark.parametrize("min_planes", [2, 3, 5])
def test_min_planes_streaming_equals_the_whole_stack_rule(min_planes):
    truth = sphere_stack(seed=2, n=20)
    planes = per_plane_ids(truth)
    linker = PlaneLinker()
    keep = MinPlanes(linker, min_planes)
    out, items = [], []
    for k, plane in enumerate(planes):
        for item, labels, _ in keep.push(linker.link(plane), k):
            items.append(item)
            out.append(labels)
        assert len(keep._held) <= min_planes - 1  # bounded delay
    for item, labels, _ in keep.flush():
        items.append(item)
        out.append(labels)
    assert items == list(range(len(planes)))
    linked = list(link_planes(planes))
    expected = brute_force_min_planes(linked, min_planes)
    got = np.stack(out)
    assert np.array_equal(got > 0, expected > 0)
    kept = np.unique(got[got > 0])
    assert kept.tolist() == list(range(1, keep.n_objects + 1))  # dense ids
    assert len(kept) == len(np.unique(expected[expected > 0]))


def test_min_planes_rejects_bad_values():
    with pytest.raises(ValueError, match="min_planes"):
        MinPlanes(PlaneLinker(), 0)
