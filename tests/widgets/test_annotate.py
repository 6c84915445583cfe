"""Annotate widget: matched Labels layer, new cells, annotated planes and rectangles."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.annotations import Rectangle

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer_widget(make_napari_viewer):
    from napari_unet._widgets.annotate import AnnotateWidget

    viewer = make_napari_viewer()
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget


def test_opens_from_plugin_menu(make_napari_viewer):
    from napari_unet._widgets.annotate import AnnotateWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-paper", "1. Annotate")
    assert isinstance(widget, AnnotateWidget)


def test_new_labels_layer_2d(viewer_widget):
    from napari_unet._widgets._session import annotation_info

    viewer, widget = viewer_widget
    image = viewer.add_image(
        np.zeros((30, 40), np.float32), name="img", scale=(0.5, 0.25), translate=(3.0, -2.0)
    )
    widget.image_layer.value = image
    layer = widget.new_labels_layer()
    assert layer.name == "img masks"
    assert layer.data.shape == (30, 40)
    assert layer.data.dtype == np.uint32
    np.testing.assert_allclose(layer.scale, (0.5, 0.25))
    np.testing.assert_allclose(layer.translate, (3.0, -2.0))
    assert annotation_info(layer)["image"] == "img"
    assert widget.labels_layer.value is layer


def test_new_labels_layer_stack_and_rgb(viewer_widget):
    viewer, widget = viewer_widget
    stack = viewer.add_image(np.zeros((3, 20, 24), np.uint16), name="stack", scale=(2, 0.5, 0.5))
    widget.image_layer.value = stack
    layer = widget.new_labels_layer()
    assert layer.data.shape == (3, 20, 24)
    np.testing.assert_allclose(layer.scale, (2, 0.5, 0.5))

    rgb = viewer.add_image(np.zeros((16, 18, 3), np.uint8), name="rgb", rgb=True)
    widget.image_layer.value = rgb
    assert widget.new_labels_layer().data.shape == (16, 18)


def test_new_labels_layer_big_stack_is_lazy(viewer_widget, monkeypatch):
    from napari_unet.core import io

    monkeypatch.setattr(io, "NUMPY_LIMIT_BYTES", 1000)
    viewer, widget = viewer_widget
    widget.image_layer.value = viewer.add_image(np.zeros((2, 32, 32), np.uint8), name="big")
    layer = widget.new_labels_layer()
    assert not isinstance(layer.data, np.ndarray)  # zarr on disk
    assert layer.data.shape == (2, 32, 32)
    layer.data_setitem((np.array([1]), np.array([3]), np.array([4])), 7)
    assert layer.data[1, 3, 4] == 7


def test_new_cell_and_brush(viewer_widget):
    viewer, widget = viewer_widget
    widget.image_layer.value = viewer.add_image(np.zeros((20, 20)), name="img")
    layer = widget.new_labels_layer()
    assert widget.new_cell() == 1
    layer.data[2:5, 2:5] = 7
    assert widget.new_cell() == 8
    assert layer.selected_label == 8
    assert layer.mode == "paint"
    assert viewer.layers.selection.active is layer
    widget.brush_size.value = 23
    assert layer.brush_size == 23
    layer.brush_size = 5
    assert widget.brush_size.value == 5


def test_new_cell_counts_painted_ids_on_big_stacks(viewer_widget, monkeypatch):
    """Over the full-scan limit, ids painted on other planes still count."""
    from napari_unet._widgets import annotate

    monkeypatch.setattr(annotate, "_FULL_SCAN_PIXELS", 10)
    viewer, widget = viewer_widget
    widget.image_layer.value = viewer.add_image(np.zeros((3, 10, 10)), name="img")
    layer = widget.new_labels_layer()
    viewer.dims.set_current_step(0, 2)
    layer.paint((2, 5, 5), 41)  # through napari's painting (emits `paint`)
    layer.data[1, 1, 1] = 99  # not painted, other plane: not scanned
    viewer.dims.set_current_step(0, 0)
    assert widget.new_cell() == 42


def test_toggle_plane(viewer_widget):
    from napari_unet._widgets._session import annotation_info

    viewer, widget = viewer_widget
    widget.image_layer.value = viewer.add_image(np.zeros((4, 10, 10)), name="img")
    layer = widget.new_labels_layer()
    viewer.dims.set_current_step(0, 2)
    assert widget.toggle_plane() is True
    assert annotation_info(layer)["planes"] == [2]
    assert widget.plane_annotated.value is True
    viewer.dims.set_current_step(0, 3)
    assert widget.plane_annotated.value is False
    widget.plane_annotated.value = True  # the check box toggles too
    assert annotation_info(layer)["planes"] == [2, 3]
    viewer.dims.set_current_step(0, 2)
    assert widget.toggle_plane() is False
    assert annotation_info(layer)["planes"] == [3]


def test_toggle_plane_2d(viewer_widget):
    from napari_unet._widgets._session import annotation_info

    viewer, widget = viewer_widget
    widget.image_layer.value = viewer.add_image(np.zeros((10, 10)), name="img")
    layer = widget.new_labels_layer()
    widget.toggle_plane()
    assert annotation_info(layer)["planes"] == [0]
    widget.toggle_plane()
    assert annotation_info(layer)["planes"] == []


def test_rectangles_from_shapes_2d_scaled(viewer_widget):
    from napari_unet._widgets._layers import rectangles_from_shapes

    viewer, widget = viewer_widget
    widget.image_layer.value = viewer.add_image(
        np.zeros((40, 60)), name="img", scale=(0.5, 0.5), translate=(10, 0)
    )
    labels = widget.new_labels_layer()
    shapes = widget.add_region_layer()
    assert shapes.name == "img masks regions"
    assert shapes.mode == "add_rectangle"
    np.testing.assert_allclose(shapes.scale, (0.5, 0.5))
    # drawn in world coordinates: rows 15..20 (pixels 10..20), columns 2..7 (4..14)
    world = np.array([[15.0, 2.0], [20.0, 7.0]])
    shapes.add_rectangles(np.array([shapes.world_to_data(p) for p in world]))
    assert rectangles_from_shapes(shapes) == [Rectangle(None, 10, 20, 4, 14)]
    assert rectangles_from_shapes(shapes, labels) == [Rectangle(None, 10, 20, 4, 14)]
    assert widget.rectangles() == [Rectangle(None, 10, 20, 4, 14)]


def test_rectangles_from_shapes_3d_and_other_grid(make_napari_viewer):
    from napari_unet._widgets._layers import rectangles_from_shapes

    viewer = make_napari_viewer()
    labels = viewer.add_labels(np.zeros((3, 20, 30), np.uint32), scale=(2, 0.5, 0.5))
    # a user-made Shapes layer in world units (no scale): rectangle on plane 1
    # (world z = 2) over pixel rows 4..10 and columns 2..30 (clipped at 30)
    shapes = viewer.add_shapes(ndim=3)
    shapes.add_rectangles(
        np.array([[2.0, 2.0, 1.0], [2.0, 2.0, 20.0], [2.0, 5.0, 20.0], [2.0, 5.0, 1.0]])
    )
    # pixel-edge corners (-0.5 in pixels) round to the covered pixel centres
    shapes.add_rectangles(
        np.array([[4.0, -0.25, -0.25], [4.0, -0.25, 1.75], [4.0, 1.75, 1.75], [4.0, 1.75, -0.25]])
    )
    assert rectangles_from_shapes(shapes, labels) == [
        Rectangle(1, 4, 10, 2, 30),
        Rectangle(2, 0, 4, 0, 4),
    ]
    # without the labels, the shapes' own data coordinates are the pixels
    assert rectangles_from_shapes(shapes)[0] == Rectangle(2, 2, 5, 1, 20)


def test_status_counts_cells(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    widget.image_layer.value = viewer.add_image(np.zeros((2, 20, 20)), name="img")
    layer = widget.new_labels_layer()
    data = np.zeros((2, 20, 20), np.uint32)
    data[0, 1:4, 1:4], data[0, 8:12, 8:12], data[0, 15:18, 2:5] = 1, 2, 5
    data[1, 1:4, 1:4] = 9
    layer.data = data
    qtbot.waitUntil(lambda: "Plane 0: 3 cells" in widget.status.value, timeout=5000)
    viewer.dims.set_current_step(0, 1)
    qtbot.waitUntil(lambda: "Plane 1: 1 cells" in widget.status.value, timeout=5000)
    widget.toggle_plane()
    assert "annotated planes: 1" in widget.status.value
    shapes = widget.add_region_layer()
    shapes.add_rectangles(np.array([[0, 0, 0], [0, 0, 5], [0, 5, 5], [0, 5, 0]]))
    qtbot.waitUntil(lambda: "1 regions" in widget.status.value, timeout=5000)


def test_mismatched_labels_layer(viewer_widget):
    viewer, widget = viewer_widget
    widget.image_layer.value = viewer.add_image(np.zeros((20, 20)), name="img")
    wrong = viewer.add_labels(np.zeros((10, 20), np.uint32), name="wrong")
    with pytest.raises(ValueError, match="shape"):
        widget.use_labels_layer(wrong)
    # picking it in the combo box shows the error instead of raising
    widget.labels_layer.value = wrong
    assert "shape" in widget.status.value


# --------------------------------------------------------------------------- next region


def ambiguous(shape, square, value=0.95, seed=0):
    """Low uncertainty (< 0.2) everywhere but one square of ``value``."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(0.0, 0.2, shape).astype(np.float32)
    u[square] = value
    return u


