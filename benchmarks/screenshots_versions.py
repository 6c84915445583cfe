"""Screenshot of the Train widget's "Version" row after a correction and a retrain.

Opens napari on the DSB 2018 nuclei stack of ``screenshots_train_predict.py``,
annotates planes 0 and 1 (their ground truth, as if painted), trains v1 from
scratch, predicts plane 2 with the Predict widget and copies it with "Use as
annotation", "corrects" the copy (the ground truth of plane 2 stands for the
user's edits) and marks the plane as annotated, then clicks "Retrain": v2 is
fine-tuned from v1, and both are scored on the same held-out pixels. Saves::

    docs/images/versions.png  Train widget with v2 and v1 and their comparison

Run from the repository root (needs a display; Xvfb works)::

    xvfb-run -a .venv/bin/python benchmarks/screenshots_versions.py [--steps N]

Prints both versions and the comparison line.
"""

from __future__ import annotations

import argparse
import time

from screenshots_train_predict import nuclei_viewer, save, wait_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="steps of each run")
    args = parser.parse_args()

    from napari_unet._widgets._session import annotation_info

    viewer, labels, truth = nuclei_viewer(3, [0, 1])

    _, train = viewer.window.add_plugin_dock_widget("napari-unet-paper", "3. Train")
    train.labels_layer.value = labels
    train.start_from.value = "scratch"
    train.steps.value = args.steps
    train.minutes.value = 5.0
    train.base_channels.value = 16
    train.patch_size.value = 252
    train.device.value = "cpu"
    train.live_preview.value = False
    began = time.monotonic()
    train.start()
    wait_for(train)
    print(f"{train.last_version.describe()} in {time.monotonic() - began:.0f} s")

    # predict plane 2, use it as annotation, correct it (here: its ground truth)
    predict_dock, predict = viewer.window.add_plugin_dock_widget("napari-unet-paper", "4. Predict")
    predict.image_layer.value = viewer.layers["nuclei"]
    predict.device.value = "cpu"
    viewer.dims.set_current_step(0, 2)
    predict.start()
    wait_for(predict)
    predict.use_as_annotation()
    labels.data[2] = truth[2]
    info = annotation_info(labels)
    if 2 not in info["planes"]:
        info["planes"].append(2)
    labels.events.metadata()
    labels.refresh()
    viewer.layers["nuclei prediction"].visible = False
    viewer.window.remove_dock_widget(predict_dock)  # the Train widget gets the height

    began = time.monotonic()
    train.retrain()
    wait_for(train)
    print(f"{train.last_version.describe()} in {time.monotonic() - began:.0f} s")
    print(train.versions_info.value)
    viewer.layers.selection.active = labels
    viewer.reset_view()
    save(viewer, "versions.png")
    viewer.close()


if __name__ == "__main__":
    main()
