"""Annotate widget: a Labels layer matched to an image, cells, annotated region.

The user picks an Image layer, creates (or picks) a Labels layer with the same
spatial grid, paints cells one id at a time ("New cell"), and says where the
annotation is complete: whole planes ("Plane is fully annotated", stored in the
labels' metadata, see :func:`napari_unet._widgets._session.annotation_info`)
and/or rectangles drawn in a Shapes layer named ``"<labels> regions"``.
Unpainted pixels inside the annotated region are background; everywhere else
they are unknown. :func:`~napari_unet._widgets._layers.rectangles_from_shapes`
turns the drawn rectangles into :class:`napari_unet.core.annotations.Rectangle`
objects (pixel indices).

Memory for new Labels layers: :func:`napari_unet.core.io.allocate_zeros` (a
numpy array up to :data:`~napari_unet.core.io.NUMPY_LIMIT_BYTES`, whose
untouched pages the OS does not even commit; bigger stacks get a zarr array in a
temporary folder, chunked one plane tile at a time, so only painted chunks use
memory or disk). The folder is removed when the array is garbage-collected or
Python exits: save the layer (File > Save Selected Layers) to keep the masks.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, Container, Label, PushButton, SpinBox, create_widget
from qtpy.QtCore import QTimer

from napari_unet._widgets._layers import (
    MASKS_SUFFIX,
    LayerFollower,
    annotated_image,
    annotated_rectangles,
    check_labels_match,
    current_plane,
    layer_choices,
    regions_layer_for,
    regions_layer_name,
    spatial_shape,
)
from napari_unet._widgets._session import annotation_info
from napari_unet.core.io import allocate_zeros, max_label

if TYPE_CHECKING:
    import napari

    from napari_unet.core.annotations import Rectangle

__all__ = ["AnnotateWidget"]

#: Labels arrays up to this many pixels are scanned whole for their largest id.
_FULL_SCAN_PIXELS = 1 << 27
#: Delay (ms) before the status line is recomputed after a change.
_STATUS_DELAY_MS = 150
_LABELS_DTYPE = np.uint32


# --------------------------------------------------------------------------- helpers


def _max_painted(atoms: Any) -> int:
    """Largest label value written by one Labels ``paint`` event item."""
    best = 0
    for atom in atoms or ():
        value = getattr(atom, "new_value", None)
        if value is None:
            try:
                value = atom[2]
            except (TypeError, IndexError):
                continue
        value = np.asarray(value)
        if value.size:
            best = max(best, int(value.max()))
    return best


# --------------------------------------------------------------------------- widget


class AnnotateWidget(Container):
    """Paint instance masks and mark the annotated region for U-Net training.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer holding the image.

    Attributes
    ----------
    image_layer : magicgui ComboBox
        The Image layer to annotate.
    new_layer_button : PushButton
        Create a Labels layer matched to the image (:meth:`new_labels_layer`).
    labels_layer : magicgui ComboBox
        The Labels layer holding the masks (new or existing, same pixel grid).
    new_cell_button : PushButton
        Select the next free label id and paint mode (:meth:`new_cell`).
    brush_size : SpinBox
        Bound to the labels layer's ``brush_size``.
    plane_annotated : CheckBox
        "Plane is fully annotated": whether the current plane is in the
        labels' annotated planes (:meth:`toggle_plane`).
    add_region_button : PushButton
        Create/select the ``"<labels> regions"`` Shapes layer in rectangle mode
        (:meth:`add_region_layer`).
    status : Label
        Cells on the current plane, annotated planes and regions.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._follower = LayerFollower(
            viewer,
            {
                "paint": self._on_paint,
                "data": self._schedule_status,
                "metadata": self._on_metadata,
                "brush_size": self._on_layer_brush,
                "name": self._on_layers_changed,
            },
            {"data": self._schedule_status},
        )
        self._painted_max = 0
        self._updating_plane_box = False
        self._syncing_image = False

        self.image_layer = create_widget(
            annotation="napari.layers.Image",
            label="Image",
            options={"choices": layer_choices(viewer, "Image")},
        )
        self.new_layer_button = PushButton(text="New annotation layer")
        self.labels_layer = create_widget(
            annotation="napari.layers.Labels",
            label="Masks",
            options={"choices": layer_choices(viewer, "Labels")},
        )
        self.new_cell_button = PushButton(text="New cell")
        self.brush_size = SpinBox(value=10, min=1, max=200, label="Brush size")
        self.plane_annotated = CheckBox(text="Plane is fully annotated", value=False)
        self.add_region_button = PushButton(text="Add region (rectangles)")
        self.status = Label(value="Pick an image, then 'New annotation layer'.", label="Status")
        self.status.native.setWordWrap(True)
        self.extend(
            [
                self.image_layer,
                self.new_layer_button,
                self.labels_layer,
                self.new_cell_button,
                self.brush_size,
                self.plane_annotated,
                self.add_region_button,
                self.status,
            ]
        )

        self._status_timer = QTimer(self.native)
        self._status_timer.setSingleShot(True)
        self._status_timer.setInterval(_STATUS_DELAY_MS)
        self._status_timer.timeout.connect(self.update_status)

        self.new_layer_button.changed.connect(self.new_labels_layer)
        self.new_cell_button.changed.connect(self.new_cell)
        self.add_region_button.changed.connect(self.add_region_layer)
        self.brush_size.changed.connect(self._on_brush_size)
        self.plane_annotated.changed.connect(self._on_plane_box)
        self.labels_layer.changed.connect(self._on_labels_changed)
        self.image_layer.changed.connect(self._on_image_changed)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        viewer.layers.events.reordered.connect(self._on_layers_changed)
        viewer.dims.events.current_step.connect(self._on_step)
        self.reset_choices()
        self._on_labels_changed(self.labels_layer.value)

    # ----------------------------------------------------------------- public API

    def new_labels_layer(self) -> Any:
        """Add a Labels layer matched to the selected image and select it.

        Same pixel grid as the image (spatial axes only for RGB), same scale
        and translation, ``uint32``, named ``"<image> masks"``.

        Returns
        -------
        napari.layers.Labels
        """
        image = self.image_layer.value
        if image is None:
            raise ValueError("pick an Image layer to annotate first")
        shape = spatial_shape(image)
        data = allocate_zeros(shape, _LABELS_DTYPE, name=f"{image.name} masks")
        layer = self._viewer.add_labels(
            data,
            name=f"{image.name}{MASKS_SUFFIX}",
            scale=image.scale,
            translate=image.translate,
            metadata={},
        )
        annotation_info(layer)["image"] = image.name
        self.reset_choices()
        self.labels_layer.value = layer
        return layer

    def use_labels_layer(self, layer: Any) -> None:
        """Annotate with an existing Labels layer (checked against the image).

        Raises
        ------
        ValueError
            If it does not match the selected image's pixel grid.
        """
        image = self.image_layer.value
        if image is not None:
            check_labels_match(layer, image)
            annotation_info(layer)["image"] = image.name
        else:
            annotation_info(layer)
        self._hook_labels(layer)
        self._sync_controls()
        self.update_status()

    def new_cell(self) -> int:
        """Select the next free label id (largest id + 1) and switch to paint mode.

        For arrays over ``2**27`` pixels only the current plane and the ids
        painted since the layer was picked are scanned: ids are then unique per
        plane, which is what the 2D training needs.

        Returns
        -------
        int
            The selected label id.
        """
        layer = self._require_labels()
        new_id = self._max_label(layer) + 1
        layer.selected_label = new_id
        layer.mode = "paint"
        self._viewer.layers.selection.active = layer
        self.update_status()
        return new_id

    def toggle_plane(self) -> bool:
        """Add or remove the current plane in the labels' annotated planes.

        Returns
        -------
        bool
            Whether the plane is now marked fully annotated.
        """
        layer = self._require_labels()
        plane = self.current_plane()
        self._set_plane_annotated(layer, plane, plane not in annotation_info(layer)["planes"])
        return plane in annotation_info(layer)["planes"]

    def current_plane(self) -> int:
        """Index of the current plane of the labels (0 for a 2D layer)."""
        layer = self._require_labels()
        plane = current_plane(self._viewer, layer)
        return 0 if plane is None else plane

    def add_region_layer(self) -> Any:
        """Create or select the ``"<labels> regions"`` Shapes layer, in rectangle mode.

        Returns
        -------
        napari.layers.Shapes
        """
        labels = self._require_labels()
        shapes = regions_layer_for(self._viewer, labels)
        if shapes is None:
            shapes = self._viewer.add_shapes(
                name=regions_layer_name(labels.name),
                ndim=labels.ndim,
                scale=labels.scale,
                translate=labels.translate,
                shape_type="rectangle",
                edge_color="yellow",
                face_color="transparent",
                edge_width=2,
            )
        self._follower.refresh()
        self._viewer.layers.selection.active = shapes
        shapes.mode = "add_rectangle"
        self.update_status()
        return shapes

    def rectangles(self) -> list[Rectangle]:
        """Annotated rectangles of the selected labels (pixel indices)."""
        labels = self.labels_layer.value
        return [] if labels is None else annotated_rectangles(self._viewer, labels)

    def update_status(self) -> str:
        """Recompute the status line now and return it."""
        self._status_timer.stop()
        labels = self.labels_layer.value
        if labels is None:
            text = "Pick an image, then 'New annotation layer' (or pick a Labels layer)."
        else:
            plane = current_plane(self._viewer, labels)
            data = labels.data if plane is None else labels.data[plane]
            values = np.asarray(data)
            n_cells = int(np.unique(values[values != 0]).size) if values.any() else 0
            planes = sorted(annotation_info(labels)["planes"])
            n_rect = len(self.rectangles())
            if plane is None:
                where = "image fully annotated" if planes else "image not marked annotated"
                text = f"{n_cells} cells · {where} · {n_rect} regions"
            else:
                listed = ", ".join(map(str, planes[:12])) + (" …" if len(planes) > 12 else "")
                text = (
                    f"Plane {plane}: {n_cells} cells · annotated planes: "
                    f"{listed or 'none'} · {n_rect} regions"
                )
            if not planes and not n_rect:
                text += "\n(nothing marked: planes with cells count as fully annotated)"
        self.status.value = text
        return text

    def close(self) -> None:
        """Close the widget; it stops following its layers."""
        self._follower.close()
        super().close()

    # ----------------------------------------------------------------- internals

    def _require_labels(self) -> Any:
        layer = self.labels_layer.value
        if layer is None:
            raise ValueError("create or pick a Labels layer first ('New annotation layer')")
        return layer

    def _max_label(self, layer: Any) -> int:
        data = layer.data
        if math.prod(data.shape) <= _FULL_SCAN_PIXELS:
            scanned = max_label(data)
        else:  # the shown plane, and the ids painted since the layer was picked
            plane = current_plane(self._viewer, layer)
            scanned = max_label(data if plane is None else data[plane])
        return max(scanned, self._painted_max if layer is self._follower.labels else 0)

    def _set_plane_annotated(self, layer: Any, plane: int, annotated: bool) -> None:
        info = annotation_info(layer)
        planes = set(info["planes"])
        (planes.add if annotated else planes.discard)(plane)
        if sorted(planes) != sorted(info["planes"]):
            info["planes"] = sorted(planes)
            layer.events.metadata()  # the metadata dict changed in place
        self._sync_controls()
        self.update_status()

    def _sync_controls(self) -> None:
        layer = self.labels_layer.value
        self._updating_plane_box = True
        try:
            if layer is None:
                self.plane_annotated.value = False
            else:
                plane = current_plane(self._viewer, layer)
                self.plane_annotated.value = (0 if plane is None else plane) in annotation_info(
                    layer
                )["planes"]
                self.brush_size.value = int(min(max(layer.brush_size, 1), self.brush_size.max))
        finally:
            self._updating_plane_box = False
        for widget in (
            self.new_cell_button,
            self.brush_size,
            self.plane_annotated,
            self.add_region_button,
        ):
            widget.enabled = layer is not None

    def _hook_labels(self, layer: Any) -> None:
        if layer is not self._follower.labels:
            self._painted_max = 0
        self._follower.follow(layer)

    def _schedule_status(self, event: Any = None) -> None:
        self._status_timer.start()

    def _on_paint(self, event: Any) -> None:
        self._painted_max = max(self._painted_max, _max_painted(getattr(event, "value", None)))
        self._schedule_status()

    def _on_metadata(self, event: Any = None) -> None:
        self._sync_controls()
        self._schedule_status()

    def _on_layer_brush(self, event: Any = None) -> None:
        layer = self.labels_layer.value
        if layer is not None and int(layer.brush_size) != self.brush_size.value:
            self.brush_size.value = int(min(max(layer.brush_size, 1), self.brush_size.max))

    def _on_brush_size(self, value: int) -> None:
        layer = self.labels_layer.value
        if layer is not None and layer.brush_size != value:
            layer.brush_size = value

    def _on_plane_box(self, value: bool) -> None:
        if self._updating_plane_box or self.labels_layer.value is None:
            return
        self._set_plane_annotated(self.labels_layer.value, self.current_plane(), bool(value))

    def _on_step(self, event: Any = None) -> None:
        if self.labels_layer.value is not None and self.labels_layer.value.ndim >= 3:
            self._sync_controls()
            self._schedule_status()

    def _on_layers_changed(self, event: Any = None) -> None:
        self.reset_choices()
        self._follower.refresh()  # e.g. the labels were renamed: so were their regions
        self._schedule_status()

    def _on_image_changed(self, image: Any) -> None:
        if self.labels_layer.value is not None and not self._syncing_image:
            self._activate_labels(self.labels_layer.value)

    def _on_labels_changed(self, layer: Any) -> None:
        image = annotated_image(self._viewer, layer)
        if image is not None and image in list(self.image_layer.choices):
            self._syncing_image = True
            try:
                self.image_layer.value = image
            finally:
                self._syncing_image = False
        self._activate_labels(layer)

    def _activate_labels(self, layer: Any) -> None:
        if layer is None:
            self._hook_labels(None)
            self._sync_controls()
            self.update_status()
            return
        try:
            self.use_labels_layer(layer)
        except ValueError as err:
            from napari.utils.notifications import show_error

            self._hook_labels(None)
            self._sync_controls()
            self.status.value = f"⚠ {err}"
            show_error(str(err))
