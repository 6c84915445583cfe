"""The "4. Predict" widget: streamed tiled prediction, scopes, cancel, model errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet._widgets._session import annotation_info, get_session
from synthetic import cell_stack, threshold_unet

TIMEOUT = 120_000
TILE = 204  # 16 x 16 output pixels per tile for a depth-4 valid U-Net: many tiles

pytestmark = pytest.mark.gui


@pytest.fixture
def stack_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    image, _ = cell_stack(3)
    viewer.add_image(image, name="cells", scale=(1.0, 0.5, 0.5))
    return viewer


def open_predict(viewer, **values):
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-paper", "4. Predict")
    widget.image_layer.value = viewer.layers["cells"]
    defaults = {"tile_size": TILE, "device": "cpu", "min_size": 4}
    for name, value in {**defaults, **values}.items():
        getattr(widget, name).value = value
    return widget


def core_segment(model, image, **kwargs):
    from napari_unet.core.segment import PlaneDone, iter_segment

    out = np.zeros(image.shape, np.uint32)
    for event in iter_segment(model, image, device="cpu", **kwargs):
        if isinstance(event, PlaneDone):
            out[event.index] = event.labels
    return out


def test_whole_stack_equals_core_segmentation(stack_viewer, qtbot):
    viewer = stack_viewer
    model = threshold_unet()
    widget = open_predict(viewer, scope="stack", show_probabilities=True)
    assert widget.model_source.value == "nuclei"  # no session model yet: the bundled one
    get_session(viewer).set_model(model)  # e.g. just trained: it is followed
    assert widget.model_source.value == "current"
    assert "4 base channels" in widget.model_info.value

    worker = widget.start()
    assert widget.is_running and not widget.predict_button.enabled
    events = []
    worker.yielded.connect(events.append)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)

    labels = viewer.layers["cells prediction"]
    assert labels.data.dtype == np.uint32
    assert labels.data.shape == (3, 96, 96)
    np.testing.assert_allclose(labels.scale, viewer.layers["cells"].scale)
    for plane in labels.data:
        assert len(np.unique(plane)) > 3  # instances in every plane
    ids = [set(np.unique(p)) - {0} for p in labels.data]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])
    expected = core_segment(model, viewer.layers["cells"].data, tile_size=TILE, min_size=4)
    np.testing.assert_array_equal(labels.data, expected)

    # the probability layer was filled tile by tile, then matches the labels
    prob = viewer.layers["cells probability"]
    assert prob.data.shape == (3, 96, 96) and prob.colormap.name == "magma"
    assert ((prob.data > 0.5) == (expected > 0)).mean() > 0.98
    from napari_unet.core.segment import PlaneDone

    tiles = [e for e in events if not isinstance(e, PlaneDone)]
    assert tiles and all(e.regions for e in tiles)
    assert [e.done for e in tiles] == list(range(1, len(tiles) + 1))
    assert tiles[-1].done == tiles[-1].total
    assert sum(isinstance(e, PlaneDone) for e in events) == 3
    assert len(events) == worker.pbar.total  # one progress step per event
    assert "Done" in widget.status.value
    from napari_unet._widgets._settings import load_settings

    assert load_settings()["tile_size"] == TILE and load_settings()["device"] == "cpu"

    # a second run reuses the layers (no duplicates)
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert [layer.name for layer in viewer.layers] == [
        "cells",
        "cells probability",
        "cells prediction",
    ]
    np.testing.assert_array_equal(viewer.layers["cells prediction"].data, expected)


def test_current_plane_only_fills_that_plane(stack_viewer, qtbot):
    viewer = stack_viewer
    get_session(viewer).set_model(threshold_unet())
    widget = open_predict(viewer, scope="plane")
    viewer.dims.set_current_step(0, 1)
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    data = viewer.layers["cells prediction"].data
    assert data[1].any() and not data[0].any() and not data[2].any()
    first = data[1].max()

    # growing the cells keeps their number and adds area
    area, cells = np.count_nonzero(data[1]), len(np.unique(data[1]))
    widget.expand.value = 2
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert len(np.unique(data[1])) == cells and np.count_nonzero(data[1]) > area
    assert data[1].max() == first  # the plane's old labels were replaced, not added to
    widget.expand.value = 0

    # predicting another plane continues the ids
    viewer.dims.set_current_step(0, 2)
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert data[2].any() and not data[0].any()
    assert data[2][data[2] > 0].min() == first + 1


def test_field_of_view_predicts_visible_region(stack_viewer, qtbot):
    viewer = stack_viewer
    model = threshold_unet()
    get_session(viewer).set_model(model)
    widget = open_predict(viewer, scope="view")
    viewer.dims.set_current_step(0, 0)
    # show about the top-left quarter of the image (world units: 0.5 px scale)
    height, width = viewer.canvas.size
    viewer.scene.camera.zoom = max(height, width) / 20.0
    viewer.scene.camera.center = (0.0, 12.0, 12.0)
    rows, cols = widget.field_of_view()
    assert 0 <= rows.start < rows.stop < 96 and 0 <= cols.start < cols.stop < 96
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    data = viewer.layers["cells prediction"].data[0]
    inside = np.zeros(data.shape, bool)
    inside[rows, cols] = True
    assert data[inside].any() and not data[~inside].any()
    # the visible region gets the whole plane's probabilities (context is included)
    whole = core_segment(
        model, viewer.layers["cells"].data, planes=[(0,)], tile_size=TILE, min_size=1
    )[0]
    assert ((data[inside] > 0) == (whole[inside] > 0)).all()


def test_cancel_keeps_a_consistent_partial_result(stack_viewer, qtbot):
    import time

    viewer = stack_viewer
    model = threshold_unet()
    forward = model.forward

    def slow_forward(x):  # >= 5 s for the 108 tiles: the cancel surely comes first
        time.sleep(0.05)
        return forward(x)

    model.forward = slow_forward
    get_session(viewer).set_model(model)
    widget = open_predict(viewer, scope="stack")
    events = []

    def cancel_on_first(event):
        events.append(event)
        widget.cancel_button.clicked.emit()  # the Cancel button

    worker = widget.start()
    worker.yielded.connect(cancel_on_first)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)

    assert events
    assert "Cancelled" in widget.status.value
    data = viewer.layers["cells prediction"].data
    expected = core_segment(
        threshold_unet(), viewer.layers["cells"].data, tile_size=TILE, min_size=4
    )
    done = [p for p in range(3) if data[p].any()]
    assert len(done) < 3
    for p in range(3):  # every plane is either finished (as the core does it) or empty
        if p in done:
            np.testing.assert_array_equal(data[p], expected[p])
        else:
            assert not data[p].any()
    assert widget.predict_button.enabled and not widget.cancel_button.enabled


def test_model_file_and_bad_file(stack_viewer, qtbot, tmp_path):
    from napari.utils.notifications import notification_manager

    from napari_unet.core.checkpoint import ModelFileError, save_model

    viewer = stack_viewer
    widget = open_predict(viewer, scope="plane", model_source="file")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a model")
    before = len(notification_manager.records)
    widget.model_file.value = bad
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("Cannot load the model" in m and "bad.pt" in m for m in messages)
    with pytest.raises(ModelFileError):
        widget.start()
    before = len(notification_manager.records)
    widget.predict_button.clicked.emit()
    assert any("Cannot predict" in str(n.message) for n in notification_manager.records[before:])
    assert not widget.is_running and "cells prediction" not in viewer.layers

    model = threshold_unet()
    model.metadata["threshold"] = 0.65  # as chosen on validation images in training
    good = save_model(tmp_path / "good.pt", model)
    widget.model_file.value = good
    assert "4 base channels" in widget.model_info.value
    assert widget.threshold.value == pytest.approx(0.65)
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert viewer.layers["cells prediction"].data.any()


def test_test_time_augmentation(stack_viewer, qtbot):
    viewer = stack_viewer
    get_session(viewer).set_model(threshold_unet())
    widget = open_predict(viewer, scope="plane", tta=True)
    viewer.dims.set_current_step(0, 0)
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    # the thresholding network is pointwise, so TTA must not change its result
    expected = core_segment(
        threshold_unet(), viewer.layers["cells"].data, planes=[(0,)], tile_size=TILE, min_size=4
    )
    np.testing.assert_array_equal(viewer.layers["cells prediction"].data, expected)


def test_use_as_annotation(stack_viewer, qtbot):
    viewer = stack_viewer
    annotations = viewer.add_labels(np.zeros((3, 96, 96), np.uint16), name="annotations")
    annotations.data[0, 10:20, 10:20] = 3
    info = annotation_info(annotations)
    info["planes"] = [0]
    info["image"] = "cells"
    get_session(viewer).set_model(threshold_unet())
    widget = open_predict(viewer, scope="stack")
    assert widget.annotation_layer.value is annotations  # found through annotation_info
    with pytest.raises(ValueError, match="predict first"):
        widget.use_as_annotation()
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)

    viewer.dims.set_current_step(0, 2)
    n = widget.use_as_annotation()
    predicted = viewer.layers["cells prediction"].data[2]
    assert n == len(np.unique(predicted)) - 1 > 0
    np.testing.assert_array_equal(annotations.data[2] > 0, predicted > 0)
    assert annotations.data[2].min() == 0 and annotations.data[2][predicted > 0].min() == 4
    assert annotations.data[0, 15, 15] == 3 and not annotations.data[1].any()  # untouched
    assert info["planes"] == [0]  # not marked: the user corrects first
    annotations.undo()  # it was recorded like painting
    assert not annotations.data[2].any()

    widget.mark_annotated.value = True
    viewer.dims.set_current_step(0, 1)
    widget.use_as_annotation()
    assert annotations.data[1].any()
    assert annotation_info(annotations)["planes"] == [0, 1]

    widget.annotation_layer.value = viewer.layers["cells prediction"]
    with pytest.raises(ValueError, match="not the prediction"):
        widget.use_as_annotation()


def test_big_stacks_stream_into_zarr(stack_viewer, qtbot, monkeypatch):
    from napari_unet.core import io

    monkeypatch.setattr(io, "NUMPY_LIMIT_BYTES", 0)  # every new output goes to zarr
    viewer = stack_viewer
    model = threshold_unet()
    get_session(viewer).set_model(model)
    widget = open_predict(viewer, scope="stack", show_probabilities=True)
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    labels = viewer.layers["cells prediction"]
    assert not isinstance(labels.data, np.ndarray)
    assert not isinstance(viewer.layers["cells probability"].data, np.ndarray)
    expected = core_segment(model, viewer.layers["cells"].data, tile_size=TILE, min_size=4)
    np.testing.assert_array_equal(np.asarray(labels.data[:]), expected)

    # re-predicting one plane keeps ids unique (the largest id is found plane by plane)
    widget.scope.value = "plane"
    viewer.dims.set_current_step(0, 0)
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    plane0 = np.asarray(labels.data[0])
    assert plane0[plane0 > 0].min() == expected.max() + 1
    np.testing.assert_array_equal(plane0 > 0, expected[0] > 0)

    # and the prediction can seed a zarr-backed annotation layer
    annotations = viewer.add_labels(io.allocate_zeros((3, 96, 96), np.uint32), name="annotations")
    widget.annotation_layer.value = annotations
    viewer.dims.set_current_step(0, 2)
    assert widget.use_as_annotation() > 0
    np.testing.assert_array_equal(np.asarray(annotations.data[2]) > 0, expected[2] > 0)


@pytest.fixture
def disks_viewer(make_napari_viewer):
    """A viewer with a 128x128 image of bright disks on a dark background."""
    from skimage.draw import disk

    viewer = make_napari_viewer()
    image = np.full((128, 128), 20.0)
    for center in [(30, 30), (30, 90), (64, 64), (100, 30), (100, 100)]:
        image[disk(center, 10, shape=image.shape)] = 200
    noise = np.random.default_rng(0).normal(0, 5, image.shape)
    viewer.add_image((image + noise).clip(0, 255).astype(np.uint8), name="cells")
    return viewer


def test_bundled_model_segments_without_annotations(disks_viewer, qtbot):
    from napari_unet.core.checkpoint import suggested_threshold
    from napari_unet.core.pretrained import load_pretrained

    viewer = disks_viewer
    assert get_session(viewer).model is None
    widget = open_predict(viewer, tile_size=0)
    combo = widget.model_source.native
    assert [combo.itemText(i) for i in range(combo.count())] == [
        "current model (session)",
        "nuclei (bundled model)",
        "model file",
    ]
    assert widget.model_source.value == "nuclei"
    assert widget.model_info.value.startswith("Bundled nuclei model: fluorescence nuclei")
    assert widget.threshold.value == pytest.approx(suggested_threshold(load_pretrained("nuclei")))
    assert widget.diameter.value == 0.0  # as trained
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    prediction = viewer.layers["cells prediction"].data
    assert prediction.shape == (128, 128)
    assert 3 <= len(np.unique(prediction)) - 1 <= 8  # five disks
    assert "Done" in widget.status.value


def test_model_choice_made_by_hand_is_kept(disks_viewer):
    widget = open_predict(disks_viewer)
    session = get_session(disks_viewer)
    widget.model_source.value = "file"  # picked by hand
    session.set_model(threshold_unet())
    assert widget.model_source.value == "file"
    widget.model_source.value = "current"
    assert "4 base channels" in widget.model_info.value
    session.set_model(None)
    assert widget.model_source.value == "current"
    with pytest.raises(ValueError, match="pick a bundled model"):
        widget.start()


def test_object_size_reaches_the_segmentation(disks_viewer, qtbot, monkeypatch):
    from napari_unet.core import segment

    calls = []
    real = segment.iter_segment

    def spy(*args, **kwargs):  # a generator function too, as the worker needs
        calls.append(kwargs)
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(segment, "iter_segment", spy)
    viewer = disks_viewer
    model = threshold_unet()
    get_session(viewer).set_model(model)
    widget = open_predict(viewer)
    assert "training object size is unknown" in widget.model_info.value
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert calls[-1]["diameter"] is None  # 0 = as trained

    model.metadata["diameter"] = 20.0  # as recorded by training
    get_session(viewer).set_model(model)
    assert "trained on objects ~20 px" in widget.model_info.value
    assert "~20 px" in widget.diameter.tooltip
    widget.diameter.value = 10.0  # cells half as big as in training: zoom 2x
    worker = widget.start()
    events = []
    worker.yielded.connect(events.append)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert calls[-1]["diameter"] == 10.0
    assert len(events) == worker.pbar.total  # the progress bar counts the rescaled tiles
    assert len(np.unique(viewer.layers["cells prediction"].data)) - 1 == 5

    widget.diameter.value = 5000.0  # far outside what rescaling allows
    with pytest.raises(ValueError, match="too far"):
        widget.start()


def test_a_membranes_model_writes_its_mask_or_its_regions(stack_viewer, qtbot):
    viewer = stack_viewer
    model = threshold_unet()
    model.metadata = {"task": "membranes"}
    widget = open_predict(viewer, scope="stack")
    get_session(viewer).set_model(model)
    assert not widget.regions.native.isHidden() and "binary mask output" in widget.model_info.value
    assert widget.split.native.isHidden() and widget.expand.native.isHidden()
    image = viewer.layers["cells"].data
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    mask = np.asarray(viewer.layers[widget.output_name()].data)
    np.testing.assert_array_equal(mask, core_segment(model, image, output="mask"))
    assert set(np.unique(mask)) == {0, 1} and "binary mask" in widget.status.value

    widget.regions.value = True
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    regions = np.asarray(viewer.layers[widget.output_name()].data)
    np.testing.assert_array_equal(regions, core_segment(model, image, min_size=4, fill_gaps=0))
    assert regions.max() > 1 and "cells" in widget.status.value

    get_session(viewer).set_model(threshold_unet())  # a cells model: no regions choice
    assert widget.regions.native.isHidden() and not widget.split.native.isHidden()


def test_an_rgb_layer_with_a_one_channel_model_says_how_to_pick_a_channel(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="cells", rgb=True)
    widget = open_predict(viewer)
    get_session(viewer).set_model(threshold_unet())
    with pytest.raises(ValueError, match="Split RGB"):
        widget.start()
    assert not widget.is_running


def test_linking_through_the_stack(stack_viewer, qtbot):
    """'One id per cell through the stack' gives what the core's linking gives."""
    viewer = stack_viewer
    model = threshold_unet()
    get_session(viewer).set_model(model)
    widget = open_predict(viewer)
    assert not widget.link.enabled  # one plane: nothing to link
    widget.scope.value = "stack"
    assert widget.link.enabled
    widget.link.value = True
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    labels = viewer.layers["cells prediction"].data
    image = viewer.layers["cells"].data
    expected = core_segment(model, image, tile_size=TILE, min_size=4, link=True)
    np.testing.assert_array_equal(labels, expected)
    unlinked = core_segment(model, image, tile_size=TILE, min_size=4)
    assert np.array_equal(labels > 0, unlinked > 0)
    assert labels.max() <= unlinked.max()  # ids continue through the planes


