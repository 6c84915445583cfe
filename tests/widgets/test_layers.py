"""Shared layer helpers: following a Labels layer and its regions, which image it annotates."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet._widgets._session import annotation_info

pytestmark = pytest.mark.gui

RECTANGLE = np.array([[2.0, 2.0], [2.0, 10.0], [10.0, 10.0], [10.0, 2.0]])


class Recorder:
    """Bound methods (as widgets connect them), recording which layer emitted."""

    def __init__(self):
        self.calls = []

    def on_labels(self, event=None):
        self.calls.append(("labels", event.source.name))

    def on_regions(self, event=None):
        self.calls.append(("regions", event.source.name))


@pytest.fixture
def two_labels(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 32, 32), np.float32), name="img")
    first = viewer.add_labels(np.zeros((2, 32, 32), np.uint32), name="first")
    second = viewer.add_labels(np.zeros((2, 32, 32), np.uint32), name="second")
    for layer in (first, second):
        annotation_info(layer)["image"] = "img"
    return viewer, first, second


def add_rectangle(layer, plane=0):
    layer.add_rectangles(np.column_stack([np.full(4, plane), RECTANGLE]))


def test_follower_follows_one_layer_and_its_regions(two_labels):
    from napari_unet._widgets._layers import LayerFollower

    viewer, first, second = two_labels
    recorder = Recorder()
    follower = LayerFollower(
        viewer, {"metadata": recorder.on_labels}, {"data": recorder.on_regions}
    )
    follower.follow(first)
    first.events.metadata()
    assert recorder.calls == [("labels", "first")]

    regions = viewer.add_shapes(ndim=3, name="first regions")  # drawn after the choice
    assert follower.regions is regions
    add_rectangle(regions)
    assert ("regions", "first regions") in recorder.calls

    follower.follow(second)
    assert follower.labels is second and follower.regions is None
    recorder.calls.clear()
    first.events.metadata()  # the old layer and its regions: no longer followed
    add_rectangle(regions, 1)
    assert recorder.calls == []
    second.events.metadata()
    assert recorder.calls == [("labels", "second")]

    # renamed labels: their regions layer is the one with the new name
    other = viewer.add_shapes(ndim=3, name="renamed regions")
    second.name = "renamed"
    assert follower.regions is other
    viewer.layers.remove(other)
    assert follower.regions is None

    follower.close()
    recorder.calls.clear()
    second.events.metadata()
    viewer.add_shapes(ndim=3, name="renamed regions")
    assert recorder.calls == [] and follower.labels is None and follower.regions is None


def test_train_summary_does_not_react_to_the_previous_layer(two_labels):
    viewer, first, second = two_labels
    annotation_info(first)["planes"] = [0]
    annotation_info(second)["planes"] = [1]
    regions = viewer.add_shapes(ndim=3, name="first regions")
    add_rectangle(regions)
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-paper", "3. Train")
    widget.labels_layer.value = first
    assert widget.data_info.value == "1 annotated plane(s) + 1 annotated region(s)"
    widget.labels_layer.value = second
    assert widget.data_info.value == "1 annotated plane(s)"

    widget.data_info.value = "unchanged"
    first.paint((0, 5, 5), 3)  # paint the old layer, mark a plane, draw a region
    annotation_info(first)["planes"].append(1)
    first.events.metadata()
    add_rectangle(regions, 1)
    assert widget.data_info.value == "unchanged"

    annotation_info(second)["planes"].append(0)  # the chosen layer: followed
    second.events.metadata()
    assert widget.data_info.value == "2 annotated plane(s)"
    second_regions = viewer.add_shapes(ndim=3, name="second regions")
    widget.data_info.value = "unchanged"
    add_rectangle(second_regions)
    assert widget.data_info.value == "2 annotated plane(s) + 1 annotated region(s)"


def test_annotate_stops_following_the_previous_layer(two_labels):
    from napari_unet._widgets.annotate import AnnotateWidget

    viewer, first, second = two_labels
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.labels_layer.value = first
    first.paint((0, 5, 5), 41)
    assert widget._painted_max == 41
    widget.labels_layer.value = second
    assert widget._painted_max == 0
    first.paint((0, 9, 9), 77)  # the old layer: not followed any more
    assert widget._painted_max == 0 and not widget._status_timer.isActive()
    second.paint((0, 5, 5), 5)
    assert widget._painted_max == 5 and widget._status_timer.isActive()
    widget.close()
    second.paint((0, 9, 9), 9)
    assert widget._painted_max == 5


def test_which_image_a_labels_layer_annotates(two_labels):
    from napari_unet._widgets._layers import annotated_image, annotations_of

    viewer, first, second = two_labels
    image = viewer.layers["img"]
    assert annotated_image(viewer, first) is image and annotated_image(viewer, None) is None
    assert annotations_of(viewer, image) is first
    annotation_info(first)["image"] = "gone"
    assert annotated_image(viewer, first) is None
    assert annotations_of(viewer, image) is second
    annotation_info(second)["image"] = "first"  # not an Image layer
    assert annotated_image(viewer, second) is None and annotations_of(viewer, image) is None


def test_geometry_helpers(make_napari_viewer):
    from napari_unet._widgets._layers import current_index, current_plane, spatial_shape

    viewer = make_napari_viewer()
    stack = viewer.add_image(np.zeros((4, 3, 20, 30), np.uint8), name="stack", scale=(2, 1, 1, 1))
    rgb = viewer.add_image(np.zeros((20, 30, 3), np.uint8), name="rgb", rgb=True)
    assert spatial_shape(stack) == (4, 3, 20, 30) and spatial_shape(rgb) == (20, 30)
    viewer.dims.set_current_step(0, 3)  # world 6 -> plane 3 of the scaled stack
    viewer.dims.set_current_step(1, 2)
    assert current_index(viewer, stack, 2) == (3, 2) and current_index(viewer, stack, 0) == ()
    assert current_plane(viewer, rgb) is None
