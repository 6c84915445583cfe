"""``napari-unet demo --gui``: the sample nuclei, half annotated, with the widgets docked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari

PLUGIN = "napari-unet-paper"


def build_demo(viewer: napari.viewer.Viewer) -> dict[str, Any]:
    """Set up ``viewer`` for the demo and return its widgets by name.

    The bundled nuclei image is opened with its masks kept on the left half
    only, that half marked as the annotated region: press *Train*, then
    *Predict* in the docked widgets.
    """
    layers = viewer.open_sample(PLUGIN, "nuclei")
    image, truth = layers[0], layers[1]
    viewer.layers.remove(truth)
    half = image.data.shape[1] // 2
    masks = np.zeros_like(truth.data, dtype=np.uint32)
    masks[:, :half] = truth.data[:, :half]
    widgets: dict[str, Any] = {}
    for name in ("1. Annotate", "2. Weight map", "3. Train", "4. Predict"):
        _, widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
    annotate = widgets["1. Annotate"]
    annotate.image_layer.value = image
    labels = viewer.add_labels(masks, name=f"{image.name} masks", opacity=0.5)
    annotate.reset_choices()
    annotate.labels_layer.value = labels
    annotate.use_labels_layer(labels)
    regions = annotate.add_region_layer()
    regions.add_rectangles([[0, 0], [image.data.shape[0], half]])
    regions.mode = "pan_zoom"
    for widget in widgets.values():
        widget.reset_choices()
    viewer.layers.selection.active = labels
    return widgets


def run_demo_viewer() -> None:
    """Open napari with the demo and run its event loop."""
    import napari

    viewer = napari.Viewer(title="napari-unet demo")
    build_demo(viewer)
    napari.run()
