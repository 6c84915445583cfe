import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from napari_unet.core.blockwise import iter_label_blocks, label_blocks
from napari_unet.core.postprocess import probabilities_to_labels


def same_partition(a, b):
    """The two label images split the pixels alike (ids may be permuted)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


def blob_mask(seed=0, shape=(300, 410)):
    """Touching blobs of many sizes, a big one across a block corner, specks, thin bridges."""
    rng = np.random.default_rng(seed)
    smooth = ndi.gaussian_filter(rng.normal(size=shape), 4)
    mask = smooth > 0.02
    yy, xx = np.indices(shape)
    mask |= (yy - 128) ** 2 + (xx - 128) ** 2 < 45**2  # spans the blocks around (128, 128)
    mask |= (yy - 64) ** 2 + ((xx - 250) / 3) ** 2 < 15**2  # a long one over 2-3 blocks
    mask[rng.random(shape) < 0.002] = True  # specks below min_size
    return mask


@pytest.mark.parametrize("block", [37, 64, 128, 1000])
@pytest.mark.parametrize(
    "options",
    [
        {"min_size": 16},
        {"min_size": 60, "split": True},
        {"min_size": 16, "expand": 2},
        {"min_size": 16, "fill_gaps": 1},
        {"min_size": 30, "split": True, "expand": 1, "fill_gaps": 1},
    ],
)
def test_blockwise_labels_equal_whole_plane_labels(block, options):
    mask = blob_mask()
    whole = probabilities_to_labels(mask.astype(np.float32), threshold=0.5, **options)
    out = np.zeros(mask.shape, np.uint32)
    n = label_blocks(mask, out, block=block, **options)
    assert same_partition(out, whole)
    assert n == len(np.unique(out[out > 0])) == whole.max()


def test_objects_crossing_two_and_four_blocks_get_one_id():
    mask = blob_mask(1)
    out = np.zeros(mask.shape, np.uint32)
    label_blocks(mask, out, block=64, min_size=16)
    assert len(np.unique(out[118:139, 118:139])) == 1  # the disc over 4 blocks
    assert len(np.unique(out[64, 220:281])) == 1  # the ellipse over 2


def test_zarr_scratch_and_output_and_progress(tmp_path):
    mask = blob_mask(2)
    root = zarr.open_group(str(tmp_path / "scratch.zarr"), mode="w")

    def scratch(name, shape, dtype):
        return root.zeros(name=name, shape=shape, chunks=(64, 64), dtype=dtype)

    out = zarr.open_array(
        str(tmp_path / "out.zarr"), mode="w", shape=mask.shape, chunks=(64, 64), dtype="u4"
    )
    gen = iter_label_blocks(mask, out, block=64, min_size=16, split=True, scratch=scratch)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            n = stop.value
            break
    n_blocks = 5 * 7
    assert [e.done for e in events] == list(range(1, 3 * n_blocks + 1))
    assert {e.total for e in events} == {3 * n_blocks}
    assert [e.stage for e in events[::n_blocks]] == ["components", "objects", "growing"]
    whole = probabilities_to_labels(mask.astype(np.float32), min_size=16, split=True)
    assert same_partition(out[:], whole) and n == whole.max()
    assert set(root.array_keys()) == {"components", "objects"}


def test_empty_and_full_planes():
    for mask in (np.zeros((50, 70), bool), np.ones((50, 70), bool)):
        out = np.full(mask.shape, 7, np.uint32)
        n = label_blocks(mask, out, block=16, min_size=1)
        assert n == int(mask.any()) and np.array_equal(out > 0, mask)


@pytest.mark.parametrize(
    ("mask", "out", "kwargs", "match"),
    [
        (np.zeros((4, 4, 4)), np.zeros((4, 4)), {}, "2D"),
        (np.zeros((4, 4)), np.zeros((4, 5)), {}, "of its shape"),
        (np.zeros((4, 4)), np.zeros((4, 4)), {"block": 0}, "block"),
    ],
)
def test_bad_input(mask, out, kwargs, match):
    with pytest.raises(ValueError, match=match):
        label_blocks(mask, out, **kwargs)


@pytest.mark.parametrize("block", [37, 128])
@pytest.mark.parametrize(
    "options",
    [
        {"min_size": 16},
        {"min_size": 30, "split": True, "expand": 1, "fill_gaps": 1},
    ],
)
def test_dask_tasks_equal_whole_plane_labels(block, options, tmp_path):
    """The passes as dask tasks (threads here; processes in test_distributed.py)."""
    import dask
    import dask.array as da

    from napari_unet.core.blockwise import label_blocks_dask

    mask = blob_mask(3)
    whole = probabilities_to_labels(mask.astype(np.float32), threshold=0.5, **options)
    out = np.zeros(mask.shape, np.uint32)
    with dask.config.set(scheduler="threads", num_workers=2):
        lazy = da.from_array(mask, chunks=(100, 90))  # rechunked to the blocks
        n = label_blocks_dask(lazy, out, block=block, scratch=tmp_path, batch=3, **options)
    assert same_partition(out, whole)
    assert n == whole.max()
    assert list(tmp_path.iterdir()) == []  # the scratch folder is removed


def test_split_waves_never_share_a_chunk():
    from napari_unet.core.blockwise import _waves

    rng = np.random.default_rng(0)
    windows = {}
    for k in range(60):
        r, c = rng.integers(0, 500, 2)
        h, w = rng.integers(1, 150, 2)
        windows[k] = (slice(int(r), int(r + h)), slice(int(c), int(c + w)))
    waves = _waves(windows, 64)
    assert sorted(k for wave in waves for k in wave) == list(range(60))

    def chunks(win):
        rows, cols = win
        return {
            (i, j)
            for i in range(rows.start // 64, (rows.stop - 1) // 64 + 1)
            for j in range(cols.start // 64, (cols.stop - 1) // 64 + 1)
        }

    for wave in waves:
        seen = set()
        for k in wave:
            assert not seen & chunks(windows[k])
            seen |= chunks(windows[k])
