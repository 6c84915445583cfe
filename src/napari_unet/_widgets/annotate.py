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

"Next region to annotate" reads the ``"<image> uncertainty"`` layer that the
Predict widget writes, leaves out what is annotated already (painted pixels,
marked planes, region rectangles: :func:`annotated_mask`), finds the most
uncertain window with :func:`napari_unet.core.uncertainty.next_region` (in a
worker), moves the camera there and, if asked, adds the window as a region
rectangle and selects the labels in paint mode.

Memory for new Labels layers: :func:`napari_unet.core.io.allocate_zeros` (a
numpy array up to :data:`~napari_unet.core.io.NUMPY_LIMIT_BYTES`, whose
untouched pages the OS does not even commit; bigger stacks get a zarr array in a
temporary folder, chunked one plane tile at a time, so only painted chunks use
memory or disk). The folder is removed when the array is garbage-collected or
Python exits: save the layer (File > Save Selected Layers) to keep the masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, Container, Label, PushButton, SpinBox, create_widget
from napari.utils.notifications import show_info, show_warning
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
    uncertainty_layer_for,
    uncertainty_layer_name,
)
from napari_unet._widgets._session import annotation_info
from napari_unet.core.io import allocate_zeros, max_label

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import FunctionWorker

    from napari_unet.core.annotations import Rectangle
    from napari_unet.core.uncertainty import SuggestedRegion

__all__ = ["AnnotateWidget"]

#: Labels arrays up to this many pixels are scanned whole for their largest id.
_FULL_SCAN_PIXELS = 1 << 27
#: Delay (ms) before the status line is recomputed after a change.
_STATUS_DELAY_MS = 150
_LABELS_DTYPE = np.uint32
#: Default edge (px) of the window that "Next region to annotate" suggests.
NEXT_REGION_SIZE = 256
#: Part of the canvas that the suggested window fills when the camera moves to it.
_FIT_MARGIN = 0.9


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


def annotated_mask(
    labels: Any, planes: Sequence[int] = (), rectangles: Sequence[Rectangle] = ()
) -> np.ndarray:
    """Pixels already annotated: painted, in a marked plane, or inside a region rectangle.

    Unlike training's fallback (nothing marked: every plane with cells counts as
    fully annotated), only the painted pixels count when nothing is marked: a
    few painted cells do not make their plane "done" for the next suggestion.

    Parameters
    ----------
    labels : array of shape (M, N) or (P, M, N)
        The painted labels (0 = unpainted).
    planes, rectangles
        The fully annotated planes and the region rectangles, as
        :class:`napari_unet.core.annotations.Annotation` takes them.

    Returns
    -------
    ndarray of bool, the shape of ``labels``

    Raises
    ------
    ValueError
        If ``Annotation`` refuses the labels, planes or rectangles.
    """
    from napari_unet.core.annotations import Annotation

    annotation = Annotation(labels, planes=tuple(planes), rectangles=tuple(rectangles))
    mask = np.asarray(annotation.labels) != 0
    if annotation.marked:
        for plane in range(annotation.n_planes) if annotation.is_stack else [None]:
            region = annotation.region(plane)
            where = mask if plane is None else mask[plane]  # a view: written in place
            if region is None:  # the plane is marked fully annotated
                where[...] = True
            else:
                where |= region
    return mask


def suggest_region(
    uncertainty: Any,
    labels: Any,
    size: int,
    planes: Sequence[int] = (),
    rectangles: Sequence[Rectangle] = (),
) -> SuggestedRegion:
    """The most uncertain ``size`` x ``size`` window (clipped to the plane) not annotated yet.

    Parameters
    ----------
    uncertainty : array of the shape of ``labels``
        Per-pixel uncertainty, e.g. the Predict widget's ``"<image> uncertainty"``.
    labels, planes, rectangles
        What is annotated (see :func:`annotated_mask`).
    size : int
        Window edge in pixels.

    Raises
    ------
    ValueError
        If the shapes differ, every window overlaps the annotation, or the
        uncertainty is 0 in every window left (nothing predicted there).
    """
    from napari_unet.core.uncertainty import next_region

    values = np.asarray(uncertainty)
    if values.shape != tuple(labels.shape):
        raise ValueError(
            f"the uncertainty has shape {values.shape} but the masks have "
            f"{tuple(labels.shape)}: predict this image again with 'Show uncertainty'"
        )
    mask = annotated_mask(labels, planes, rectangles)
    h, w = min(size, values.shape[-2]), min(size, values.shape[-1])
    try:
        region = next_region(values, (h, w), annotated=mask)
    except ValueError as err:
        if "nothing left" not in str(err):
            raise
        raise ValueError(
            f"every {h} x {w} px window overlaps what is annotated already: lower the region size"
        ) from None
    if region.score <= 0:
        raise ValueError(
            "the uncertainty is 0 wherever nothing is annotated yet: predict the planes "
            "you want to annotate with 'Show uncertainty' ticked in '4. Predict'"
        )
    return region


