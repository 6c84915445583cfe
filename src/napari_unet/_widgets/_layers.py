"""Layer geometry and layer following, shared by the napari-unet widgets.

Geometry: the pixel grid of an Image layer (:func:`spatial_shape`), the plane
shown in the viewer (:func:`current_plane`, :func:`current_index`), the part of
it on the canvas (:func:`field_of_view`), whether a Labels layer covers an image
(:func:`check_labels_match`), and the annotated rectangles of the Shapes layer
``"<labels> regions"`` in the labels' pixel indices (:func:`rectangles_from_shapes`).
The Labels layer ``"<image> prediction"`` that predictions go to
(:func:`prediction_layer`), and :class:`ViewFollower`, which calls back whenever
the visible part of the data changes (pan, zoom, slider, canvas size).

Following: which image a Labels layer annotates and back
(:func:`annotated_image`, :func:`annotations_of`, from the labels' metadata,
see :func:`napari_unet._widgets._session.annotation_info`), and
:class:`LayerFollower`, which keeps a widget's callbacks connected to the Labels
layer it shows and to that layer's regions Shapes layer, and only to those.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from napari_unet._widgets._session import METADATA_KEY
from napari_unet.core.annotations import Rectangle

#: Suffix of the Shapes layer holding the annotated rectangles of a Labels layer.
REGIONS_SUFFIX = " regions"
#: Suffix of the Labels layer created for an image.
MASKS_SUFFIX = " masks"
#: Suffix of the Labels layer that predictions of an image go to.
PREDICTION_SUFFIX = " prediction"

Callbacks = Mapping[str, Callable[..., Any] | Sequence[Callable[..., Any]]]


# --------------------------------------------------------------------------- geometry


def spatial_shape(image: Any) -> tuple[int, ...]:
    """Shape of the pixel grid of an Image layer (without the RGB(A) axis).

    Parameters
    ----------
    image : napari.layers.Image
        Any image layer (numpy, dask or zarr data; multiscale uses level 0).

    Returns
    -------
    shape : tuple of int
        ``image.ndim`` sizes, e.g. (P, M, N) for a stack or (M, N).
    """
    return tuple(int(s) for s in image.level_shapes[0][: image.ndim])


def check_labels_match(labels: Any, image: Any) -> None:
    """Raise ValueError unless a Labels layer covers an image's pixel grid.

    Parameters
    ----------
    labels : napari.layers.Labels
    image : napari.layers.Image

    Raises
    ------
    ValueError
        If the spatial shapes, scales or translations differ.
    """
    shape = spatial_shape(image)
    if tuple(labels.data.shape) != shape:
        raise ValueError(
            f"Labels layer {labels.name!r} has shape {tuple(labels.data.shape)} but image "
            f"{image.name!r} has pixel shape {shape}: pick matching layers or use "
            f"'New annotation layer'"
        )
    if not (
        np.allclose(labels.scale, image.scale) and np.allclose(labels.translate, image.translate)
    ):
        raise ValueError(
            f"Labels layer {labels.name!r} (scale {tuple(labels.scale)}, translate "
            f"{tuple(labels.translate)}) is not aligned with image {image.name!r} (scale "
            f"{tuple(image.scale)}, translate {tuple(image.translate)})"
        )


def current_plane(viewer: Any, layer: Any) -> int | None:
    """Index of the plane of ``layer`` shown in ``viewer`` (None for a 2D layer).

    Uses the world position of the dims slider mapped into the layer's data
    coordinates, so layers with a scale or translation work.
    """
    if layer.ndim < 3:
        return None
    coords = layer.world_to_data(viewer.dims.point)
    index = int(np.round(coords[-3]))
    return int(np.clip(index, 0, layer.data.shape[-3] - 1))


def current_index(viewer: Any, layer: Any, n_lead: int) -> tuple[int, ...]:
    """Index of the displayed plane in the first ``n_lead`` axes of ``layer``'s data."""
    if n_lead == 0:
        return ()
    position = layer.world_to_data(viewer.dims.point)
    shape = layer.data[0].shape if getattr(layer, "multiscale", False) else layer.data.shape
    return tuple(
        int(np.clip(round(float(p)), 0, n - 1))
        for p, n in zip(position[:n_lead], shape[:n_lead], strict=True)
    )


