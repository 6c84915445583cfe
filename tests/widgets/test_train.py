"""The "3. Train" widget: training in a worker, plot, stop, save, fine-tune."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_unet._widgets._session import annotation_info, get_session
from synthetic import cell_stack, image_of, touching_disks

TIMEOUT = 120_000

pytestmark = pytest.mark.gui


@pytest.fixture
def annotated(make_napari_viewer):
    """A viewer with a 3-plane stack whose planes 0 and 1 are annotated."""
    viewer = make_napari_viewer()
    image, truth = cell_stack(3)
    viewer.add_image(image, name="cells")
    annotations = np.zeros_like(truth)
    annotations[:2] = truth[:2]
    labels = viewer.add_labels(annotations, name="cells annotations")
    info = annotation_info(labels)
    info["planes"] = [0, 1]
    info["image"] = "cells"
    return viewer


def open_train(viewer, **values):
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-paper", "3. Train")
    widget.labels_layer.value = viewer.layers["cells annotations"]
    defaults = {
        "start_from": "scratch",
        "steps": 6,
        "patch_size": 188,
        "batch_size": 1,
        "base_channels": 8,
        "minutes": 0.0,
        "device": "cpu",
    }
    for name, value in {**defaults, **values}.items():
        getattr(widget, name).value = value
    return widget


def test_train_sets_session_model_and_plots(annotated, qtbot):
    viewer = annotated
    widget = open_train(viewer)
    assert widget.image_layer.value is viewer.layers["cells"]  # from annotation_info
    assert "2 annotated plane" in widget.data_info.value
    assert not widget.is_running
    assert get_session(viewer).model is None

    worker = widget.start()
    assert widget.is_running
    assert not widget.train_button.enabled and widget.stop_button.enabled
    bar = widget.progress_bar  # napari's activity-dock progress bar
    assert bar is not None and bar.total == 1000
    shown = []
    worker.yielded.connect(lambda event: shown.append(bar.n))
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)

    result = widget.last_result
    assert result is not None and result.steps == 6 and result.stopped == "steps"
    model = get_session(viewer).model
    assert model is result.model
    from napari_unet._widgets._settings import autosave_path
    from napari_unet.core.checkpoint import load_model

    autosaved = load_model(autosave_path())  # on disk too, in case napari crashes
    assert autosaved.metadata["best_step"] == result.best_step
    assert model.config.base_channels == 8
    assert widget.plot.steps == list(range(1, 7))
    assert len(widget.plot.losses) == 6 and np.isfinite(widget.plot.losses).all()
    # a band of each plane was held out for validation; it ran at least at the last step
    assert widget.plot.validation_steps and widget.plot.validation_steps[-1] == 6
    assert 0.0 <= widget.plot.ious[-1] <= 1.0
    assert "Done" in widget.status.value
    assert widget.train_button.enabled and not widget.stop_button.enabled
    assert widget.save_button.enabled
    # the bar follows the binding budget: here the 6 steps (no time limit)
    assert shown == sorted(shown) and shown[-1] == 1000
    assert widget.progress_bar is None  # closed with the job
    from napari_unet._widgets._settings import load_settings

    saved = load_settings()  # the form's choices are remembered
    assert saved["steps"] == 6 and saved["base_channels"] == 8 and saved["device"] == "cpu"


def test_scale_augmentation_option(annotated, qtbot):
    from napari_unet.core.training import MULTI_SCALE

    widget = open_train(annotated, scale_augment=True)
    assert widget._config().scales == MULTI_SCALE
    widget.scale_augment.value = False
    assert widget._config().scales == (1.0,)
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert widget.last_result.model.config.norm == "batch"
    assert f"threshold {widget.last_result.threshold:.2f}" in widget.status.value


def test_stop_keeps_best_model(annotated, qtbot):
    widget = open_train(annotated, steps=5000)
    events = []

    def stop_on_first(event):
        events.append(event)
        widget.stop()

    worker = widget.start()
    worker.yielded.connect(stop_on_first)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)

    assert events
    result = widget.last_result
    assert result is not None
    assert result.stopped == "stopped"
    assert result.steps < 5000
    assert get_session(annotated).model is result.model


def test_save_model_and_finetune(annotated, qtbot, tmp_path):
    from napari_unet.core.checkpoint import load_model

    widget = open_train(annotated, steps=3)
    with pytest.raises(ValueError, match="no trained model"):
        widget.save_model(tmp_path / "none.pt")
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    first = get_session(annotated).model

    path = widget.save_model(tmp_path / "model")
    assert path == tmp_path / "model.pt" and path.is_file()
    loaded = load_model(path)
    assert loaded.config == first.config
    for key, value in first.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key].numpy(), value.numpy())
    assert get_session(annotated).model_path == path
    assert "training_layers" in loaded.metadata

    # fine-tune from the current (session) model: the architecture is kept
    widget.start_from.value = "current"
    widget.base_channels.value = 16  # ignored when fine-tuning
    widget.validate.value = False  # with it, a start that stays the best is kept
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    second = get_session(annotated).model
    assert second is not first
    assert second.config.base_channels == 8
    changed = [
        not np.array_equal(second.state_dict()[k].numpy(), v.numpy())
        for k, v in first.state_dict().items()
    ]
    assert any(changed)

    # and from the saved file
    widget.start_from.value = "file"
    widget.model_file.value = path
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert get_session(annotated).model.config.base_channels == 8


def test_bad_inputs_are_reported(annotated, qtbot, tmp_path):
    from napari.utils.notifications import notification_manager

    widget = open_train(annotated)
    widget.start_from.value = "current"
    with pytest.raises(ValueError, match="no current model"):
        widget.start()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    widget.start_from.value = "file"
    widget.model_file.value = bad
    before = len(notification_manager.records)
    widget.train_button.clicked.emit()  # the button reports instead of raising
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("Cannot train" in m and "bad.pt" in m for m in messages)
    assert not widget.is_running

    annotated.layers["cells annotations"].data[:] = 0
    widget.start_from.value = "scratch"
    with pytest.raises(ValueError, match="nothing to train on"):
        widget.start()


def test_unmarked_painted_planes_count_as_annotated(annotated, qtbot):
    from napari.utils.notifications import notification_manager

    labels = annotated.layers["cells annotations"]
    labels.metadata["napari_unet"]["planes"] = []
    widget = open_train(annotated, steps=2)
    assert "Nothing marked" in widget.data_info.value
    before = len(notification_manager.records)
    widget.start()
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("counts as fully annotated" in m for m in messages)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert widget.last_result is not None


def test_train_on_annotated_rectangles(annotated, qtbot, tmp_path):
    from napari.utils.notifications import notification_manager

    from napari_unet.core.checkpoint import load_model

    viewer = annotated
    labels = viewer.layers["cells annotations"]
    labels.metadata["napari_unet"]["planes"] = []  # only the rectangles are annotated
    rectangles = [
        np.array([[p, 8, 8], [p, 8, 70], [p, 70, 70], [p, 70, 8]], float) for p in (0, 1)
    ]
    viewer.add_shapes(rectangles, shape_type="rectangle", name="cells annotations regions")
    widget = open_train(viewer, steps=2)
    assert "2 annotated region(s)" in widget.data_info.value
    before = len(notification_manager.records)
    widget.start()
    assert not any(
        "counts as fully annotated" in str(n.message)
        for n in notification_manager.records[before:]
    )
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    model = load_model(widget.save_model(tmp_path / "rect.pt"))
    sources = model.metadata["training_layers"]
    assert len(sources) == 2 and all("rectangle" in s for s in sources)
    assert model.metadata["training"]["n_images"] == 2
    assert model.metadata["training"]["n_validation"] == 2


def test_widget_modules_import_without_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import napari_unet._widgets.train, napari_unet._widgets.predict\n"
        "import napari_unet._widgets._plot\n"
        "heavy = [m for m in ('torch', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_validation_message_follows_the_run_not_the_checkbox(annotated, qtbot):
    widget = open_train(annotated, steps=2, validate=False)
    widget.start()
    assert "held out" not in widget.status.value
    widget.validate.value = True  # ticked while training: the run is unchanged
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert widget.last_result.best_score is None
    assert widget.status.value.endswith("; no validation.")


@pytest.fixture
def two_kinds(make_napari_viewer):
    """A 96x96 image with instance labels, a binary mask of them and a membrane-like mask."""
    viewer = make_napari_viewer()
    truth = touching_disks()
    membranes = np.ones((96, 96), np.uint8)
    membranes[::12], membranes[:, ::12] = 0, 0
    viewer.add_image(image_of(truth), name="cells")
    layers = {"instances": truth, "mask": (truth > 0).astype(np.uint8), "membranes": membranes}
    for name, data in layers.items():
        annotation_info(viewer.add_labels(data, name=name))["image"] = "cells"
    return viewer


def test_start_choices_offer_the_bundled_model_first(two_kinds):
    from napari_unet.core.pretrained import pretrained_models

    _, widget = two_kinds.window.add_plugin_dock_widget("napari-unet-paper", "3. Train")
    assert widget.start_from.choices == (*pretrained_models(), "scratch", "current", "file")
    combo = widget.start_from.native
    assert combo.itemText(0) == "nuclei (bundled model)"


def test_default_start_follows_the_labels_until_picked(two_kinds):
    viewer = two_kinds
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-paper", "3. Train")
    widget.labels_layer.value = viewer.layers["instances"]
    assert widget.start_from.value == "nuclei"
    assert not widget.base_channels.enabled  # the bundled model's architecture is kept
    widget.labels_layer.value = viewer.layers["mask"]  # a binary mask of nuclei: cells too
    assert widget.task.value == "cells" and widget.start_from.value == "nuclei"
    widget.labels_layer.value = viewer.layers["membranes"]
    assert widget.task.value == "membranes" and "thin background" in widget.task_info.value
    assert widget.start_from.value == "scratch" and widget.base_channels.enabled
    # the membranes preset: no weights, larger patches, no validation band (one example)
    assert widget.weighting.value == "none" and widget.patch_size.value == 572
    assert widget.batch_size.value == 1 and not widget.validate.value
    widget.labels_layer.value = viewer.layers["instances"]
    assert widget.start_from.value == "nuclei" and widget.task.value == "cells"
    assert widget.weighting.value == "border" and widget.patch_size.value == 380
    assert widget.validate.value

    # the annotated planes decide: an empty layer is taken for cells (unsure) until
    # membranes are painted and the plane is marked as annotated
    empty = viewer.add_labels(np.zeros((2, 96, 96), np.uint16), name="stack")
    widget.labels_layer.value = empty
    assert widget.start_from.value == "nuclei" and "unsure" in widget.task_info.value
    empty.data[1] = viewer.layers["membranes"].data
    annotation_info(empty)["planes"] = [1]
    empty.events.metadata()  # as the Annotate widget does when a plane is marked
    assert widget.start_from.value == "scratch" and widget.task.value == "membranes"

    # a choice made by hand is kept
    widget.start_from.value = "current"
    widget.labels_layer.value = viewer.layers["membranes"]
    assert widget.start_from.value == "current"
    widget.task.value = "cells"  # by hand
    assert widget.task_info.value == "Chosen by hand." and widget.patch_size.value == 380
    widget.labels_layer.value = viewer.layers["membranes"]
    assert widget.task.value == "cells"
    widget.start_from.value = "scratch"
    widget.labels_layer.value = viewer.layers["instances"]
    assert widget.start_from.value == "scratch" and widget.base_channels.enabled


def test_finetune_from_the_bundled_model(two_kinds, qtbot):
    from napari_unet.core.pretrained import load_pretrained

    viewer = two_kinds
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-paper", "3. Train")
    widget.labels_layer.value = viewer.layers["instances"]
    assert widget.start_from.value == "nuclei"  # not set: the default for instance labels
    values = {"steps": 2, "patch_size": 188, "batch_size": 1, "minutes": 0.0, "device": "cpu"}
    for name, value in {**values, "validate": False}.items():  # validation may keep the start
        getattr(widget, name).value = value
    widget.start()
    assert "Fine-tuning the bundled nuclei model" in widget.status.value
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)

    bundled = load_pretrained("nuclei")
    model = get_session(viewer).model
    assert model is widget.last_result.model and model.config == bundled.config
    assert any(
        not np.array_equal(model.state_dict()[k].numpy(), v.numpy())
        for k, v in bundled.state_dict().items()
    )
    assert "fine-tuned the bundled nuclei model, 2 steps" in widget.status.value


def test_learning_rate_is_auto_unless_set(annotated):
    widget = open_train(annotated)
    assert widget.learning_rate.native.text() == "auto"
    assert widget._config().learning_rate is None  # TrainConfig picks scratch / fine-tune rate
    widget.learning_rate.value = 0.003
    assert widget._config().learning_rate == pytest.approx(0.003)


# -- live preview -------------------------------------------------------------


def every_step(widget):
    """A preview after every step (the default schedule would preview a short run once)."""
    widget.preview.schedule.interval = 0.0
    widget.preview.schedule.budget = 1.0


def test_live_preview_updates_the_prediction_layer_and_the_gui_stays_responsive(annotated, qtbot):
    from qtpy.QtCore import QTimer

    from napari_unet.core.preview import PreviewUpdate

    viewer = annotated
    viewer.dims.set_point(0, 2)  # plane 2: not annotated
    _, predict = viewer.window.add_plugin_dock_widget("napari-unet-paper", "4. Predict")
    predict.image_layer.value = viewer.layers["cells"]
    widget = open_train(viewer, steps=8)
    assert widget.live_preview.value  # on by default
    every_step(widget)

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    refreshes = []
    updates = []
    began = time.perf_counter()
    worker = widget.start()
    worker.yielded.connect(
        lambda e: isinstance(e, PreviewUpdate) and updates.append((e, time.perf_counter()))
    )

    def spy_on_refresh():  # count the refreshes of the layer the first preview made
        layer = viewer.layers[predict.output_name()]
        plain = layer.refresh
        layer.refresh = lambda *a, **k: (refreshes.append(1), plain(*a, **k))
        return True

    qtbot.waitUntil(lambda: predict.output_name() in viewer.layers, timeout=TIMEOUT)
    spy_on_refresh()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    ended = time.perf_counter()
    timer.stop()

    layer = viewer.layers[predict.output_name()]  # the Predict widget's output layer
    assert layer.data.shape == (3, 96, 96) and layer.data.dtype == np.uint32
    assert widget.previews_shown >= 2 and len(refreshes) >= 1
    assert widget.previews_shown == len(updates) == 7  # between steps 1..7 of 8
    last = updates[-1][0]
    assert last.index == (2,) and last.region == (slice(0, 96), slice(0, 96))  # all in view
    np.testing.assert_array_equal(layer.data[2], last.labels)
    assert not layer.data[:2].any()  # only the shown plane is previewed
    # the event loop kept running: a timer's ticks kept arriving during training
    during = [t for t in ticks if began < t < ended]
    gaps = np.diff([began, *during, ended])
    assert len(during) >= 10 and gaps.max() < 2.0, (len(during), gaps.max(), ended - began)
    assert widget.last_result.steps == 8


def test_pan_zoom_and_slider_move_the_preview_window(annotated, qtbot):
    from napari_unet._widgets._layers import field_of_view
    from napari_unet.core.preview import PreviewUpdate

    viewer = annotated
    widget = open_train(viewer, steps=5000)
    every_step(widget)
    camera = viewer.scene.camera
    image = viewer.layers["cells"]
    updates = []
    worker = widget.start()
    worker.yielded.connect(lambda e: isinstance(e, PreviewUpdate) and updates.append(e))
    try:
        qtbot.waitUntil(lambda: bool(updates), timeout=TIMEOUT)
        assert widget.preview.window.rows == slice(0, 96)  # all of the plane in view

        camera.zoom = 4 * min(viewer.canvas.size) / 96  # a quarter of the plane's side
        camera.center = (0.0, 30.0, 30.0)
        first = widget.preview.window
        rows, cols = field_of_view(viewer, image)
        assert (first.rows, first.cols) == (rows, cols)
        assert first.rows.stop - first.rows.start < 96 and first.index == (1,)  # the middle plane

        camera.center = (0.0, 60.0, 50.0)  # pan
        moved = widget.preview.window
        assert moved.rows.start - first.rows.start == 30
        assert moved.cols.start - first.cols.start == 20
        qtbot.waitUntil(lambda: updates[-1].region == (moved.rows, moved.cols), timeout=TIMEOUT)

        viewer.dims.set_point(0, 2)  # the slider: another plane
        assert widget.preview.window.index == (2,)
        qtbot.waitUntil(lambda: updates[-1].index == (2,), timeout=TIMEOUT)
        prediction = viewer.layers["cells prediction"]
        np.testing.assert_array_equal(
            prediction.data[(2, *updates[-1].region)], updates[-1].labels
        )

        viewer.dims.ndisplay = 3  # no field of view in 3D: nothing previewed
        assert widget.preview.window is None
    finally:
        widget.stop()
        qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert widget.last_result.stopped == "stopped"  # Stop keeps the best model as before
    camera.center = (0.0, 10.0, 10.0)  # after training the view is not followed
    viewer.dims.ndisplay = 2
    assert widget.preview.window is None


def test_live_preview_off_leaves_the_prediction_layer_alone(annotated, qtbot):
    from napari_unet.core.preview import PreviewUpdate

    viewer = annotated
    widget = open_train(viewer, steps=4, live_preview=False)
    every_step(widget)
    events = []
    worker = widget.start()
    worker.yielded.connect(events.append)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert len(events) == 4 and not any(isinstance(e, PreviewUpdate) for e in events)
    assert "cells prediction" not in viewer.layers and widget.previews_shown == 0


# -- versions and correct-and-retrain -----------------------------------------


def test_two_runs_are_two_versions_scored_on_the_same_held_out_band(
    annotated, qtbot, make_napari_viewer
):
    """Train, correct, retrain: v1 and v2, compared fairly, and one click back to v1."""
    from napari_unet._widgets._settings import load_settings
    from napari_unet.core.held_out import held_out_set
    from napari_unet.core.tiling import predict_tiled

    viewer = annotated
    session = get_session(viewer)
    # as in test_flow: without the weight map these toy disks are learnt in few steps
    fast = {"weighting": "none", "learning_rate": 0.003, "patch_size": 252, "batch_size": 2}
    widget = open_train(viewer, steps=6, **fast)
    assert widget.version.choices == () and not widget.version.enabled
    assert not widget.retrain_button.enabled
    assert "kept as a version" in widget.versions_info.value
    run1 = widget._collect_crops()[0]  # what the first run trains on
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)

    v1 = widget.last_version
    assert v1 is not None and v1.name == "v1" and v1.parent == "scratch"
    assert v1.annotations.n_examples == 2 and v1.comparison is None
    assert session.version == "v1" and session.model is widget.last_result.model
    assert session.model_path == session.store.path("v1")
    assert widget.version.choices == ("v1",) and widget.version.value == "v1"
    assert widget.version.native.currentText() == v1.describe()
    assert widget.retrain_button.enabled and widget.retrain_button.text == "Retrain v1"
    assert "kept as version v1" in widget.status.value
    assert load_settings()["version"] == "v1"
    plane = viewer.layers["cells"].data[2]  # never annotated
    image = session.model.normalization(plane)
    before = predict_tiled(session.model, image, device="cpu")

    # the correction: plane 2's cells (as 'Use as annotation' copies them, then edited)
    _, truth = cell_stack(3)
    labels = viewer.layers["cells annotations"]
    labels.data[2] = truth[2]
    labels.metadata["napari_unet"]["planes"].append(2)
    run2 = widget._collect_crops()[0]
    widget.steps.value = 12
    widget.start_from.value = "scratch"  # Retrain ignores "Start from": the current version
    widget.retrain_button.clicked.emit()
    assert widget.is_running and "Fine-tuning version v1 on 3 example(s)" in widget.status.value
    assert not widget.retrain_button.enabled and not widget.version.enabled
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)

    v2 = widget.last_version
    assert v2 is not None and v2.name == "v2"
    assert (v2.parent, v2.lineage) == ("v1", ("v1", "scratch"))  # retrained from v1
    assert v2.annotations.n_examples == 3
    model = session.model
    assert session.version == "v2" and model is widget.last_result.model
    assert model.metadata["training"]["start"] == "v1"
    # the corrected plane counts in training and in validation, as the others
    assert model.metadata["training"]["n_images"] == 3
    assert model.metadata["training"]["n_validation"] == 3
    assert widget.version.choices == ("v2", "v1") and widget.version.value == "v2"
    assert widget.retrain_button.text == "Retrain v2"
    viewer.add_points(name="marks")  # napari resets the forms' choices: the versions stay
    assert widget.version.choices == ("v2", "v1") and widget.version.value == "v2"
    assert widget.start_from.choices[-3:] == ("version:v2", "version:v1", "file")
    # both scored on the same held-out pixels: the union of the two runs' bands
    held = held_out_set(run1, run2)
    assert len(held) == 3
    comparison = v2.comparison
    assert comparison is not None and set(comparison.scores) == {"v1", "v2"}
    assert comparison.n_pixels == held.n_pixels and comparison.held_out == held.digest
    line = comparison.versus("v2", "v1")
    assert line in widget.versions_info.value
    assert f"on the same {held.n_pixels} held-out pixels" in line
    assert widget.last_result.best_step > 0  # training changed v1's weights
    assert not np.array_equal(predict_tiled(model, image, device="cpu"), before)

    # one click back: v1's predictions exactly
    widget.version.value = "v1"
    assert session.version == "v1" and session.model is not model
    assert session.model_path == session.store.path("v1")
    np.testing.assert_array_equal(predict_tiled(session.model, image, device="cpu"), before)
    assert widget.retrain_button.text == "Retrain v1"
    assert "v1: validation score" in widget.versions_info.value
    assert load_settings()["version"] == "v1"

    # the next napari session restores v1
    again = make_napari_viewer()  # its own napari-unet session
    restored = get_session(again)
    assert restored.model is not None and restored.version == "v1"
    np.testing.assert_array_equal(predict_tiled(restored.model, image, device="cpu"), before)
    _, other = again.window.add_plugin_dock_widget("napari-unet-paper", "3. Train")
    assert other.version.choices == ("v2", "v1") and other.version.value == "v1"


def test_retrain_needs_a_current_version(annotated):
    from napari.utils.notifications import notification_manager

    widget = open_train(annotated)
    with pytest.raises(ValueError, match="no current version"):
        widget.retrain()
    before = len(notification_manager.records)
    widget.retrain_button.clicked.emit()  # the button reports instead of raising
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("Cannot retrain" in m for m in messages)
    assert not widget.is_running


def test_a_run_that_cannot_be_kept_as_a_version_still_gives_its_model(annotated, qtbot):
    from napari_unet._widgets._settings import versions_path

    folder = versions_path()
    folder.mkdir(parents=True)
    (folder / "versions.json").write_text("{not json")  # a corrupt index
    widget = open_train(annotated, steps=2)
    assert "cannot be read" in widget.versions_info.value
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    session = get_session(annotated)
    assert widget.last_version is None and session.version is None
    assert session.model is widget.last_result.model  # the model is not lost
    assert "Not kept as a version" in widget.status.value and "corrupt" in widget.status.value
    assert sorted(p.name for p in folder.iterdir()) == ["versions.json"]  # nothing written
