"""Screenshots of the Annotate and Weight map widgets for the docs.

Opens a napari window on a DSB 2018 nuclei image (CC0, from ``../shared/data``),
"paints" the ground-truth nuclei of one rectangle (as a user would), marks that
rectangle as the annotated region, computes the U-Net weight map and saves::

    docs/images/annotate.png    Annotate widget, masks and region over the image
    docs/images/weight_map.png  Weight map widget, weights over the masks, zoomed
                                on touching nuclei (bright gaps between them)

Run from the repository root (needs a display; Xvfb works)::

    xvfb-run -a python benchmarks/screenshots_annotate.py
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dsb2018_nuclei_train"
IMAGE_ID = "07fb37aafa6626608af90c1e18f6a743f29b6b233d2e427dcd1102df6a916cf5"
OUT = ROOT / "docs" / "images"
REGION = (150, 400, 200, 520)  # y0, y1, x0, x1 of the annotated rectangle (pixels)
W0, SIGMA = 10.0, 5.0


def wait(seconds: float) -> None:
    """Run the Qt event loop for a while (lets workers and timers deliver)."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def busiest_window(labels: np.ndarray, size: tuple[int, int]) -> tuple[int, int]:
    """Centre of the ``size`` window with the most touching-cell border weight."""
    from scipy import ndimage

    from napari_unet.core.weightmap import border_weight

    border = border_weight(labels, w0=W0, sigma=SIGMA)
    density = ndimage.uniform_filter(border, size)
    cy, cx = np.unravel_index(np.argmax(density), density.shape)
    return int(cy), int(cx)


def save(viewer, name: str) -> Path:
    from skimage.io import imsave

    wait(1.0)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    path = OUT / name
    imsave(path, shot[..., :3], check_contrast=False)
    print(f"saved {path} {shot.shape}")
    return path


def main() -> None:
    import os
    import tempfile

    # private napari settings for this run: only errors pop up over the canvas (not
    # e.g. the Qt5 deprecation warning of this machine's binding)
    os.environ["NAPARI_CONFIG"] = str(Path(tempfile.mkdtemp()) / "settings.yaml")
    import napari
    from napari.settings import get_settings

    get_settings().application.gui_notification_level = "error"

    image = tifffile.imread(DATA / "images" / f"{IMAGE_ID}.tif")
    truth = tifffile.imread(DATA / "masks" / f"{IMAGE_ID}.tif")
    y0, y1, x0, x1 = REGION
    painted = np.zeros(truth.shape, np.uint32)
    # the user painted the nuclei inside the rectangle (clipped at its edges)
    painted[y0:y1, x0:x1] = truth[y0:y1, x0:x1]
    painted = np.unique(painted, return_inverse=True)[1].reshape(painted.shape).astype(np.uint32)

    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True, title="napari-unet")
    viewer.window.resize(1500, 950)
    viewer.add_image(image, name="nuclei", colormap="gray")

    # ---- 1. Annotate
    _, annotate = viewer.window.add_plugin_dock_widget("napari-unet-paper", "1. Annotate")
    annotate.image_layer.value = viewer.layers["nuclei"]
    labels = annotate.new_labels_layer()
    labels.data = painted
    labels.opacity = 0.6
    shapes = annotate.add_region_layer()
    shapes.add_rectangles(np.array([[y0 - 0.5, x0 - 0.5], [y1 - 0.5, x1 - 0.5]]))
    shapes.mode = "pan_zoom"
    annotate.new_cell()
    annotate.update_status()
    camera = viewer.scene.camera
    camera.center = ((y0 + y1) / 2, (x0 + x1) / 2 + 20)
    camera.zoom = 2.2
    wait(0.5)
    save(viewer, "annotate.png")

    # ---- 2. Weight map
    _, weights = viewer.window.add_plugin_dock_widget("napari-unet-paper", "2. Weight map")
    weights.labels_layer.value = labels
    weights.w0.value, weights.sigma.value = W0, SIGMA
    weights.compute()
    while weights.is_running:
        wait(0.1)
    wait(0.5)
    layer = weights.weights_layer
    layer.opacity = 1.0
    labels.opacity = 0.35
    shapes.visible = False
    cy, cx = busiest_window(painted, (70, 90))
    camera.center = (cy, cx)
    camera.zoom = 3.6
    viewer.layers.selection.active = layer
    save(viewer, "weight_map.png")
    viewer.close()


if __name__ == "__main__":
    main()