def field_of_view(viewer: Any, layer: Any) -> tuple[slice, slice]:
    """Rows and columns of ``layer``'s planes visible on ``viewer``'s canvas (clipped).

    Raises
    ------
    ValueError
        If the view is 3D or the layer is not in view.
    """
    if viewer.dims.ndisplay != 2:
        raise ValueError("the visible field of view needs the 2D view")
    camera = viewer.scene.camera
    height, width = viewer.canvas.size
    half = np.array([height, width], float) / (2 * camera.zoom)
    center = np.array(camera.center[-2:], float)
    point = np.array(viewer.dims.point, float)
    displayed = list(viewer.dims.displayed)[-2:]
    corners = []
    for dy in (-1, 1):
        for dx in (-1, 1):
            point[displayed] = center + half * (dy, dx)
            corners.append(np.asarray(layer.world_to_data(point))[-2:])
    corners_array = np.array(corners)
    shape = (layer.data[0] if layer.multiscale else layer.data).shape
    shape = shape[-3:-1] if layer.rgb else shape[-2:]
    window = []
    for axis, n in enumerate(shape):
        lo = int(np.clip(math.floor(corners_array[:, axis].min()), 0, n))
        hi = int(np.clip(math.ceil(corners_array[:, axis].max()) + 1, 0, n))
        if hi <= lo:
            raise ValueError(f"'{layer.name}' is not in view: pan or zoom to it")
        window.append(slice(lo, hi))
    return window[0], window[1]


def prediction_layer_name(image_name: str) -> str:
    """Name of the Labels layer holding the predictions of an image."""
    return f"{image_name}{PREDICTION_SUFFIX}"


def prediction_layer(viewer: Any, image: Any, shape: tuple[int, ...], channels: bool) -> Any:
    """The Labels layer ``"<image> prediction"``: reused (zeroed if resized) or added.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    image : napari.layers.Image
        Its scale and translation place the layer.
    shape : tuple of int
        The labels' shape: the image's planes without the channel axis.
    channels : bool
        Whether ``image`` has a channel axis that is not RGB (at -3: dropped
        from the scale and translation).
    """
    from napari_unet.core.io import allocate_zeros

    name = prediction_layer_name(image.name)
    if name in viewer.layers:
        layer = viewer.layers[name]
        if tuple(layer.data.shape) != tuple(shape):
            layer.data = allocate_zeros(shape, np.uint32, name="prediction")
        return layer
    scale, translate = np.asarray(image.scale), np.asarray(image.translate)
    if channels and not image.rgb:
        scale, translate = np.delete(scale, -3), np.delete(translate, -3)
    return viewer.add_labels(
        allocate_zeros(shape, np.uint32, name="prediction"),
        name=name,
        opacity=0.6,
        scale=scale,
        translate=translate,
    )


class ViewFollower:
    """Call ``callback()`` whenever the visible part of the data may have changed.

    It follows the camera (pan, zoom), the dims (slider, 2D/3D) and the canvas
    size of ``viewer`` from :meth:`start` until :meth:`stop`.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    callback : callable
        Called without arguments.
    """

    def __init__(self, viewer: Any, callback: Callable[[], Any]) -> None:
        self._viewer = viewer
        self._callback = callback
        self.active = False

    def _emitters(self) -> list[Any]:
        viewer = self._viewer
        camera, dims = viewer.scene.camera.events, viewer.dims.events
        return [camera.center, camera.zoom, dims.point, dims.ndisplay, viewer.canvas.events.size]

    def _changed(self, event: Any = None) -> None:
        self._callback()

    def start(self) -> None:
        """Follow the view (and call back once now)."""
        if not self.active:
            for emitter in self._emitters():
                emitter.connect(self._changed)
            self.active = True
        self._callback()

    def stop(self) -> None:
        """Stop following the view."""
        if self.active:
            for emitter in self._emitters():
                emitter.disconnect(self._changed)
            self.active = False


# --------------------------------------------------------------------------- regions


def regions_layer_name(labels_name: str) -> str:
    """Name of the Shapes layer holding the annotated rectangles of a Labels layer."""
    return f"{labels_name}{REGIONS_SUFFIX}"