def core_probabilities(model, image, **kwargs):
    """The softmax probabilities of each plane, as ``iter_segment`` reports them."""
    from napari_unet.core.segment import PlaneDone, iter_segment

    out = {}
    for event in iter_segment(model, image, device="cpu", **kwargs):
        if isinstance(event, PlaneDone):
            out[event.index] = event.probabilities
    return out


def test_uncertainty_layer_comes_from_the_same_pass(stack_viewer, qtbot, monkeypatch):
    from napari_unet.core import segment
    from napari_unet.core.uncertainty import uncertainty_map

    passes = []
    real = segment.iter_segment

    def spy(*args, **kwargs):
        passes.append(kwargs)
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(segment, "iter_segment", spy)
    viewer = stack_viewer
    model = threshold_unet()
    get_session(viewer).set_model(model)
    widget = open_predict(viewer, scope="stack")
    assert widget.show_uncertainty.value is False  # off by default
    widget.show_uncertainty.value = True
    worker = widget.start()
    events = []
    worker.yielded.connect(events.append)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)

    assert len(passes) == 1  # one network pass for the labels and the uncertainty
    assert len(events) == worker.pbar.total
    layer = viewer.layers["cells uncertainty"]
    assert layer.data.dtype == np.float32 and layer.data.shape == (3, 96, 96)
    np.testing.assert_allclose(layer.scale, viewer.layers["cells"].scale)
    assert layer.colormap.name == "magma" and tuple(layer.contrast_limits) == (0.0, 1.0)
    assert 0.0 <= layer.data.min() and layer.data.max() <= 1.0
    assert layer.data.max() > 0.1  # pixels near the threshold are uncertain
    probabilities = core_probabilities(model, viewer.layers["cells"].data, tile_size=TILE)
    for (plane,), prob in probabilities.items():
        np.testing.assert_allclose(layer.data[plane], uncertainty_map(prob), atol=1e-6)
    # the labels are those of a run without the uncertainty
    expected = core_segment(model, viewer.layers["cells"].data, tile_size=TILE, min_size=4)
    np.testing.assert_array_equal(viewer.layers["cells prediction"].data, expected)
    assert [layer.name for layer in viewer.layers] == [
        "cells",
        "cells uncertainty",
        "cells prediction",
    ]
    assert "cells uncertainty" in widget.status.value

    # predicting one plane again replaces only that plane's uncertainty
    before = np.array(layer.data)
    widget.scope.value = "plane"
    viewer.dims.set_current_step(0, 1)
    widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    np.testing.assert_allclose(layer.data, before, atol=1e-6)


@pytest.mark.slow
def test_export_writes_a_tested_package_of_the_displayed_plane(
    make_napari_viewer, qtbot, tmp_path
):
    pytest.importorskip("bioimageio.core")
    import zipfile

    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.model import UNet

    viewer = make_napari_viewer()
    stack = np.random.default_rng(0).integers(0, 255, (2, 300, 260)).astype(np.uint8)
    viewer.add_image(stack, name="cells")
    viewer.dims.set_current_step(0, 1)
    widget = open_predict(viewer)
    model = UNet(base_channels=2).eval()
    get_session(viewer).set_model(model)
    assert widget.export_button in widget._advanced_form  # folded away: an expert action

    worker = widget.export_model(str(tmp_path / "my model.zip"))
    assert not widget.export_button.enabled
    qtbot.waitUntil(lambda: widget.export_button.enabled, timeout=TIMEOUT)
    assert "model test passed" in widget.status.value, widget.status.value
    assert worker is not None
    with zipfile.ZipFile(tmp_path / "my model.zip") as archive:
        sample = np.load(archive.open("test_input.npy"))
    np.testing.assert_array_equal(sample[0, 0], stack[1, 22:278, 2:258])  # centre of plane 1
    assert load_model(tmp_path / "my model.zip").config == model.config
