"""Checks on the real datasets in ../shared/data (skipped where they are absent)."""

from __future__ import annotations

import numpy as np
import tifffile
import torch
from test_tiling import whole_image_reference
from test_weightmap import reference_weight_map

from napari_unet.core.io import open_image
from napari_unet.core.model import UNet
from napari_unet.core.tiling import predict_tiled
from napari_unet.core.weightmap import unet_weight_map

DSB_TOUCHING = "9ebcfaf2322932d464f15b5662cae4d669b2d785b8299556d73fffcae8365d32"  # 256x320


def test_weight_map_on_real_touching_nuclei(data_dir):
    labels = tifffile.imread(data_dir / "dsb2018_nuclei_train" / "masks" / f"{DSB_TOUCHING}.tif")
    assert labels.max() > 40
    fast = unet_weight_map(labels)
    np.testing.assert_allclose(fast, reference_weight_map(labels, w0=10, sigma=5), atol=1e-4)
    assert fast.max() > 5  # the gaps between touching nuclei carry the border term


def test_tiled_equals_whole_on_an_em_slice(data_dir):
    path = data_dir / "isbi2012_em_membranes" / "images" / "00.tif"
    image = np.asarray(open_image(path)[:], np.float32) / 255  # zlib TIFF, read lazily
    np.testing.assert_array_equal(image * 255, tifffile.imread(path))
    torch.manual_seed(0)
    net = UNet(base_channels=4).eval()
    tiled = predict_tiled(net, image, tile_size=300, device="cpu")
    np.testing.assert_allclose(tiled, whole_image_reference(net, image)[0], atol=2e-5)


#: 520 x 696 images of the 100-image split (never used to pretrain)
DSB_UNSEEN = ["3f9fc8e63f87", "6b61ab2e3ff0", "3ebd2ab34ba8", "62057502c387"]


def _dsb(data_dir, short):
    folder = data_dir / "dsb2018_nuclei_train"
    name = next((folder / "images").glob(f"{short}*.tif")).name
    return tifffile.imread(folder / "images" / name), tifffile.imread(folder / "masks" / name)


def _segment(model, image, **kwargs):
    from napari_unet.core.checkpoint import suggested_threshold
    from napari_unet.core.segment import PlaneDone, iter_segment

    threshold = suggested_threshold(model)
    for event in iter_segment(model, image, device="cpu", threshold=threshold, **kwargs):
        if isinstance(event, PlaneDone):
            return event.labels
    raise AssertionError("nothing segmented")


def test_bundled_model_zero_shot_on_unseen_dsb_images(data_dir):
    from napari_unet.core.metrics import instance_scores, seg_score
    from napari_unet.core.pretrained import load_pretrained

    model = load_pretrained("nuclei")
    scores = []
    for short in DSB_UNSEEN:
        image, truth = _dsb(data_dir, short)
        labels = _segment(model, image)
        scores.append((instance_scores(truth, labels)[0].f1, seg_score(truth, labels)))
    f1, seg = np.mean(scores, axis=0)
    assert f1 >= 0.88 and seg >= 0.8, scores  # measured: 0.93, 0.85


def test_diameter_helps_on_real_nuclei_four_times_larger(data_dir):
    from skimage.transform import rescale

    from napari_unet.core.metrics import seg_score
    from napari_unet.core.postprocess import object_diameter
    from napari_unet.core.pretrained import load_pretrained

    model = load_pretrained("nuclei")
    image, truth = _dsb(data_dir, DSB_UNSEEN[0])
    image, truth = image[:256, :256], truth[:256, :256]
    big = rescale(image.astype(np.float32), 4, order=1)  # nuclei ~107 px across
    big_truth = rescale(truth, 4, order=0, preserve_range=True, anti_aliasing=False).astype(int)
    native = seg_score(big_truth, _segment(model, big))
    rescaled = seg_score(big_truth, _segment(model, big, diameter=object_diameter(big_truth)))
    assert rescaled >= 0.85 and rescaled > native + 0.03, (native, rescaled)  # 0.82 -> 0.88