def regions_layer_for(viewer: Any, labels: Any) -> Any:
    """The Shapes layer ``"<labels name> regions"`` in ``viewer``, or None."""
    from napari.layers import Shapes

    name = regions_layer_name(labels.name)
    for layer in viewer.layers:
        if isinstance(layer, Shapes) and layer.name == name:
            return layer
    return None


def rectangles_from_shapes(shapes_layer: Any, labels_layer: Any = None) -> list[Rectangle]:
    """Annotated rectangles of a Shapes layer, in pixel indices of the labels.

    A pixel belongs to a rectangle when its centre lies inside it (upper edges
    excluded): a rectangle from 10 to 20 (or from 9.5 to 19.5, pixel edges)
    covers rows ``10:20``. Only shapes of type ``"rectangle"`` count (a rotated
    one by its bounding box); other shapes are ignored.

    Parameters
    ----------
    shapes_layer : napari.layers.Shapes
        2D, or 3D with the plane coordinate first (one plane per rectangle).
    labels_layer : napari.layers.Labels, optional
        The annotated labels. If given, vertices are mapped through world
        coordinates into its pixel grid (so the two layers may have different
        scales or translations) and rectangles are clipped to it; rectangles
        off the labels are dropped. If not, the Shapes layer's data coordinates
        are taken as pixel indices (true for the layer made by the Annotate
        widget's "Add region", which copies the labels' scale and translation).

    Returns
    -------
    rectangles : list of Rectangle
        ``plane`` is None for 2D data (or for 2D shapes over a stack).
    """
    rectangles = []
    shape = tuple(labels_layer.data.shape) if labels_layer is not None else None
    for vertices, kind in zip(shapes_layer.data, shapes_layer.shape_type, strict=True):
        if kind != "rectangle":
            continue
        vertices = np.asarray(vertices, dtype=float)
        if labels_layer is not None:
            world = [shapes_layer.data_to_world(v) for v in vertices]
            if labels_layer.ndim > len(world[0]):
                continue  # cannot tell which plane a 2D rectangle is on
            vertices = np.array([labels_layer.world_to_data(w) for w in world], dtype=float)
        if vertices.shape[1] < 2:
            continue
        plane = None
        if vertices.shape[1] >= 3:
            plane = int(np.round(vertices[:, -3].mean()))
        low = np.round(vertices[:, -2:].min(axis=0), 6)
        high = np.round(vertices[:, -2:].max(axis=0), 6)
        (y0, x0), (y1, x1) = np.ceil(low).astype(int), np.ceil(high).astype(int)
        if shape is not None:
            (rows, cols) = shape[-2:]
            y0, y1 = max(y0, 0), min(y1, rows)
            x0, x1 = max(x0, 0), min(x1, cols)
            if len(shape) >= 3:
                if plane is None or not 0 <= plane < shape[-3]:
                    continue
            else:
                plane = None
        if y1 <= y0 or x1 <= x0:
            continue
        rectangles.append(Rectangle(plane, int(y0), int(y1), int(x0), int(x1)))
    return rectangles


def annotated_rectangles(viewer: Any, labels: Any) -> list[Rectangle]:
    """Rectangles of ``labels``'s regions layer in its pixel indices ([] without one)."""
    shapes = regions_layer_for(viewer, labels)
    return [] if shapes is None else rectangles_from_shapes(shapes, labels)


# --------------------------------------------------------------------------- which layers


def layer_choices(viewer: Any, kind: str) -> Callable[..., list[tuple[str, Any]]]:
    """A magicgui ``choices`` callable listing ``viewer``'s layers of one type.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Held by a weak reference (a widget does not keep its viewer alive).
    kind : str
        Name of a class in :mod:`napari.layers`, e.g. ``"Labels"``.
    """
    viewer_ref = weakref.ref(viewer)

    def choices(widget: Any = None) -> list[tuple[str, Any]]:
        import napari.layers

        viewer = viewer_ref()
        if viewer is None:
            return []
        layer_type = getattr(napari.layers, kind)
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, layer_type)]

    return choices


def annotated_image(viewer: Any, labels: Any) -> Any:
    """The Image layer that a Labels layer annotates (its metadata says which), or None."""
    from napari.layers import Image

    info = labels.metadata.get(METADATA_KEY) if labels is not None else None
    name = info.get("image") if isinstance(info, dict) else None
    if name is None or name not in viewer.layers:
        return None
    layer = viewer.layers[name]
    return layer if isinstance(layer, Image) else None


