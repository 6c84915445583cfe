import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_unet.core.dataset import (
    UNKNOWN,
    PatchSampler,
    as_instances,
    prepare_sample,
    rescale_annotation,
    separate_touching,
    training_weights,
)
from napari_unet.core.losses import weighted_cross_entropy
from napari_unet.core.weightmap import unet_weight_map


def test_separate_touching_cuts_only_between_cells(disks):
    sep = separate_touching(disks)
    changed = sep != disks
    assert (sep[changed] == 0).all() and (disks[changed] > 0).all()
    # every removed pixel touched another cell; isolated cell borders are untouched
    for y, x in zip(*np.nonzero(changed), strict=True):
        window = disks[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
        assert set(np.unique(window)) - {0, disks[y, x]}
    # no two different cells are 8-connected any more
    padded = np.pad(sep, 1)
    for dy, dx in [(0, 1), (1, 0), (1, 1), (1, -1)]:
        a = padded[1:-1, 1:-1]
        b = np.roll(np.roll(padded, -dy, 0), -dx, 1)[1:-1, 1:-1]
        assert not ((a > 0) & (b > 0) & (a != b)).any()


def test_binary_masks_become_components():
    mask = np.zeros((10, 10), np.uint8)
    mask[1:3, 1:3] = 1
    mask[6:9, 6:9] = 1
    assert as_instances(mask).max() == 2
    with pytest.raises(ValueError, match="negative"):
        as_instances(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="integer"):
        as_instances(np.array([[0.5, 2]]))


def test_prepare_sample_weights_and_unknown(disks):
    mask = np.zeros(disks.shape, bool)
    mask[:, :50] = True
    s = prepare_sample(disks.astype(np.float32), disks, mask, w0=10, sigma=5)
    assert (s.target[~mask] == UNKNOWN).all() and (s.weights[~mask] == 0).all()
    assert set(np.unique(s.target[mask])) == {0, 1}
    separated = np.where(mask, separate_touching(disks), 0)
    expected = unet_weight_map(separated, mask=mask, class_weights=None)  # "border", the default
    np.testing.assert_allclose(s.weights, expected)
    paper = prepare_sample(disks.astype(np.float32), disks, mask, weighting="unet")
    np.testing.assert_allclose(paper.weights, unet_weight_map(separated, mask=mask))
    flat = prepare_sample(disks.astype(np.float32), disks, mask, weighting="none")
    assert set(np.unique(flat.weights)) == {0.0, 1.0}
    assert s.image.shape == (1, *disks.shape) and s.image.dtype == np.float32


@pytest.mark.parametrize("weighting", ["border", "unet", "balanced", "none"])
def test_prepare_sample_weights_are_training_weights(disks, weighting):
    # one path: training's sample weights are the map the widget and the CLI show
    mask = np.zeros(disks.shape, bool)
    mask[10:80, 5:60] = True
    binary = np.zeros(disks.shape, np.uint8)  # one id, two blobs: split into two cells
    binary[5:20, 5:20] = binary[40:60, 40:60] = 1
    for labels, region in [(disks, mask), (disks, None), (binary, None)]:
        s = prepare_sample(disks.astype(np.float32), labels, region, weighting=weighting)
        instances, weights = training_weights(labels, region, weighting=weighting)
        np.testing.assert_array_equal(s.weights, weights)
        np.testing.assert_array_equal(s.labels, instances)
    assert training_weights(binary)[0].max() == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": np.zeros((96, 96), int)}, "no cells"),
        ({"mask": np.zeros((96, 96), bool)}, "annotated region is empty"),
        ({"labels": np.ones((90, 96), int)}, "shape"),
        ({"mask": np.ones((96, 90), bool)}, "mask"),
        ({"image": np.full((96, 96), np.nan)}, "NaN"),
        ({"image": np.zeros((2, 96, 96))}, "channel"),
        ({"weighting": "paper"}, "weighting"),
    ],
)
def test_prepare_sample_errors(disks, kwargs, match):
    args = {"image": disks.astype(np.float32), "labels": disks, "mask": None, **kwargs}
    with pytest.raises(ValueError, match=match):
        prepare_sample(args.pop("image"), args.pop("labels"), args.pop("mask"), **args)


