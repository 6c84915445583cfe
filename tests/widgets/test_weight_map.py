"""Weight-map widget: worker results, annotated region, live updates, stale workers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.dataset import separate_touching
from napari_unet.core.weightmap import unet_weight_map


def training_weights(labels, **kwargs):
    """The weights training uses by default: the border term (no class balance) of the
    paper's map, after separating touching cells; cells outside the annotated region
    are unknown, so they do not count (as in ``prepare_sample``)."""
    kwargs.setdefault("class_weights", None)
    separated = separate_touching(labels)
    if kwargs.get("mask") is not None:
        separated = np.where(kwargs["mask"], separated, 0)
    return unet_weight_map(separated, **kwargs)


pytestmark = pytest.mark.gui

TIMEOUT = 20_000


def two_disks(shape=(48, 64)) -> np.ndarray:
    """Two disks 2 px apart (touching-ish) and a third one far away."""
    from skimage.draw import disk

    labels = np.zeros(shape, np.uint16)
    labels[disk((24, 20), 9, shape=shape)] = 1
    labels[disk((24, 40), 9, shape=shape)] = 2
    labels[disk((6, 58), 4, shape=shape)] = 3
    return labels


@pytest.fixture
def setup(make_napari_viewer):
    from napari_unet._widgets.weight_map import WeightMapWidget

    viewer = make_napari_viewer()
    labels = viewer.add_labels(np.zeros((48, 64), np.uint32), name="cells")
    widget = WeightMapWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.live.value = False
    widget.labels_layer.value = labels
    return viewer, widget, labels


def wait_done(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    qtbot.wait(20)  # let queued slots of the finished worker run


def test_opens_from_plugin_menu(make_napari_viewer):
    from napari_unet._widgets.weight_map import WeightMapWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-paper", "2. Weight map")
    assert isinstance(widget, WeightMapWidget)


def test_compute_matches_core(setup, qtbot):
    viewer, widget, labels = setup
    labels.data = two_disks()
    widget.w0.value, widget.sigma.value = 8.0, 4.0
    with qtbot.waitSignal(widget.weights_updated, timeout=TIMEOUT):
        widget.compute()
    layer = widget.weights_layer
    assert layer.name == "cells weights"
    assert viewer.layers.index(layer) == viewer.layers.index(labels) + 1
    assert layer.colormap.name == "magma"
    expected = training_weights(two_disks(), w0=8.0, sigma=4.0)
    np.testing.assert_allclose(layer.data, expected, rtol=1e-6)
    assert expected[24, 30] > expected[45, 2] + 4  # the gap between the disks lights up
    assert layer.contrast_limits[1] == pytest.approx(8.0 + expected[24, 20])
    # with the paper's class balance
    widget.class_balance.value = True
    with qtbot.waitSignal(widget.weights_updated, timeout=TIMEOUT):
        widget.compute()
    np.testing.assert_allclose(
        layer.data,
        training_weights(two_disks(), w0=8.0, sigma=4.0, class_weights="balanced"),
        rtol=1e-6,
    )
    assert len([lay for lay in viewer.layers if lay.name == "cells weights"]) == 1


def test_rectangle_region_only(setup, qtbot):
    viewer, widget, labels = setup
    labels.data = two_disks()
    shapes = viewer.add_shapes(name="cells regions", ndim=2)
    shapes.add_rectangles(np.array([[10, 5], [40, 50]]))
    with qtbot.waitSignal(widget.weights_updated, timeout=TIMEOUT):
        widget.compute()
    data = widget.weights_layer.data
    inside = np.zeros(data.shape, bool)
    inside[10:40, 5:50] = True
    assert np.all(data[~inside] == 0)
    assert np.all(data[inside] > 0)
    np.testing.assert_allclose(data, training_weights(two_disks(), mask=inside), rtol=1e-6)
    from napari_unet.core.dataset import prepare_sample

    trained = prepare_sample(np.zeros(data.shape, np.float32), two_disks(), inside).weights
    np.testing.assert_allclose(data, trained, rtol=1e-6)  # what training uses, exactly
    # the widget reads the annotation as training does, and shows the core's targets
    from napari_unet.core.annotations import Rectangle

    annotation = widget.read_annotation()
    assert annotation.rectangles == (Rectangle(None, 10, 40, 5, 50),)
    (crop,) = annotation.crops(np.zeros(data.shape, np.float32))
    trained_crop = prepare_sample(crop.image, crop.labels, crop.mask).weights
    np.testing.assert_allclose(data[10:40, 5:50], trained_crop, rtol=1e-6)


def test_stack_current_plane_and_annotated_planes(make_napari_viewer, qtbot):
    from napari_unet._widgets._session import annotation_info
    from napari_unet._widgets.weight_map import SCOPE_ANNOTATED, WeightMapWidget

    viewer = make_napari_viewer()
    stack = np.zeros((3, 48, 64), np.uint32)
    stack[1], stack[2] = two_disks(), two_disks()[:, ::-1]
    labels = viewer.add_labels(stack, name="cells", scale=(2, 0.5, 0.5))
    widget = WeightMapWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.live.value = False
    widget.labels_layer.value = labels
    viewer.dims.set_current_step(0, 1)
    with qtbot.waitSignal(widget.weights_updated, timeout=TIMEOUT):
        widget.compute()
    data = widget.weights_layer.data
    assert data.shape == (3, 48, 64)
    np.testing.assert_allclose(data[1], training_weights(stack[1]), rtol=1e-6)
    assert not data[0].any() and not data[2].any()
    np.testing.assert_allclose(widget.weights_layer.scale, (2, 0.5, 0.5))

    # plane 2 marked: plane 1 is now outside the annotated region
    annotation_info(labels)["planes"] = [2]
    with qtbot.waitSignal(widget.weights_updated, timeout=TIMEOUT):
        widget.compute()
    assert not data[1].any()
    assert "Outside the annotated region" in widget.status.value

    widget.scope.value = SCOPE_ANNOTATED
    with qtbot.waitSignal(widget.weights_updated, timeout=TIMEOUT):
        widget.compute()
    np.testing.assert_allclose(data[2], training_weights(stack[2]), rtol=1e-6)
    assert not data[1].any()


def test_live_update_on_w0_and_paint(setup, qtbot):
    _viewer, widget, labels = setup
    labels.data = two_disks()
    widget.live.value = True
    qtbot.waitUntil(lambda: widget.weights_layer is not None, timeout=TIMEOUT)
    wait_done(qtbot, widget)
    widget.w0.value = 3.0
    expected = training_weights(two_disks(), w0=3.0)
    qtbot.waitUntil(
        lambda: np.allclose(widget.weights_layer.data, expected, rtol=1e-6), timeout=TIMEOUT
    )
    from napari_unet._widgets._settings import get_setting

    assert get_setting("w0") == 3.0
    # a paint stroke (napari's painting API emits `paint`) triggers a recompute too
    labels.paint((24, 30), 4)
    painted = np.asarray(labels.data).copy()
    assert painted[24, 30] == 4
    expected = training_weights(painted, w0=3.0)
    qtbot.waitUntil(
        lambda: np.allclose(widget.weights_layer.data, expected, rtol=1e-6), timeout=TIMEOUT
    )
    wait_done(qtbot, widget)


def test_stale_worker_is_discarded(setup, qtbot, monkeypatch):
    from napari_unet.core.annotations import Annotation

    _viewer, widget, labels = setup
    labels.data = two_disks((256, 256))
    slow = Annotation.iter_targets  # what the widget's worker runs

    def slowed(self, *args, **kwargs):
        import time

        if kwargs["w0"] == 50.0:
            time.sleep(1.0)  # the first request finishes after the second
        yield from slow(self, *args, **kwargs)

    monkeypatch.setattr(Annotation, "iter_targets", slowed)
    widget.w0.value = 50.0
    first = widget.compute()
    first_done = []
    first.finished.connect(lambda: first_done.append(True))  # it sleeps 1 s: not missed
    widget.w0.value = 2.0
    second = widget.compute()
    assert first is not second
    qtbot.waitUntil(lambda: bool(first_done) and not widget.is_running, timeout=TIMEOUT)
    qtbot.wait(50)  # let queued slots of both workers run
    expected = training_weights(two_disks((256, 256)), w0=2.0)
    np.testing.assert_allclose(widget.weights_layer.data, expected, rtol=1e-6)
    cell_weight = expected[two_disks((256, 256)) > 0].max()
    assert widget.weights_layer.contrast_limits[1] == pytest.approx(2.0 + cell_weight)
