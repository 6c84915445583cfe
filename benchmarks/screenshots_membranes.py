"""Screenshots of the membranes task for the docs (ISBI 2012 EM, from ``../shared/data``).

Opens slices 00, 01 and 15 of the ISBI 2012 training stack, marks the masks of
slices 00 and 01 as annotations, opens the Train widget (which detects the
membranes task from the labels and shows its preset), trains for
``--minutes`` (default 1), then predicts slice 15 with the Predict widget
(binary mask output) and saves::

    docs/images/train_membranes.png    the Train widget with the detected task
    docs/images/predict_membranes.png  the predicted mask over the unseen slice

Run from the repository root (needs a display; Xvfb works)::

    xvfb-run -a .venv/bin/python benchmarks/screenshots_membranes.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tifffile
from screenshots_train_predict import ROOT, annotated_viewer, save, wait_for

DATA = ROOT.parent / "shared" / "data" / "isbi2012_em_membranes"
SLICES = ["00", "01", "15"]
ANNOTATED = [0, 1]
SHOWN = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="training time budget")
    args = parser.parse_args()
    from napari_unet.core.metrics import foreground_iou

    image = np.stack([tifffile.imread(DATA / "images" / f"{s}.tif") for s in SLICES])
    truth = np.stack([tifffile.imread(DATA / "masks" / f"{s}.tif") for s in SLICES])
    annotations = np.zeros(truth.shape, np.uint8)
    annotations[ANNOTATED] = truth[ANNOTATED]
    viewer, labels = annotated_viewer(image, annotations, "EM", ANNOTATED, opacity=0.4)

    train_dock, train = viewer.window.add_plugin_dock_widget("napari-unet-paper", "3. Train")
    train.labels_layer.value = labels
    train.minutes.value = args.minutes
    train.device.value = "cpu"
    print(f"task: {train.task.value}; {train.task_info.value}")
    start = time.monotonic()
    train.start()
    wait_for(train)
    result = train.last_result
    print(f"trained {result.steps} steps in {time.monotonic() - start:.0f} s ({result.stopped})")
    viewer.layers.selection.active = labels
    viewer.reset_view()
    save(viewer, "train_membranes.png")

    viewer.window.remove_dock_widget(train_dock)
    _, predict = viewer.window.add_plugin_dock_widget("napari-unet-paper", "4. Predict")
    predict.image_layer.value = viewer.layers["EM"]
    predict.scope.value = "plane"
    predict.device.value = "cpu"
    viewer.dims.set_current_step(0, SHOWN)
    predict.start()
    wait_for(predict)
    mask = np.asarray(viewer.layers["EM prediction"].data[SHOWN])
    viewer.layers["EM prediction"].opacity = 0.4
    labels.visible = False
    print(f"slice {SLICES[SHOWN]}: cell IoU {foreground_iou(truth[SHOWN] > 0, mask > 0):.3f}")
    viewer.layers.selection.active = viewer.layers["EM prediction"]
    viewer.reset_view()
    save(viewer, "predict_membranes.png")
    viewer.close()


if __name__ == "__main__":
    main()
