"""Weight-map widget: see where the U-Net loss will focus.

Shows the loss weights training uses (paper eq. 2, from
:meth:`napari_unet.core.annotations.Annotation.targets`) of the painted masks
as an Image layer ``"<labels> weights"`` over the labels: bright ridges in the
gaps between touching cells, 0 outside the annotated region (marked planes
and rectangles, see :mod:`napari_unet._widgets.annotate`).

With "live update" on, the map is recomputed after each paint stroke, plane
change, annotation change or parameter change, debounced by
:data:`LIVE_DELAY_MS`. Work runs in a napari thread worker; a newer request
aborts the running worker and its results are ignored (napari's
``QtHistogramWidget`` pattern), so the GUI thread only copies results into the
layer.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    create_widget,
)
from psygnal import Signal
from qtpy.QtCore import QTimer

from napari_unet._widgets._layers import (
    current_plane,
    layer_choices,
    rectangles_from_shapes,
    regions_layer_for,
)
from napari_unet._widgets._session import annotation_info
from napari_unet._widgets._settings import load_settings, save_settings
from napari_unet.core.annotations import Annotation, PlaneTargets
from napari_unet.core.io import allocate_zeros

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

logger = logging.getLogger(__name__)

#: Debounce delay (ms) of live updates.
LIVE_DELAY_MS = 300
#: Suffix of the weights Image layer.
WEIGHTS_SUFFIX = " weights"
SCOPE_PLANE = "current plane"
SCOPE_ANNOTATED = "all annotated planes"


class WeightMapWidget(Container):
    """Preview the U-Net weight map of the painted masks.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer holding the masks.

    Attributes
    ----------
    labels_layer : magicgui ComboBox
        The Labels layer (instance masks).
    w0, sigma : FloatSpinBox
        Border-term height and width (pixels); saved in the plugin settings.
    class_balance : CheckBox
        Balanced class weights (``N / (K N_c)``) instead of 1.
    scope : ComboBox
        ``"current plane"`` or ``"all annotated planes"``.
    live : CheckBox
        Recompute automatically (debounced) when masks, plane or parameters change.
    compute_button : PushButton
        Compute now (:meth:`compute`).
    status : Label
        What was computed, or why the map is 0.
    weights_layer : napari.layers.Image or None
        The output layer (created once, updated in place).
    weights_updated : psygnal.Signal
        Emitted with the weights layer after each completed computation.
    """

    weights_updated = Signal(object)

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._worker: GeneratorWorker | None = None
        self._token = 0
        self._written: set[Any] = set()
        self._shown: set[Any] = set()
        self._outside: set[Any] = set()
        self._hooked_labels: Any = None
        self._hooked_regions: Any = None
        self._last_plane: int | None = None
        self.weights_layer: Any = None
        self._weights_for: Any = None

        settings = load_settings()
        self.labels_layer = create_widget(
            annotation="napari.layers.Labels",
            label="Masks",
            options={"choices": layer_choices(viewer, "Labels")},
        )
        self.w0 = FloatSpinBox(
            value=float(settings["w0"]), min=0.0, max=1000.0, step=1.0, label="w0"
        )
        self.sigma = FloatSpinBox(
            value=float(settings["sigma"]), min=0.1, max=500.0, step=0.5, label="sigma (px)"
        )
        # off by default, like training's default ("border" weighting)
        self.class_balance = CheckBox(text="class balance", value=False)
        self.scope = ComboBox(
            choices=[SCOPE_PLANE, SCOPE_ANNOTATED], value=SCOPE_PLANE, label="Scope"
        )
        self.live = CheckBox(text="live update", value=True)
        self.compute_button = PushButton(text="Compute weight map")
        self.status = Label(value="", label="Status")
        self.status.native.setWordWrap(True)
        self.extend(
            [
                self.labels_layer,
                self.w0,
                self.sigma,
                self.class_balance,
                self.scope,
                self.live,
                self.compute_button,
                self.status,
            ]
        )

        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.setInterval(LIVE_DELAY_MS)
        self._timer.timeout.connect(self._on_timer)

        self.compute_button.changed.connect(self._on_compute_clicked)
        self.labels_layer.changed.connect(self._on_labels_changed)
        self.w0.changed.connect(self._on_params_changed)
        self.sigma.changed.connect(self._on_params_changed)
        self.class_balance.changed.connect(self._on_params_changed)
        self.scope.changed.connect(self._on_params_changed)
        self.live.changed.connect(self._on_params_changed)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        viewer.dims.events.current_step.connect(self._on_step)
        self.reset_choices()
        self._on_labels_changed(self.labels_layer.value)

    # ----------------------------------------------------------------- public API

    @property
    def is_running(self) -> bool:
        """Whether a computation is in progress."""
        return self._worker is not None

    def compute(self) -> GeneratorWorker:
        """Start computing the weight map with the current settings.

        A computation still running is aborted and its results are ignored.

        Returns
        -------
        GeneratorWorker
            The started worker (it yields one plane at a time).
        """
        from napari.qt.threading import create_worker

        labels = self.labels_layer.value
        if labels is None:
            raise ValueError("pick a Labels layer (the painted masks) first")
        if labels.ndim not in (2, 3):
            raise ValueError(
                f"weight maps need 2D or 3D (planes, Y, X) labels, got "
                f"{labels.ndim}D layer {labels.name!r}"
            )
        annotation = self.read_annotation(labels)
        self._abort_worker()
        self._timer.stop()
        self._token += 1
        token = self._token
        plane = current_plane(self._viewer, labels)
        if labels.ndim == 2:
            planes: list[int | None] | None = [None]
        elif self.scope.value == SCOPE_PLANE:
            planes = [plane]
        else:
            planes = None  # the annotated planes, found in the worker
        self._last_plane = plane
        self._ensure_layer(labels)
        self._written = set()
        self._outside = set()
        # the core's training targets: the map shown is the map training uses
        worker = create_worker(
            annotation.iter_targets,
            planes,
            weighting="unet" if self.class_balance.value else "border",
            w0=float(self.w0.value),
            sigma=float(self.sigma.value),
        )
        worker.yielded.connect(functools.partial(self._on_yielded, token))
        worker.returned.connect(functools.partial(self._on_returned, token))
        worker.finished.connect(functools.partial(self._on_finished, worker))
        self._worker = worker
        where = (
            "image"
            if planes == [None]
            else (f"plane {plane}" if self.scope.value == SCOPE_PLANE else "annotated planes")
        )
        self.status.value = f"Computing weights ({where})…"
        worker.start()
        return worker

    def read_annotation(self, labels: Any = None) -> Annotation:
        """The annotation of a Labels layer, as training reads it.

        Parameters
        ----------
        labels : napari.layers.Labels, optional
            Default: the chosen layer.

        Returns
        -------
        Annotation
            The layer's data, its marked planes (metadata, see
            :func:`~napari_unet._widgets._session.annotation_info`) and the
            rectangles of its ``"<labels> regions"`` Shapes layer.
        """
        labels = self.labels_layer.value if labels is None else labels
        if labels is None:
            raise ValueError("pick a Labels layer (the painted masks) first")
        regions = regions_layer_for(self._viewer, labels)
        rects = rectangles_from_shapes(regions, labels) if regions is not None else []
        planes = annotation_info(labels)["planes"]
        return Annotation(labels.data, tuple(planes), tuple(rects))

    def schedule(self) -> None:
        """Recompute after :data:`LIVE_DELAY_MS` (restarted by each call)."""
        self._timer.start()

    # ----------------------------------------------------------------- layer

    def _ensure_layer(self, labels: Any) -> Any:
        from napari.layers import Image

        name = f"{labels.name}{WEIGHTS_SUFFIX}"
        layer = self.weights_layer
        if layer is not None and layer in self._viewer.layers and self._weights_for is labels:
            layer.name = name  # follow a renamed labels layer
        elif name in self._viewer.layers and isinstance(self._viewer.layers[name], Image):
            layer = self._viewer.layers[name]  # e.g. made by an earlier widget: start clean
            layer.data = allocate_zeros(tuple(labels.data.shape), np.float32, name="weights")
            self._shown = set()
        else:
            layer = None
        shape = tuple(labels.data.shape)
        if layer is not None and tuple(layer.data.shape) != shape:
            layer.data = allocate_zeros(shape, np.float32, name="weights")
            self._shown = set()
        if layer is None:
            layer = Image(
                allocate_zeros(shape, np.float32, name="weights"),
                name=name,
                scale=labels.scale,
                translate=labels.translate,
                colormap="magma",
                contrast_limits=(0.0, float(self.w0.value) + 1.0),
                blending="additive",
                opacity=0.8,
                multiscale=False,
            )
            selection = set(self._viewer.layers.selection)
            active = self._viewer.layers.selection.active
            index = self._viewer.layers.index(labels) + 1
            self._viewer.layers.insert(index, layer)
            # keep the user's selection (e.g. the labels being painted)
            self._viewer.layers.selection.update(selection)
            self._viewer.layers.selection.discard(layer)
            self._viewer.layers.selection.active = active
            self._shown = set()
        self.weights_layer = layer
        self._weights_for = labels
        return layer

    def _write(self, plane: int | None, weights: np.ndarray | int) -> None:
        data = self.weights_layer.data
        if plane is None:
            data[...] = weights
        else:
            data[plane] = weights

    # ----------------------------------------------------------------- worker slots

    def _abort_worker(self) -> None:
        if self._worker is not None:
            self._worker.quit()
            self._worker = None

    def _on_yielded(self, token: int, item: PlaneTargets) -> None:
        if token != self._token or self.weights_layer is None:
            return  # stale result
        plane, weights, top = item.plane, item.weights, item.top
        if item.outside:
            self._outside.add(plane)
        if tuple(self.weights_layer.data.shape[-2:]) != weights.shape:
            return
        self._write(plane, weights)
        self._written.add(plane)
        self.weights_layer.contrast_limits = (0.0, max(top, 1e-6))
        self.weights_layer.refresh()

    def _on_returned(self, token: int, result: Any = None) -> None:
        if token != self._token or self.weights_layer is None:
            return
        for plane in self._shown - self._written:  # stale planes of earlier runs
            self._write(plane, 0)
        self._shown = set(self._written)
        self.weights_layer.refresh()
        labels = self.labels_layer.value
        if labels is not None:
            self.status.value = self._describe(labels)
        self.weights_updated.emit(self.weights_layer)

    def _on_finished(self, worker: Any) -> None:
        if self._worker is worker:
            self._worker = None

    def _describe(self, labels: Any) -> str:
        written = sorted(p for p in self._written if p is not None)
        params = f"w0 {self.w0.value:g}, sigma {self.sigma.value:g} px"
        if labels.ndim == 2:
            where = "the image"
        elif not written:
            return "No painted planes: nothing to show (paint cells first)."
        elif len(written) == 1:
            where = f"plane {written[0]}"
        else:
            where = f"{len(written)} planes"
        text = f"Weights of {where} ({params})."
        if self._outside and self._outside >= self._written:
            text += (
                "\nOutside the annotated region (marked planes, rectangles): all weights are 0."
            )
        elif self._outside:
            text += f"\n{len(self._outside)} planes are outside the annotated region."
        return text

    # ----------------------------------------------------------------- live updates

    def _hook(self, labels: Any) -> None:
        if labels is not self._hooked_labels:
            if self._hooked_labels is not None:
                for name in ("paint", "data", "metadata", "name"):
                    getattr(self._hooked_labels.events, name).disconnect(self._on_masks_changed)
            self._hooked_labels = labels
            if labels is not None:
                for name in ("paint", "data", "metadata", "name"):
                    getattr(labels.events, name).connect(self._on_masks_changed)
        regions = regions_layer_for(self._viewer, labels) if labels is not None else None
        if regions is not self._hooked_regions:
            if self._hooked_regions is not None:
                self._hooked_regions.events.data.disconnect(self._on_masks_changed)
            self._hooked_regions = regions
            if regions is not None:
                regions.events.data.connect(self._on_masks_changed)

    def _live(self) -> None:
        if self.live.value and self.labels_layer.value is not None:
            self.schedule()

    def _on_masks_changed(self, event: Any = None) -> None:
        self._live()

    def _on_params_changed(self, value: Any = None) -> None:
        save_settings(w0=float(self.w0.value), sigma=float(self.sigma.value))
        self._live()

    def _on_step(self, event: Any = None) -> None:
        labels = self.labels_layer.value
        if labels is None or labels.ndim < 3 or self.scope.value != SCOPE_PLANE:
            return
        if current_plane(self._viewer, labels) != self._last_plane:
            self._live()

    def _on_layers_changed(self, event: Any = None) -> None:
        self.reset_choices()
        before = self._hooked_regions
        self._hook(self.labels_layer.value)
        if self._hooked_regions is not before:
            self._live()

    def _on_labels_changed(self, labels: Any) -> None:
        self._hook(labels)
        self._live()

    def _on_compute_clicked(self) -> None:
        self.compute()

    def _on_timer(self) -> None:
        if self.labels_layer.value is None:
            return
        try:
            self.compute()
        except ValueError as err:
            from napari.utils.notifications import show_warning

            show_warning(str(err))