def _find_region(
    uncertainty: Any,
    labels: Any,
    size: int,
    planes: Sequence[int],
    rectangles: Sequence[Rectangle],
) -> tuple[SuggestedRegion | None, str, bool]:
    """Worker job: ``(region, "", painted_elsewhere)`` or ``(None, why, False)``.

    ``painted_elsewhere``: nothing is marked yet and cells are painted outside
    the window (adding the window as a region makes those cells unknown).
    """
    try:
        region = suggest_region(uncertainty, labels, size, planes, rectangles)
    except ValueError as err:  # told to the user as a warning, not as a crash
        return None, str(err), False
    painted_elsewhere = False
    if not planes and not rectangles:
        painted = np.asarray(labels) != 0
        painted[(*region.plane, *region.window)] = False
        painted_elsewhere = bool(painted.any())
    return region, "", painted_elsewhere


def window_corners(region: SuggestedRegion) -> np.ndarray:
    """The four corners of a suggested window in data coordinates (pixel edges).

    Pixel ``i`` spans ``i - 0.5 .. i + 0.5``, so the rectangle covers exactly
    rows ``y0:y1`` and columns ``x0:x1`` (as
    :func:`~napari_unet._widgets._layers.rectangles_from_shapes` reads it back);
    the plane index comes first for a stack.
    """
    y0, y1, x0, x1 = (v - 0.5 for v in (region.y0, region.y1, region.x0, region.x1))
    corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float)
    lead = np.tile(np.asarray(region.plane, float), (4, 1))
    return np.hstack([lead, corners])


def window_center(region: SuggestedRegion) -> np.ndarray:
    """Centre of a suggested window in data coordinates (the plane index first for a stack)."""
    return np.array([*region.plane, *np.subtract(region.center, 0.5)], float)


