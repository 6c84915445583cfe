"""Time to first result in napari: open a 1024² image, segment it with the bundled model.

The image is a mosaic of four 512² crops of DSB 2018 nuclei images from the
100-image split (never used to pretrain). The clock starts when the image is
added to the viewer; it stops when the predicted labels are on screen. Also
reports how long opening the Predict widget took (it loads the bundled model)
and the instance F1@0.5 / SEG against the ground truth, and saves
``docs/images/zero_shot.png``.

Run from the repository root (needs a display; Xvfb works)::

    xvfb-run -a .venv/bin/python benchmarks/bench_first_result.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dsb2018_nuclei_train"
#: 520 x 696 images of the 100-image split
IMAGE_IDS = ["3f9fc8e63f87", "6b61ab2e3ff0", "3ebd2ab34ba8", "62057502c387"]


def mosaic() -> tuple[np.ndarray, np.ndarray]:
    images, labels = np.zeros((1024, 1024), np.uint8), np.zeros((1024, 1024), np.uint32)
    for k, short in enumerate(IMAGE_IDS):
        name = next((DATA / "images").glob(f"{short}*.tif")).name
        image = tifffile.imread(DATA / "images" / name)[:512, :512]
        truth = tifffile.imread(DATA / "masks" / name)[:512, :512].astype(np.uint32)
        rows, cols = (
            slice(512 * (k // 2), 512 * (k // 2 + 1)),
            slice(512 * (k % 2), 512 * (k % 2 + 1)),
        )
        images[rows, cols] = image
        labels[rows, cols] = np.where(truth > 0, truth + 1000 * k, 0)
    return images, labels


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication
    from skimage.io import imsave

    from napari_unet.core.metrics import instance_scores, seg_score

    image, truth = mosaic()
    viewer = napari.Viewer()
    QApplication.processEvents()
    start = time.perf_counter()
    viewer.add_image(image, name="nuclei")
    _, predict = viewer.window.add_plugin_dock_widget("napari-unet-paper", "4. Predict")
    opened = time.perf_counter() - start
    predict.image_layer.value = viewer.layers["nuclei"]
    predict.start()
    while predict.is_running:
        QApplication.processEvents()
        time.sleep(0.005)
    QApplication.processEvents()
    labels = viewer.layers["nuclei prediction"].data
    total = time.perf_counter() - start
    scores = instance_scores(truth, labels)[0]
    report = {
        "image": "1024x1024 mosaic of 4 DSB crops (100-image split)",
        "model": predict.model_source.value,
        "widget_open_s": round(opened, 2),
        "first_result_s": round(total, 2),
        "cells": int(labels.max()),
        "f1@0.5": round(scores.f1, 4),
        "seg": round(seg_score(truth, labels), 4),
    }
    print(json.dumps(report), flush=True)
    time.sleep(0.5)
    QApplication.processEvents()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    imsave(ROOT / "docs" / "images" / "zero_shot.png", shot, check_contrast=False)
    viewer.close()


if __name__ == "__main__":
    main()
