"""Screenshots of the Train and Predict widgets for the docs.

Opens a napari window on a stack of five DSB 2018 fluorescence nuclei images
(CC0, from ``../shared/data``), marks the ground-truth masks of the first three
planes as annotations (as a user would after painting them), trains a U-Net
(16 base channels) for 240 steps in the Train widget (1-2 minutes on 2 idle CPU
cores; capped at 5 minutes), then segments plane 3 (the fourth, never used in
training) with the Predict widget, and saves::

    docs/images/train.png    Train widget after training: loss and validation plot
    docs/images/predict.png  Predict widget, predicted nuclei over the unseen plane

Run from the repository root (needs a display; Xvfb works)::

    xvfb-run -a .venv/bin/python benchmarks/screenshots_train_predict.py [--steps N] [--minutes M]

Prints the training summary and the prediction's instance F1 against the
ground truth of the unseen plane.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dsb2018_nuclei_train"
OUT = ROOT / "docs" / "images"
#: 520 x 696 images of the same kind: three annotated planes, then two unseen ones
IMAGE_IDS = ["3f9fc8e63f87", "6b61ab2e3ff0", "3ebd2ab34ba8", "62057502c387", "bde3727f3a9e"]
ANNOTATED = [0, 1, 2]
SHOWN = 3


def wait(seconds: float) -> None:
    """Run the Qt event loop for a while (lets workers and timers deliver)."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def wait_for(widget, timeout: float = 900.0) -> None:
    end = time.monotonic() + timeout
    while widget.is_running and time.monotonic() < end:
        wait(0.1)


def save(viewer, name: str) -> Path:
    from skimage.io import imsave

    wait(1.0)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    path = OUT / name
    imsave(path, shot[..., :3], check_contrast=False)
    print(f"saved {path} {shot.shape}")
    return path


def load(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    (path,) = sorted((DATA / "images").glob(f"{prefix}*.tif"))
    return tifffile.imread(path), tifffile.imread(DATA / "masks" / path.name)


def annotated_viewer(
    image: np.ndarray,
    annotations: np.ndarray,
    name: str,
    planes: list[int],
    *,
    opacity: float = 0.5,
    **image_kwargs: object,
) -> tuple:
    """A napari window (private settings) with ``image`` and its annotations layer.

    ``planes`` of the annotations are marked as annotated, as the Annotate widget
    does; only errors pop up over the canvas. Returns ``(viewer, labels_layer)``.
    """
    import os
    import tempfile

    # private napari settings (and napari-unet settings next to them) for this run
    os.environ["NAPARI_CONFIG"] = str(Path(tempfile.mkdtemp()) / "settings.yaml")
    import napari
    from napari.settings import get_settings

    from napari_unet._widgets._session import annotation_info

    get_settings().application.gui_notification_level = "error"
    viewer = napari.Viewer(show=True, title="napari-unet")
    viewer.window.resize(1500, 1000)
    viewer.add_image(image, name=name, colormap="gray", **image_kwargs)
    labels = viewer.add_labels(annotations, name=f"{name} annotations", opacity=opacity)
    info = annotation_info(labels)
    info["planes"] = planes
    info["image"] = name
    viewer.dims.set_current_step(0, 0)
    return viewer, labels


def nuclei_viewer(n_planes: int, annotated: list[int]) -> tuple:
    """The first ``n_planes`` of :data:`IMAGE_IDS` as a stack, ``annotated`` planes painted.

    Returns ``(viewer, labels_layer, truth)``; the annotated planes hold their
    ground truth, as if painted, and are marked as annotated.
    """
    pairs = [load(prefix) for prefix in IMAGE_IDS[:n_planes]]
    image = np.stack([p[0] for p in pairs])
    truth = np.stack([p[1] for p in pairs]).astype(np.uint32)
    annotations = np.zeros_like(truth)
    annotations[annotated] = truth[annotated]
    contrast = (0, float(np.percentile(image, 99.8)))
    viewer, labels = annotated_viewer(
        image, annotations, "nuclei", annotated, contrast_limits=contrast
    )
    return viewer, labels, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training time cap (minutes)")
    parser.add_argument("--steps", type=int, default=240, help="most training steps")
    args = parser.parse_args()
    from napari_unet.core.metrics import f1_at

    OUT.mkdir(parents=True, exist_ok=True)
    viewer, labels, truth = nuclei_viewer(len(IMAGE_IDS), ANNOTATED)

    # ---- 3. Train
    train_dock, train = viewer.window.add_plugin_dock_widget("napari-unet-paper", "3. Train")
    train.labels_layer.value = labels
    train.steps.value = args.steps
    train.minutes.value = args.minutes
    train.base_channels.value = 16
    train.patch_size.value = 252
    train.device.value = "cpu"
    start = time.monotonic()
    train.start()
    wait_for(train)
    result = train.last_result
    print(
        f"trained {result.steps} steps in {time.monotonic() - start:.0f} s "
        f"({result.stopped}); best score {result.best_score} at step {result.best_step}"
    )
    viewer.layers.selection.active = labels
    viewer.reset_view()
    save(viewer, "train.png")

    # ---- 4. Predict the unseen plane
    viewer.window.remove_dock_widget(train_dock)
    _, predict = viewer.window.add_plugin_dock_widget("napari-unet-paper", "4. Predict")
    predict.image_layer.value = viewer.layers["nuclei"]
    predict.scope.value = "plane"
    predict.device.value = "cpu"
    predict.show_probabilities.value = True
    viewer.dims.set_current_step(0, SHOWN)
    predict.start()
    wait_for(predict)
    prediction = viewer.layers["nuclei prediction"]
    prediction.opacity = 0.5
    prediction.contour = 0
    viewer.layers["nuclei probability"].visible = False
    labels.visible = False
    predicted = np.asarray(prediction.data[SHOWN])
    n_cells = len(np.unique(predicted[predicted > 0]))
    f1 = f1_at(truth[SHOWN], predicted)
    print(
        f"plane {SHOWN}: {n_cells} cells predicted, {int(truth[SHOWN].max())} true; "
        f"F1 at IoU 0.5 = {f1:.2f}"
    )
    viewer.layers.selection.active = prediction
    viewer.reset_view()
    save(viewer, "predict.png")
    viewer.close()


if __name__ == "__main__":
    main()
