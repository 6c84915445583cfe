"""Screenshot of the live preview: the Train widget training while the view is segmented.

Opens napari on the DSB 2018 nuclei stack of ``screenshots_train_predict.py``
(planes 0-2 annotated with their ground truth, as if painted), shows the
unseen plane 3, and clicks Train with the widget's defaults (fine-tuning the
bundled model, live preview on). When the prediction layer has been
refreshed ``--previews`` times, the screenshot is taken, then training is
stopped. Saves::

    docs/images/live_preview.png

Run from the repository root (needs a display; Xvfb works)::

    xvfb-run -a .venv/bin/python benchmarks/screenshots_live_preview.py

Prints the time from Train to each preview.
"""

from __future__ import annotations

import argparse
import time

from screenshots_train_predict import ANNOTATED, nuclei_viewer, save, wait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--previews", type=int, default=3, help="previews before the shot")
    args = parser.parse_args()

    viewer, labels, _ = nuclei_viewer(4, ANNOTATED)
    labels.visible = False
    viewer.dims.set_current_step(0, 3)  # the plane nobody annotated

    _, train = viewer.window.add_plugin_dock_widget("napari-unet-paper", "3. Train")
    train.labels_layer.value = labels
    train.device.value = "cpu"
    assert train.live_preview.value, "the live preview is on by default"
    refreshed: list[float] = []
    began = time.monotonic()
    train.start()
    while train.is_running and train.previews_shown < args.previews:
        if train.previews_shown > len(refreshed):
            refreshed.append(time.monotonic() - began)
        wait(0.05)
    refreshed.append(time.monotonic() - began)
    print("previews at", [round(t, 1) for t in refreshed], "s after Train")
    save(viewer, "live_preview.png")
    train.stop()
    while train.is_running:
        wait(0.1)
    viewer.close()


if __name__ == "__main__":
    main()
