"""Screenshot for docs/live-loop.md: Predict with uncertainty, then Next region to annotate."""

import os
import sys
import tempfile
import time
from pathlib import Path

import tifffile

ROOT = Path.cwd()
DATA = ROOT.parent / "shared" / "data" / "dsb2018_nuclei_train"
IMAGE_ID = (
    sys.argv[1]
    if len(sys.argv) > 1
    else "07fb37aafa6626608af90c1e18f6a743f29b6b233d2e427dcd1102df6a916cf5"
)
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs" / "images" / "next_region.png"


def wait(seconds):
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def main():
    os.environ["NAPARI_CONFIG"] = str(Path(tempfile.mkdtemp()) / "settings.yaml")
    import napari
    from napari.settings import get_settings

    get_settings().application.gui_notification_level = "error"
    image = tifffile.imread(DATA / "images" / f"{IMAGE_ID}.tif")
    print("image", image.shape, image.dtype)
    viewer = napari.Viewer(show=True, title="napari-unet")
    viewer.window.resize(1500, 950)
    viewer.add_image(image, name="nuclei", colormap="gray")

    _, predict = viewer.window.add_plugin_dock_widget("napari-unet-paper", "4. Predict")
    predict.image_layer.value = viewer.layers["nuclei"]
    predict.device.value = "cpu"
    predict.show_uncertainty.value = True
    predict.start()
    while predict.is_running:
        wait(0.1)
    print(predict.status.value)
    unc = viewer.layers["nuclei uncertainty"]
    print("uncertainty max", float(unc.data.max()), "mean", float(unc.data.mean()))
    viewer.layers["nuclei prediction"].visible = False

    _, annotate = viewer.window.add_plugin_dock_widget("napari-unet-paper", "1. Annotate")
    annotate.image_layer.value = viewer.layers["nuclei"]
    masks = annotate.new_labels_layer()
    predict.annotation_layer.value = masks
    annotate.next_region()
    while annotate.is_busy:
        wait(0.05)
    wait(0.5)
    # napari tabifies the docks: show Annotate
    annotate.update_status()
    wait(1.0)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    from skimage.io import imsave

    OUT.parent.mkdir(parents=True, exist_ok=True)
    imsave(OUT, shot[..., :3], check_contrast=False)
    print("saved", OUT, shot.shape, annotate.rectangles())
    viewer.close()


if __name__ == "__main__":
    main()