def zoom_to_fit(
    extent: Sequence[float], canvas_size: Sequence[int], margin: float = _FIT_MARGIN
) -> float:
    """Camera zoom (screen pixels per world unit) that shows ``extent`` on the canvas.

    Parameters
    ----------
    extent : (float, float)
        Height and width of the window in world units.
    canvas_size : (int, int)
        Height and width of the canvas in screen pixels.
    margin : float
        Fraction of the canvas the window fills along its tighter axis.
    """
    return margin * min(canvas_size[0] / extent[0], canvas_size[1] / extent[1])


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
    region_size : SpinBox
        Edge (px) of the window "Next region to annotate" looks for
        (:data:`NEXT_REGION_SIZE` by default; clipped to the plane).
    add_next_region : CheckBox
        "Add it as a region" (on by default): the suggested window becomes an
        annotated rectangle and the labels are selected in paint mode.
    next_region_button : PushButton
        "Next region to annotate" (:meth:`next_region`).
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
        self._next_worker: FunctionWorker | None = None
        #: windows shown without adding them: skipped by the next suggestions
        self._skipped: list[Rectangle] = []
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
        self.region_size = SpinBox(
            value=NEXT_REGION_SIZE,
            min=8,
            max=8192,
            step=32,
            label="Region size (px)",
            tooltip="Edge of the window 'Next region to annotate' suggests (clipped to the plane)",
        )
        self.add_next_region = CheckBox(
            text="Add it as a region",
            value=True,
            tooltip="Add the suggested window to the regions (rectangles) and select the "
            "masks in paint mode; unpainted pixels inside it count as background",
        )
        self.next_region_button = PushButton(
            text="Next region to annotate",
            tooltip="Go to the most uncertain window that is not annotated yet (needs "
            "'Show uncertainty' in '4. Predict'); each click moves on to the next",
        )
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
                Label(value="<b>Where to annotate next</b>"),
                self.region_size,
                self.add_next_region,
                self.next_region_button,
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
        self.next_region_button.changed.connect(self._on_next_clicked)
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
        shapes = self._regions_layer(self._require_labels())
        self._viewer.layers.selection.active = shapes
        shapes.mode = "add_rectangle"
        self.update_status()
        return shapes

    @property
    def is_busy(self) -> bool:
        """True while "Next region to annotate" searches (in a worker)."""
        return self._next_worker is not None

    def next_region(self) -> FunctionWorker:
        """Look for the most uncertain window not annotated yet, then go there.

        The labels' data, marked planes and rectangles (plus the windows shown
        before without adding them) and the image's ``"<image> uncertainty"``
        layer are read here; :func:`suggest_region` runs in a worker; when it
        returns, :meth:`go_to_region` moves the camera (and adds the region if
        :attr:`add_next_region` is ticked). A search that finds nothing is
        reported as a warning.

        Returns
        -------
        worker : FunctionWorker
            Started.

        Raises
        ------
        ValueError
            If there are no masks, no image, no uncertainty layer, or a search
            is running.
        """
        from napari.qt.threading import create_worker

        labels = self._require_labels()
        if self.is_busy:
            raise ValueError("already looking for the next region")
        image = self.image_layer.value
        if image is None:
            image = annotated_image(self._viewer, labels)
        if image is None:
            raise ValueError("pick the annotated Image layer first")
        uncertainty = uncertainty_layer_for(self._viewer, image)
        if uncertainty is None:
            raise ValueError(
                f"there is no '{uncertainty_layer_name(image.name)}' layer: predict "
                f"'{image.name}' in '4. Predict' with 'Show uncertainty' ticked first"
            )
        data = uncertainty.data[0] if uncertainty.multiscale else uncertainty.data
        worker = create_worker(
            _find_region,
            data,
            labels.data,
            int(self.region_size.value),
            list(annotation_info(labels)["planes"]),
            [*self.rectangles(), *self._skipped],
        )
        worker.returned.connect(lambda result: self._on_found(labels, *result))
        worker.finished.connect(self._on_search_finished)
        self._next_worker = worker
        self.next_region_button.enabled = False
        worker.start()
        return worker

    def go_to_region(self, region: SuggestedRegion, add: bool | None = None) -> None:
        """Show a suggested window: its plane, centred and zoomed to fit the canvas.

        Parameters
        ----------
        region : SuggestedRegion
            In the pixel indices of the selected labels.
        add : bool, optional
            Add the window as a rectangle to ``"<labels> regions"`` and select
            the labels in paint mode with a new cell id; default: the
            :attr:`add_next_region` box. Without it, the window is skipped by
            the next suggestions.
        """
        labels = self._require_labels()
        viewer = self._viewer
        if viewer.dims.ndisplay != 2:
            viewer.dims.ndisplay = 2  # a window of one plane
        world = np.asarray(labels.data_to_world(window_center(region)), float)
        offset = viewer.dims.ndim - labels.ndim  # the labels' axes are the last ones
        for axis, value in enumerate(world[: len(region.plane)]):
            viewer.dims.set_point(offset + axis, value)
        camera = viewer.scene.camera
        camera.center = tuple(world[-2:])
        size = np.abs(np.asarray(labels.scale[-2:], float)) * (
            region.y1 - region.y0,
            region.x1 - region.x0,
        )
        camera.zoom = zoom_to_fit(size, viewer.canvas.size)
        if self.add_next_region.value if add is None else add:
            self._add_window(labels, region)
            self.new_cell()  # selects the labels, paint mode, a fresh id
        else:
            self._skipped.append(region.as_rectangle())
        self.update_status()

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

    def _regions_layer(self, labels: Any) -> Any:
        """The ``"<labels> regions"`` Shapes layer, added (matched to the labels) if missing."""
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
        return shapes

    def _add_window(self, labels: Any, region: SuggestedRegion) -> None:
        shapes = self._regions_layer(labels)
        if shapes.ndim != labels.ndim:
            raise ValueError(
                f"'{shapes.name}' is {shapes.ndim}D and the masks {labels.ndim}D: "
                "rename or remove it, a matching one is made"
            )
        corners = [shapes.world_to_data(labels.data_to_world(c)) for c in window_corners(region)]
        shapes.add_rectangles(
            np.array(corners, float), edge_color="yellow", face_color="transparent"
        )

    def _on_next_clicked(self, *_: Any) -> None:
        try:
            self.next_region()
        except ValueError as err:
            self._tell(f"Cannot suggest a region: {err}")

    def _tell(self, message: str) -> None:
        self.status.value = f"⚠ {message}"
        show_warning(message)

    def _on_found(
        self, labels: Any, region: SuggestedRegion | None, why: str, painted_elsewhere: bool
    ) -> None:
        if labels is not self.labels_layer.value:
            return  # the user picked other masks meanwhile
        if region is None:
            self._tell(f"No region to suggest: {why}")
            return
        add = bool(self.add_next_region.value)
        try:
            self.go_to_region(region, add)
        except ValueError as err:
            self._tell(f"Cannot add the region: {err}")
            return
        where = f"plane {region.plane[0]}, " if region.plane else ""
        text = (
            f"Next region: {where}rows {region.y0}-{region.y1}, columns {region.x0}-"
            f"{region.x1} (mean uncertainty {region.score:.2f})."
        )
        if add:
            text += (
                " Paint its cells ('New cell' for each): unpainted pixels in it are background."
            )
            if painted_elsewhere:
                text += (
                    " Cells painted outside the regions and marked planes no longer count "
                    "for training: mark their plane annotated or draw a region around them."
                )
        show_info(text)

    def _on_search_finished(self) -> None:
        self._next_worker = None
        self.next_region_button.enabled = self.labels_layer.value is not None

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
            self.region_size,
            self.add_next_region,
        ):
            widget.enabled = layer is not None
        self.next_region_button.enabled = layer is not None and not self.is_busy

    def _hook_labels(self, layer: Any) -> None:
        if layer is not self._follower.labels:
            self._painted_max = 0
            self._skipped = []
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