def click_next(widget, qtbot):
    widget.next_region_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=10_000)
    qtbot.wait(10)  # the worker's result reaches the widget


def world_center(viewer):
    return np.array(viewer.scene.camera.center[-2:])


def test_next_region_2d_moves_there_and_adds_it(viewer_widget, qtbot):
    from napari_unet._widgets import annotate
    from napari_unet._widgets._layers import field_of_view

    viewer, widget = viewer_widget
    scale, translate = np.array([0.5, 0.25]), np.array([3.0, -2.0])
    image = viewer.add_image(
        np.zeros((200, 300), np.float32), name="img", scale=scale, translate=translate
    )
    widget.image_layer.value = image
    labels = widget.new_labels_layer()
    u = ambiguous((200, 300), np.s_[120:160, 200:240])
    u[20:60, 30:70] = 0.8  # a second, less uncertain square
    viewer.add_image(u, name="img uncertainty", scale=scale, translate=translate)
    assert widget.region_size.value == annotate.NEXT_REGION_SIZE == 256
    assert widget.add_next_region.value is True
    widget.region_size.value = 40

    click_next(widget, qtbot)
    # the camera is on the ambiguous square (world coordinates), zoomed onto it
    y, x = (world_center(viewer) - translate) / scale
    assert 120 <= y < 160 and 200 <= x < 240
    assert viewer.scene.camera.zoom == pytest.approx(
        annotate.zoom_to_fit((40 * 0.5, 40 * 0.25), viewer.canvas.size)
    )
    rows, cols = field_of_view(viewer, image)
    assert rows.start <= 120 and 160 <= rows.stop and cols.start <= 200 and 240 <= cols.stop
    # added as an annotated rectangle, the masks ready to paint a new cell
    assert widget.rectangles() == [Rectangle(None, 120, 160, 200, 240)]
    assert "img masks regions" in viewer.layers
    assert viewer.layers.selection.active is labels and labels.mode == "paint"
    assert labels.selected_label == 1

    # the next click goes to the next most uncertain window: the first is annotated now
    click_next(widget, qtbot)
    y, x = (world_center(viewer) - translate) / scale
    assert 20 <= y < 60 and 30 <= x < 70
    assert widget.rectangles() == [
        Rectangle(None, 120, 160, 200, 240),
        Rectangle(None, 20, 60, 30, 70),
    ]


