"""The user's loop: annotate -> train -> predict -> use as annotation -> retrain."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet._widgets._session import annotation_info, get_session
from synthetic import cell_stack

TIMEOUT = 180_000

pytestmark = pytest.mark.gui


def test_annotate_train_predict_correct_retrain(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, truth = cell_stack(4)
    viewer.add_image(image, name="cells")

    # 1. annotate planes 0 and 1 (as the Annotate widget records it)
    annotations = viewer.add_labels(np.zeros_like(truth), name="cells annotations")
    annotations.data[:2] = truth[:2]
    info = annotation_info(annotations)
    info["planes"] = [0, 1]
    info["image"] = "cells"

    # 2. train a few steps in the worker
    _, train = viewer.window.add_plugin_dock_widget("napari-unet-paper", "3. Train")
    train.labels_layer.value = annotations
    # 20 steps of 252 px patches learn these bright disks for any seed (score ~0.6);
    # without the weight map: on such dense toy disks its border term needs far more
    # steps (docs/benchmarks.md), and this test is about the loop, not the loss
    for name, value in {
        "start_from": "scratch",
        "weighting": "none",
        "steps": 20,
        "patch_size": 252,
        "batch_size": 2,
        "base_channels": 8,
        "learning_rate": 0.003,
        "minutes": 0.0,
        "device": "cpu",
    }.items():
        getattr(train, name).value = value
    assert train.image_layer.value.name == "cells"
    train.start()
    qtbot.waitUntil(lambda: not train.is_running, timeout=TIMEOUT)
    first = get_session(viewer).model
    assert first is not None
    # both planes train; a band of each is held out for validation
    assert first.metadata["training"]["n_images"] == 2
    assert first.metadata["training"]["n_validation"] == 2
    assert train.last_result.best_score > 0.3

    # 3. predict the whole stack with the session's model
    _, predict = viewer.window.add_plugin_dock_widget("napari-unet-paper", "4. Predict")
    predict.image_layer.value = viewer.layers["cells"]
    assert predict.annotation_layer.value.name == "cells annotations"
    assert "8 base channels" in predict.model_info.value
    predict.scope.value = "stack"
    predict.device.value = "cpu"
    predict.min_size.value = 4
    predict.start()
    qtbot.waitUntil(lambda: not predict.is_running, timeout=TIMEOUT)
    prediction = viewer.layers["cells prediction"].data
    assert prediction.shape == truth.shape and prediction[2].any()

    # 4. use plane 2's prediction as annotation, "correct" it, mark it annotated
    viewer.dims.set_current_step(0, 2)
    n_cells = predict.use_as_annotation()
    assert n_cells > 0
    np.testing.assert_array_equal(annotations.data[2] > 0, prediction[2] > 0)
    np.testing.assert_array_equal(annotations.data[:2], truth[:2])  # other planes kept
    assert not annotations.data[3].any()
    assert info["planes"] == [0, 1]
    annotations.data[2] = truth[2]  # the user's corrections
    info["planes"].append(2)

    # 5. retrain from the current model: three planes now
    train.start_from.value = "current"
    train.steps.value = 6  # fine-tuning: a few steps
    train.start()
    qtbot.waitUntil(lambda: not train.is_running, timeout=TIMEOUT)
    second = get_session(viewer).model
    assert second is not first and second.config == first.config
    assert second.metadata["training"]["n_images"] == 3
    assert second.metadata["training"]["n_validation"] == 3
    assert train.last_result.steps == 6

    # the Predict widget follows the session's model
    assert predict.model is second