def annotations_of(viewer: Any, image: Any) -> Any:
    """The first Labels layer whose metadata says it annotates ``image``, or None."""
    from napari.layers import Labels

    for layer in viewer.layers:
        info = layer.metadata.get(METADATA_KEY) if isinstance(layer, Labels) else None
        if isinstance(info, dict) and info.get("image") == image.name:
            return layer
    return None


def _pairs(callbacks: Callbacks) -> list[tuple[str, Callable[..., Any]]]:
    pairs = []
    for name, slots in callbacks.items():
        for slot in [slots] if callable(slots) else slots:
            pairs.append((name, slot))
    return pairs


class LayerFollower:
    """Keep callbacks connected to one Labels layer and its regions Shapes layer.

    :meth:`follow` connects ``labels_events`` to the chosen Labels layer's
    events and ``regions_events`` to its ``"<labels> regions"`` Shapes layer,
    after disconnecting both from the layers followed before. The regions
    layer is looked up again whenever layers are added or removed, or the
    labels are renamed, so one drawn later is followed too. :meth:`close`
    disconnects everything (call it when the widget closes).

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    labels_events, regions_events : mapping
        Event name (e.g. ``"metadata"``, ``"paint"``, ``"data"``) to one
        callback or a list of callbacks.

    Attributes
    ----------
    labels, regions : napari layers or None
        The layers followed now.

    Examples
    --------
    A widget follows what its Labels combo box shows::

        self._follower = LayerFollower(
            viewer, {"metadata": self.update_summary}, {"data": self.update_summary}
        )
        self.labels_layer.changed.connect(self._follower.follow)
    """

    def __init__(
        self,
        viewer: Any,
        labels_events: Callbacks | None = None,
        regions_events: Callbacks | None = None,
    ) -> None:
        self._viewer = viewer
        self._labels_slots = _pairs(labels_events or {})
        self._regions_slots = _pairs(regions_events or {})
        self.labels: Any = None
        self.regions: Any = None
        self._closed = False
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)

    def follow(self, labels: Any) -> None:
        """Follow ``labels`` (None: nothing) and its regions layer, and stop following the old."""
        if labels is not self.labels:
            if self.labels is not None:
                _disconnect(self.labels, [*self._labels_slots, ("name", self.refresh)])
            self.labels = labels
            if labels is not None and not self._closed:
                _connect(labels, [*self._labels_slots, ("name", self.refresh)])
        self.refresh()

    def refresh(self, event: Any = None) -> None:
        """Look the regions layer of the followed labels up again (e.g. one was added)."""
        regions = None
        if self.labels is not None and not self._closed:
            regions = regions_layer_for(self._viewer, self.labels)
        if regions is self.regions:
            return
        if self.regions is not None:
            _disconnect(self.regions, self._regions_slots)
        self.regions = regions
        if regions is not None:
            _connect(regions, self._regions_slots)

    def close(self) -> None:
        """Disconnect from the followed layers and the viewer; follow nothing more."""
        self.follow(None)
        self._closed = True
        for emitter in (self._viewer.layers.events.inserted, self._viewer.layers.events.removed):
            emitter.disconnect(self.refresh)


def _connect(layer: Any, slots: list[tuple[str, Callable[..., Any]]]) -> None:
    for name, slot in slots:
        getattr(layer.events, name).connect(slot)


def _disconnect(layer: Any, slots: list[tuple[str, Callable[..., Any]]]) -> None:
    for name, slot in slots:
        getattr(layer.events, name).disconnect(slot)


# --------------------------------------------------------------------------- uncertainty

#: Suffix of the Image layer holding the uncertainty of an image's prediction.
UNCERTAINTY_SUFFIX = " uncertainty"


def uncertainty_layer_name(image_name: str) -> str:
    """Name of the Image layer the Predict widget writes an image's uncertainty to."""
    return f"{image_name}{UNCERTAINTY_SUFFIX}"


def uncertainty_layer_for(viewer: Any, image: Any) -> Any:
    """The Image layer ``"<image name> uncertainty"`` in ``viewer``, or None."""
    from napari.layers import Image

    name = uncertainty_layer_name(image.name)
    for layer in viewer.layers:
        if isinstance(layer, Image) and layer.name == name:
            return layer
    return None