def test_next_region_in_a_stack_goes_to_the_plane(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    image = viewer.add_image(np.zeros((3, 100, 120), np.float32), name="stack", scale=(2, 1, 1))
    widget.image_layer.value = image
    labels = widget.new_labels_layer()
    u = ambiguous((3, 100, 120), np.s_[2, 50:82, 60:92])
    u[0, 10:42, 10:42] = 0.9  # second best, on plane 0
    viewer.add_image(u, name="stack uncertainty", scale=(2, 1, 1))
    viewer.dims.set_current_step(0, 0)
    widget.region_size.value = 32

    click_next(widget, qtbot)
    assert widget.current_plane() == 2
    y, x = world_center(viewer)
    assert 50 <= y < 82 and 60 <= x < 92
    assert widget.rectangles() == [Rectangle(2, 50, 82, 60, 92)]
    assert viewer.layers["stack masks regions"].ndim == 3

    # painted cells and marked planes count as annotated too
    labels.data[0, 10:42, 10:42] = 5  # the second-best square is painted
    widget.toggle_plane()  # plane 2 is now fully annotated
    u[1, 70:100, 0:32] = 0.5  # at the bottom edge: the 32 px window is rows 68:100
    click_next(widget, qtbot)
    assert widget.current_plane() == 1
    y, x = world_center(viewer)
    assert 70 <= y < 100 and 0 <= x < 32
    assert widget.rectangles()[-1] == Rectangle(1, 68, 100, 0, 32)


def test_next_region_without_adding_moves_on(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    widget.image_layer.value = viewer.add_image(np.zeros((80, 80), np.float32), name="img")
    widget.new_labels_layer()
    u = ambiguous((80, 80), np.s_[40:60, 40:60])
    u[0:20, 0:20] = 0.7
    viewer.add_image(u, name="img uncertainty")
    widget.region_size.value = 20
    widget.add_next_region.value = False

    click_next(widget, qtbot)
    y, x = world_center(viewer)
    assert 40 <= y < 60 and 40 <= x < 60
    assert "img masks regions" not in viewer.layers and widget.rectangles() == []
    click_next(widget, qtbot)  # the window shown is skipped, though not added
    y, x = world_center(viewer)
    assert 0 <= y < 20 and 0 <= x < 20


def test_next_region_without_uncertainty_layer_says_so(viewer_widget, qtbot):
    from napari.utils.notifications import notification_manager

    viewer, widget = viewer_widget
    widget.image_layer.value = viewer.add_image(np.zeros((80, 80), np.float32), name="img")
    widget.new_labels_layer()
    camera = viewer.scene.camera
    before = (tuple(camera.center), camera.zoom)
    n = len(notification_manager.records)
    widget.next_region_button.clicked.emit()
    messages = [str(r.message) for r in notification_manager.records[n:]]
    assert any("'img uncertainty'" in m and "Show uncertainty" in m for m in messages)
    assert "Show uncertainty" in widget.status.value
    assert not widget.is_busy
    assert (tuple(camera.center), camera.zoom) == before
    assert "img masks regions" not in viewer.layers


def test_next_region_when_nothing_is_left(viewer_widget, qtbot):
    from napari.utils.notifications import notification_manager

    viewer, widget = viewer_widget
    widget.image_layer.value = viewer.add_image(np.zeros((40, 40), np.float32), name="img")
    widget.new_labels_layer()
    viewer.add_image(ambiguous((40, 40), np.s_[0:10, 0:10]), name="img uncertainty")
    widget.toggle_plane()  # the image is fully annotated
    camera = viewer.scene.camera
    before = tuple(camera.center)
    n = len(notification_manager.records)
    click_next(widget, qtbot)
    messages = [str(r.message) for r in notification_manager.records[n:]]
    assert any("lower the region size" in m for m in messages)
    assert tuple(camera.center) == before


def test_annotated_mask_and_suggest_region():
    from napari_unet._widgets.annotate import annotated_mask, suggest_region

    labels = np.zeros((3, 10, 12), np.uint32)
    labels[0, 1:3, 1:3] = 4
    # nothing marked: only the painted pixels (not their whole plane)
    np.testing.assert_array_equal(annotated_mask(labels), labels != 0)
    mask = annotated_mask(labels, planes=[1], rectangles=[Rectangle(2, 0, 5, 6, 12)])
    expected = labels != 0
    expected[1] = True
    expected[2, 0:5, 6:12] = True
    np.testing.assert_array_equal(mask, expected)

    u = np.zeros((3, 10, 12), np.float32)
    with pytest.raises(ValueError, match="uncertainty is 0"):
        suggest_region(u, labels, 4)
    u[0, 1:5, 1:5] = 1.0  # overlaps the painted cell: the best free window is next to it
    region = suggest_region(u, labels, 2)
    assert region.plane == (0,) and not labels[(0, *region.window)].any()
    with pytest.raises(ValueError, match="has shape"):
        suggest_region(u[0], labels, 4)
    with pytest.raises(ValueError, match="lower the region size"):
        suggest_region(u, labels, 100, planes=[0, 1, 2])
