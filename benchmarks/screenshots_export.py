"""Screenshot for docs/bioimageio.md: Predict's Advanced section after an export.

Run from the project root under Xvfb: ``xvfb-run -a python benchmarks/screenshots_export.py``.
It opens the bundled nuclei sample, exports the bundled model for bioimage.io with
the displayed image as the test sample (bioimageio.core's test runs after writing),
and saves the window to docs/images/export.png.
"""

import os
import tempfile
import time
from pathlib import Path

ROOT = Path.cwd()
OUT = ROOT / "docs" / "images" / "export.png"


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
    from skimage.io import imsave

    get_settings().application.gui_notification_level = "error"
    viewer = napari.Viewer(show=True, title="napari-unet")
    viewer.window.resize(1400, 950)
    viewer.open_sample("napari-unet-paper", "nuclei")
    viewer.layers["nuclei masks"].visible = False
    _, predict = viewer.window.add_plugin_dock_widget("napari-unet-paper", "4. Predict")
    predict.image_layer.value = viewer.layers["nuclei"]
    predict.advanced.expand(animate=False)
    path = Path(tempfile.mkdtemp()) / "nuclei-bioimageio.zip"
    start = time.perf_counter()
    predict.export_model(str(path))
    while not predict.export_button.enabled:
        wait(0.1)
    print(f"export + test: {time.perf_counter() - start:.1f} s; {predict.status.value}")
    wait(1.0)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    imsave(OUT, viewer.screenshot(canvas_only=False), check_contrast=False)
    print("saved", OUT)
    viewer.close()


if __name__ == "__main__":
    main()
