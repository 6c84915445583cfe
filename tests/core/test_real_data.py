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