def test_patch_sampler_shapes_and_alignment(disks):
    # image == target so the crop alignment can be checked without augmentation
    s = prepare_sample((disks > 0).astype(np.float32), disks, weighting="none", separate=False)
    sampler = PatchSampler([s], input_size=188, output_size=4, rng=0, augment=False)
    x, y, w = sampler.batch(6)
    assert x.shape == (6, 1, 188, 188) and y.shape == w.shape == (6, 4, 4)
    assert y.dtype == np.int64 and w.dtype == np.float32
    centre = x[:, 0, 92:96, 92:96]
    np.testing.assert_array_equal(centre > 0.5, y > 0)
    assert (w > 0).all()  # windows are centred on annotated pixels


@pytest.mark.parametrize("zoom", [0.5, 1.5])
def test_rescale_annotation_zooms_jointly(disks, zoom):
    image = np.stack([disks, 2 * disks]).astype(np.float32)  # two channels
    mask = np.zeros(disks.shape, bool)
    mask[:, :48] = True
    scaled, labels, region = rescale_annotation(image, disks, mask, zoom)
    size = round(disks.shape[0] * zoom)
    assert scaled.shape == (2, size, size) and labels.shape == region.shape == (size, size)
    assert set(np.unique(labels)) <= set(np.unique(disks))  # nearest: no invented ids
    np.testing.assert_allclose(scaled[1], 2 * scaled[0], rtol=1e-5)
    # the label image zooms with the image: interior pixels keep their cell's value
    interior = ndi.maximum_filter(labels, 5) == ndi.minimum_filter(labels, 5)
    np.testing.assert_allclose(scaled[0][interior], labels[interior], rtol=1e-5)
    assert abs(region.mean() - mask.mean()) < 0.05
    areas = np.bincount(labels.ravel())[1:], np.bincount(disks.ravel())[1:]
    assert 0.8 < areas[0].sum() / (areas[1].sum() * zoom**2) < 1.2


def test_patch_sampler_weights(disks):
    samples = [prepare_sample(disks.astype(np.float32), disks) for _ in range(2)]
    sampler = PatchSampler(samples, 188, 4, rng=0, augment=False, weights=[1.0, 3.0])
    np.testing.assert_allclose(sampler._p, [0.25, 0.75])


def test_pixels_outside_region_do_not_change_loss(disks):
    mask = np.zeros(disks.shape, bool)
    mask[20:70, 20:70] = True
    other = disks.copy()
    other[~mask] = 0  # a different annotation outside the region
    image = np.random.default_rng(0).random(disks.shape).astype(np.float32)
    batches = []
    for labels in (disks, other):
        s = prepare_sample(image, labels, mask)
        batches.append(PatchSampler([s], 204, 20, rng=3, augment=True).batch(3))
    for a, b in zip(*batches, strict=True):
        np.testing.assert_array_equal(a, b)
    logits = torch.randn(3, 2, 20, 20)
    _, y, w = (torch.from_numpy(a) for a in batches[0])
    y2 = y.clone()
    y2[w == 0] = 1 - y2[w == 0]  # flip every unknown pixel's class
    assert torch.equal(weighted_cross_entropy(logits, y, w), weighted_cross_entropy(logits, y2, w))


def test_weighted_cross_entropy_matches_definition():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 5, 5)
    y = torch.randint(0, 2, (2, 5, 5))
    w = torch.rand(2, 5, 5)
    w[0, 0] = 0
    logp = torch.log_softmax(logits, 1).gather(1, y[:, None])[:, 0]
    expected = -(w * logp).sum() / (w > 0).sum()
    torch.testing.assert_close(weighted_cross_entropy(logits, y, w), expected)
    with_dice = weighted_cross_entropy(logits, y, w, dice_weight=1.0)
    assert with_dice > expected
    with pytest.raises(ValueError, match="shapes"):
        weighted_cross_entropy(logits, y[:, :4], w)
