import numpy as np
import pytest
import zarr

from napari_unet.core.large_plane import iter_segment_large, plane_sample
from napari_unet.core.segment import PlaneDone, iter_segment
from synthetic import image_of, threshold_unet, touching_disks


def same_partition(a, b):
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


@pytest.fixture(scope="module")
def plane():
    labels = touching_disks((230, 310), n=60, radius=(6, 14), seed=3)
    return image_of(labels, seed=3)


def whole(net, image, **options):
    for event in iter_segment(net, image, device="cpu", **options):
        if isinstance(event, PlaneDone):
            return event.labels, event.probabilities
    raise AssertionError("no plane")


def streamed(net, image, index=(), **options):
    labels = np.zeros(image.shape[-2:], np.uint32)
    prob = np.full((2, *image.shape[-2:]), -1, np.float32)

    def write_labels(rows, cols, block):
        assert (labels[rows, cols] == 0).all()  # every pixel once
        labels[rows, cols] = block

    def write_prob(rows, cols, block):
        prob[:, rows, cols] = block

    gen = iter_segment_large(
        net,
        image,
        index,
        write_labels=write_labels,
        write_probabilities=write_prob,
        device="cpu",
        **options,
    )
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return labels, prob, events, stop.value


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"split": True, "min_size": 30},
        {"fill_gaps": 0, "expand": 2},
    ],
)
def test_tile_by_tile_equals_whole_plane_segmentation(plane, options):
    net = threshold_unet()
    ref_labels, ref_prob = whole(net, plane, **options)
    # tiles and label blocks that cut cells at odd offsets
    labels, prob, events, n = streamed(net, plane, tile_size=204, block=50, **options)
    np.testing.assert_allclose(prob, ref_prob, atol=1e-6)
    assert same_partition(labels, ref_labels)
    assert n == ref_labels.max() and labels.max() == n
    assert [e.done for e in events] == list(range(1, len(events) + 1))
    assert events[-1].done == events[-1].total
    assert {e.stage for e in events} >= {"tiles", "components", "growing"}


def test_ids_start_at_first_label_and_planes_of_a_stack(plane):
    net = threshold_unet()
    stack = np.stack([plane[::-1], plane])
    ref_labels, _ = whole(net, plane)
    labels, _, _, n = streamed(net, stack, (1,), tile_size=300, block=64, first_label=101)
    assert labels[labels > 0].min() == 101 and labels.max() == 100 + n
    assert same_partition(labels, ref_labels)
    with pytest.raises(ValueError, match="out of range"):
        streamed(net, stack, (2,))


def test_mask_output_is_written_directly(plane):
    net = threshold_unet()
    ref = whole(net, plane, output="mask")[0]
    labels, _, events, n = streamed(net, plane, tile_size=204, output="mask")
    np.testing.assert_array_equal(labels, ref)
    assert n == 0 and {e.stage for e in events} == {"tiles"}


def test_sample_is_an_even_grid_and_the_whole_plane_when_small(tmp_path):
    image = np.arange(200 * 300, dtype=np.float32).reshape(200, 300)
    np.testing.assert_array_equal(plane_sample(image, (), False), image)
    sample = plane_sample(image, (), False, max_pixels=600)
    np.testing.assert_array_equal(sample, image[::10, ::10])
    lazy = zarr.create_array(
        str(tmp_path / "a.zarr"), shape=(2, 3, 200, 300), chunks=(1, 1, 64, 64), dtype="f4"
    )
    lazy[1] = np.stack([image] * 3)
    np.testing.assert_array_equal(
        plane_sample(lazy, (1,), True, 600), np.stack([image[::10, ::10]] * 3)
    )
