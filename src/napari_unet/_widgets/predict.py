"""The "4. Predict" dock widget: tiled U-Net segmentation streamed into napari layers.

The widget plans a job (which planes, which region of them), runs
:func:`napari_unet.core.segment.iter_segment` in a napari worker and writes what it
yields into an instance Labels layer ``"<image> prediction"`` (whole planes
as they finish) and, optionally, a probability layer ``"<image> probability"``
(tile by tile) and an uncertainty layer ``"<image> uncertainty"`` (plane by
plane, :func:`napari_unet.core.uncertainty.uncertainty_map` of the same pass's
probabilities, computed in the worker), which "Next region to annotate" in the
Annotate widget reads. "Use as annotation" copies the predicted cells of the current
plane into the annotation layer, closing the correct-and-retrain loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.utils.notifications import show_info, show_warning

from napari_unet._widgets._export import PackageExporter, plane_sample
from napari_unet._widgets._layers import annotations_of, current_index, field_of_view
from napari_unet._widgets._model_picker import BUNDLED, CURRENT, FILE, ModelPicker, model_choices
from napari_unet._widgets._session import annotation_info, get_session
from napari_unet._widgets._settings import (
    advanced_section,
    device_box,
    load_settings,
    save_settings,
)
from napari_unet._widgets._worker import JobRunner
from napari_unet.core.io import allocate_zeros, max_label
from napari_unet.core.precision import PRECISION_HELP, PRECISIONS
from napari_unet.core.pretrained import DEFAULT_PRETRAINED, pretrained_models
from napari_unet.core.segment_config import SegmentConfig

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

    from napari_unet.core.model import UNet
    from napari_unet.core.segment import PlaneDone, SegmentProgress

Index = tuple[int, ...]
Window = tuple[slice, slice]

SCOPES = [
    ("current plane", "plane"),
    ("visible field of view", "view"),
    ("whole stack", "stack"),
]
#: Model choices: (label shown, value); a bundled model's value is its name.
MODEL_SOURCES = model_choices([CURRENT, BUNDLED, FILE], {CURRENT: "current model (session)"})
DIAMETER_TOOLTIP = (
    "Typical cell/nucleus diameter in this image. The input is rescaled so that objects "
    "have the size the model was trained on: set it when your cells are much smaller or "
    "larger than the training ones. 0 = as trained (no rescaling)."
)
#: Shortest interval (s) between two refreshes of the probability layer.
REFRESH_INTERVAL = 0.2


# ---------------------------------------------------------------------------
# helpers


def _intersect(a: slice, b: slice) -> slice:
    return slice(max(a.start, b.start), max(min(a.stop, b.stop), max(a.start, b.start)))


def _with_uncertainty(
    job: Callable[..., Generator[Any, Any, Any]], *args: Any, **kwargs: Any
) -> Generator[Any, Any, Any]:
    """Run ``job(*args, **kwargs)`` (``iter_segment``), pairing each plane with its uncertainty.

    Every ``PlaneDone`` event is yielded as ``(event, uncertainty_map(event.probabilities))``,
    so the map is computed in the worker thread from the same pass; other events and the
    job's return value pass through unchanged.
    """
    from napari_unet.core.segment import PlaneDone
    from napari_unet.core.uncertainty import uncertainty_map

    events = job(*args, **kwargs)
    while True:
        try:
            event = next(events)
        except StopIteration as stop:
            return stop.value
        if isinstance(event, PlaneDone):
            yield event, uncertainty_map(event.probabilities)
        else:
            yield event


# ---------------------------------------------------------------------------
# the widget


class PredictWidget(Container):
    """Segment the current plane, the visible region or a whole stack with a U-Net.

    Parameters
    ----------
    viewer : napari.viewer.Viewer

    Attributes
    ----------
    model_source : ComboBox
        ``"current"`` (the session's model, e.g. just trained), a bundled model's
        name (e.g. ``"nuclei"``) or ``"file"``. Until the user picks one, it is the
        current model when the session has one, else the bundled nuclei model.
    image_layer : magicgui widget
        The image to segment.
    diameter : FloatSpinBox
        Typical object diameter (px) in the image; 0 predicts at the image's scale.
    scope : ComboBox
        ``"plane"``, ``"view"`` (visible field of view) or ``"stack"``.
    picker : ModelPicker
        The model; ``model_source`` and ``model_file`` are its fields.
    show_probabilities, show_uncertainty : CheckBox
        Also write the foreground probability (tile by tile) / the uncertainty
        (plane by plane) into ``"<image> probability"`` / ``"<image> uncertainty"``.
    advanced : superqt.QCollapsible
        The folded section: min size, split, grow, test-time augmentation,
        tile size, device, precision, the bioimage.io export.
    annotation_layer : magicgui widget
        Labels layer that "Use as annotation" copies predictions into.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._job: dict[str, Any] = {}
        self._last_refresh = 0.0
        settings = load_settings()

        self.picker = ModelPicker(
            viewer,
            order=[CURRENT, BUNDLED, FILE],
            texts={CURRENT: "current model (session)"},
            value=self._default_source(),
            label="Model",
            tooltip="The model trained in this session, a model bundled with napari-unet "
            "(segments without any annotation), or a model file.\n"
            + "\n".join(f"{name}: {text}" for name, text in pretrained_models().items()),
            no_current="there is no current model: train one in '3. Train', or pick a "
            "bundled model or a model file",
        )
        self.model_source, self.model_file = self.picker.source, self.picker.file
        self.model_info = Label(value="")
        self.image_layer = create_widget(annotation="napari.layers.Image", label="Image")
        self.scope = ComboBox(choices=SCOPES, value="plane", label="Predict")
        self.diameter = FloatSpinBox(
            value=0.0,
            min=0.0,
            max=10_000.0,
            step=1.0,
            label="Object size (px)",
            tooltip=DIAMETER_TOOLTIP,
        )
        self.diameter.native.setSpecialValueText("as trained")
        self.tile_size = SpinBox(
            value=int(settings["tile_size"]),
            min=0,
            max=16384,
            step=16,
            label="Tile size",
            tooltip="Largest input tile edge; 0 = automatic (memory)",
        )
        self.device = device_box(settings["device"])
        self.precision = ComboBox(
            choices=PRECISIONS,
            value=settings["precision"] if settings["precision"] in PRECISIONS else "auto",
            label="Precision",
            tooltip=PRECISION_HELP[0].upper() + PRECISION_HELP[1:],
        )
        self.threshold = FloatSpinBox(
            value=0.5,
            min=0.0,
            max=1.0,
            step=0.05,
            label="Threshold",
            tooltip="Foreground probability cut; set to the model's own "
            "(chosen on the validation images in training) when a model is picked",
        )
        defaults = SegmentConfig()
        self.min_size = SpinBox(
            value=defaults.min_size, min=0, max=1_000_000, label="Min size (px)"
        )
        self.split = CheckBox(text="Split touching cells (watershed)", value=defaults.split)
        self.expand = SpinBox(
            value=defaults.expand,
            min=0,
            max=50,
            label="Grow cells (px)",
            tooltip="Grow every cell by this many pixels into the background "
            "without merging cells (restores the rim that training with "
            "separated touching cells leaves out)",
        )
        self.regions = CheckBox(
            text="Connected regions instead of the mask",
            value=defaults.regions,
            tooltip="Membranes models output a binary mask (1 = interior); this labels "
            "each enclosed region with its own id instead",
            visible=False,
        )
        self.tta = CheckBox(
            text="Test-time augmentation (8 flips/rotations, 8x slower)", value=defaults.tta
        )
        self.link = CheckBox(
            text="One id per cell through the stack (Z or time)",
            value=defaults.link,
            tooltip="Link the cells of consecutive planes by overlap (IoU >= "
            f"{defaults.link_iou}); a time-lapse is tracked by overlap only: no divisions, "
            "no motion model. Off: ids are unique per plane. For 'whole stack' only.",
            enabled=False,
        )
        self.show_probabilities = CheckBox(text="Show probabilities", value=False)
        self.show_uncertainty = CheckBox(
            text="Show uncertainty (where to annotate next)",
            value=False,
            tooltip="Also write where the network is unsure (1 = foreground probability "
            "0.5, 0 = sure) into '<image> uncertainty', from the same prediction. "
            "'Next region to annotate' in '1. Annotate' moves to its most uncertain "
            "window that is not annotated yet.",
        )
        self.predict_button = PushButton(text="Predict")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = Container(
            widgets=[self.predict_button, self.cancel_button], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        self.status = Label(value="", label="Status")
        self.annotation_layer = create_widget(
            annotation="napari.layers.Labels", label="Annotations"
        )
        self.mark_annotated = CheckBox(
            text="Mark the plane as annotated",
            value=False,
            tooltip="Only if the prediction needs no correction",
        )
        self.export_button = PushButton(
            text="Export model for bioimage.io…",
            tooltip="Write the model as a bioimage.io package (.zip) that deepImageJ, "
            "ilastik, QuPath and BiaPy run without napari-unet, and test it with "
            "bioimageio.core; the displayed plane of the image is its test sample",
        )
        self.use_button = PushButton(
            text="Use as annotation",
            tooltip="Copy the predicted cells of the current plane "
            "into the annotation layer, to correct and retrain",
        )
        self.extend(
            [
                self.model_source,
                self.model_file,
                self.model_info,
                self.image_layer,
                self.diameter,
                self.scope,
                self.threshold,
                self.regions,
                self.link,
                self.show_probabilities,
                self.show_uncertainty,
                buttons,
                self.status,
                Label(value="<b>Correct and retrain</b>"),
                self.annotation_layer,
                self.mark_annotated,
                self.use_button,
            ]
        )

        self._advanced_form, self.advanced = advanced_section(
            self,
            [
                self.min_size,
                self.split,
                self.expand,
                self.tta,
                self.tile_size,
                self.device,
                self.precision,
                self.export_button,
            ],
            before=buttons,
            title="Advanced: clean-up, test-time augmentation, tiles, device, precision, export",
        )
        for label in (self.model_info, self.status):
            label.native.setWordWrap(True)
        self._runner = JobRunner(
            start_button=self.predict_button,
            cancel_button=self.cancel_button,
            status=self.status,
            what="Prediction",
            controls=[
                self.model_source,
                self.model_file,
                self.image_layer,
                self.scope,
                self.tile_size,
                self.device,
                self.precision,
                self.tta,
                self.show_probabilities,
                self.show_uncertainty,
            ],
        )
        self._runner.connect_start(self.start, "Cannot predict")
        self.picker.changed.connect(self._update_model_info)
        self.image_layer.changed.connect(self._on_image_changed)
        self.scope.changed.connect(self._on_scope_changed)
        self.use_button.changed.connect(self._on_use_clicked)
        self._exporter = PackageExporter(self.export_button, self.status)
        self.export_button.changed.connect(self._on_export_clicked)
        get_session(viewer).model_changed.connect(self._on_model_changed)
        self.picker.refresh()
        self._update_model_info()
        self._on_image_changed()

    # -- public API -------------------------------------------------------
    @property
    def is_running(self) -> bool:
        """True while a prediction worker runs."""
        return self._runner.is_running

    @property
    def model(self) -> UNet | None:
        """The model that "Predict" would use now (None: none yet, or a bad file)."""
        return self.picker.model

    def output_name(self, kind: str = "prediction") -> str:
        """Name of the output layer (``"prediction"``, ``"probability"``, ``"uncertainty"``)."""
        image = self.image_layer.value
        return f"{image.name if image is not None else 'image'} {kind}"

    def start(self) -> GeneratorWorker:
        """Predict with the form's values, streaming into the output layers.

        Returns
        -------
        worker : GeneratorWorker

        Raises
        ------
        ValueError
            If a prediction runs, or the model, image or view does not allow one
            (a bad model file raises ``ModelFileError``, a ValueError).
        """
        from napari.qt.threading import create_worker

        from napari_unet.core.segment import (
            count_batches,
            iter_segment,
            object_zoom,
            resolve_tiling,
        )
        from napari_unet.core.tiling import as_channels_first

        if self.is_running:
            raise ValueError("a prediction is already running")
        model = self._require_model()
        image = self.image_layer.value
        if image is None:
            raise ValueError("choose an Image layer to segment")
        data = image.data[0] if image.multiscale else image.data
        axis = -1 if image.rgb else None
        if image.rgb and model.in_channels != data.shape[-1]:
            raise ValueError(
                f"'{image.name}' is an RGB layer ({data.shape[-1]} channels) and this model "
                f"takes {model.in_channels}: split it (right-click the layer › Split RGB) and "
                "choose the channel to segment"
            )
        arr, lead, channels = as_channels_first(data, model.in_channels, axis)
        shape = (int(arr.shape[-2]), int(arr.shape[-1]))
        planes, region = self._planes_and_region(image, lead, shape)

        diameter = float(self.diameter.value) or None
        zoom = object_zoom(model, diameter)  # checks that the size is usable
        tta = bool(self.tta.value)
        _, tile, batch = resolve_tiling(model, self.device.value, int(self.tile_size.value))
        save_settings(
            tile_size=int(self.tile_size.value),
            device=self.device.value,
            precision=self.precision.value,
        )

        labels_layer, prob_layer, unc_layer = self._output_layers(image, (*lead, *shape), channels)
        extras = [layer for layer in (prob_layer, unc_layer) if layer is not None]
        for index in planes:  # the job replaces earlier results in its region
            for layer in (labels_layer, *extras):
                layer.data[(*index, *region)] = 0
        whole = self.scope.value == "stack"
        first_label = 1 if whole else max_label(labels_layer.data) + 1
        for layer in (labels_layer, *extras):
            layer.refresh()

        # one progress step per batch of tiles and per finished plane, and one for
        # the probabilities resized back when the plane was rescaled
        options = SegmentConfig(
            threshold=float(self.threshold.value),
            min_size=int(self.min_size.value),
            split=bool(self.split.value),
            expand=int(self.expand.value),
            regions=bool(self.regions.value),
            tta=tta,
            diameter=diameter,
            link=bool(self.link.value) and whole and len(lead) == 1,
        ).segment_kwargs(model)
        per_plane = count_batches(model, shape, region, tile, batch, zoom) + 1
        total = (per_plane + (zoom != 1.0)) * len(planes)
        # the uncertainty of each plane is computed in the worker, from the same pass
        job: tuple[Any, ...] = (
            (_with_uncertainty, iter_segment) if unc_layer is not None else (iter_segment,)
        )
        worker = create_worker(
            *job,
            model,
            arr,
            planes=planes,
            region=region,
            tile_size=tile,
            batch_size=batch,
            device=self.device.value,
            precision=self.precision.value,
            channel_axis=-3 if channels else None,
            first_label=first_label,
            **options,
            _progress={"total": total, "desc": "U-Net prediction"},
        )
        self._job = {
            "labels": labels_layer,
            "prob": prob_layer,
            "uncertainty": unc_layer,
            "region": region,
            "planes_done": 0,
            "n_planes": len(planes),
            "cells": 0,
            "mask": options["output"] == "mask",
        }
        return self._runner.run(
            worker,
            message=f"Predicting {len(planes)} plane(s)…",
            yielded=self._on_progress,
            returned=self._on_returned,
            aborted=self._on_aborted,
        )

    def export_model(self, path: str) -> GeneratorWorker:
        """Export the chosen model as a bioimage.io package to ``path`` in a worker.

        The displayed plane of the image is the package's test sample when it
        fits the model (else the bundled nuclei image); bioimageio.core's model
        test runs after writing, and the status line says how it ended.
        """
        model = self._require_model()
        image = self.image_layer.value
        index = self.current_index(image, image.ndim - 2) if image is not None else ()
        return self._exporter.run(model, path, plane_sample(image, index, model))

    def cancel(self) -> None:
        """Stop after the current batch of tiles; finished planes are kept."""
        self._runner.cancel()

    def current_index(self, layer: Any, n_lead: int) -> Index:
        """Index of the displayed plane in the first ``n_lead`` axes of ``layer``'s data."""
        return current_index(self._viewer, layer, n_lead)

    def field_of_view(self, layer: Any | None = None) -> Window:
        """Rows and columns of ``layer``'s planes visible on the canvas (clipped).

        Raises
        ------
        ValueError
            If the view is 3D or the layer is not in view.
        """
        return field_of_view(self._viewer, layer if layer is not None else self.image_layer.value)

    def use_as_annotation(self) -> int:
        """Copy the predicted cells of the current plane into the annotation layer.

        Returns
        -------
        n_cells : int
            Cells copied.

        Raises
        ------
        ValueError
            If there is no prediction of this plane or no suitable annotation layer.
        """
        from skimage.segmentation import relabel_sequential

        image = self.image_layer.value
        name = self.output_name()
        if image is None or name not in self._viewer.layers:
            raise ValueError("predict first: there is no prediction layer for this image")
        prediction = self._viewer.layers[name]
        target = self.annotation_layer.value
        if target is None or target.name == prediction.name:
            raise ValueError("choose the annotation Labels layer (not the prediction)")
        if tuple(target.data.shape) != tuple(prediction.data.shape):
            raise ValueError(
                f"'{target.name}' has shape {tuple(target.data.shape)} but the prediction has "
                f"{tuple(prediction.data.shape)}"
            )
        index = self.current_index(prediction, prediction.data.ndim - 2)
        predicted = np.asarray(prediction.data[index])
        if not predicted.any():
            raise ValueError(f"no predicted cells in plane {index or 0}: predict it first")
        new, _, _ = relabel_sequential(predicted)
        offset = max_label(target.data)
        n_cells = int(new.max())
        if offset + n_cells > np.iinfo(target.data.dtype).max:
            raise ValueError(f"'{target.name}' ({target.data.dtype}) cannot hold more ids")
        new = np.where(new > 0, new + offset, 0)
        old = np.asarray(target.data[index])
        rows, cols = np.nonzero(old != new)
        coords = (*(np.full(rows.size, i) for i in index), rows, cols)
        target.data_setitem(coords, new[rows, cols])  # undoable like painting

        plane = index[0] if index else 0
        info = annotation_info(target)
        info.setdefault("image", image.name)
        where = f"plane {plane} of '{target.name}'" if index else f"'{target.name}'"
        if self.mark_annotated.value:
            info["planes"] = sorted({*info["planes"], plane})
            show_info(
                f"Copied {n_cells} predicted cells into {where} and marked it as "
                "annotated. Train again (start from: current model) to improve."
            )
        else:
            show_info(
                f"Copied {n_cells} predicted cells into {where}. Correct them (paint, "
                "erase, fill), mark the plane as annotated in '1. Annotate', then train "
                "again starting from the current model."
            )
        return n_cells

    # -- planning ---------------------------------------------------------
    def _require_model(self) -> UNet:
        model = self.picker.load()
        if model is None:  # "scratch" is not offered here
            raise ValueError("choose a model")
        return model

    def _planes_and_region(
        self, image: Any, lead: tuple[int, ...], shape: tuple[int, int]
    ) -> tuple[list[Index], Window]:
        whole = (slice(0, shape[0]), slice(0, shape[1]))
        scope = self.scope.value
        if scope == "stack":
            return list(np.ndindex(*lead)), whole
        index = self.current_index(image, len(lead))
        return [index], self.field_of_view(image) if scope == "view" else whole

    def _output_layers(
        self, image: Any, shape: tuple[int, ...], channels: bool
    ) -> tuple[Any, Any, Any]:
        scale, translate = np.asarray(image.scale), np.asarray(image.translate)
        if channels and not image.rgb:  # a channel axis in the image, not in the labels
            scale, translate = np.delete(scale, -3), np.delete(translate, -3)
        place = {"scale": scale, "translate": translate}
        labels = self._output_layer("prediction", shape, np.uint32, "labels", opacity=0.6, **place)
        maps = {}
        for kind, wanted in (
            ("probability", self.show_probabilities.value),
            ("uncertainty", self.show_uncertainty.value),
        ):
            if not wanted:
                maps[kind] = None
                continue
            layer = maps[kind] = self._output_layer(
                kind,
                shape,
                np.float32,
                "image",
                colormap="magma",
                contrast_limits=(0.0, 1.0),
                blending="additive",
                multiscale=False,
                **place,
            )
            layers = self._viewer.layers
            if layers.index(layer) > layers.index(labels):  # below: the cells stay visible
                layers.move(layers.index(layer), layers.index(labels))
        return labels, maps["probability"], maps["uncertainty"]

    def _output_layer(
        self, kind: str, shape: tuple[int, ...], dtype: Any, layer_type: str, **style: Any
    ) -> Any:
        """The output layer ``kind`` of the image: reused (zeroed if resized) or added."""
        name = self.output_name(kind)
        layers = self._viewer.layers
        if name in layers:
            layer = layers[name]
            if tuple(layer.data.shape) != shape:
                layer.data = allocate_zeros(shape, dtype, name=kind)
            return layer
        add = getattr(self._viewer, f"add_{layer_type}")
        return add(allocate_zeros(shape, dtype, name=kind), name=name, **style)

    # -- slots ------------------------------------------------------------
    def _on_progress(
        self, event: SegmentProgress | PlaneDone | tuple[PlaneDone, np.ndarray]
    ) -> None:
        from napari_unet.core.postprocess import foreground_probability
        from napari_unet.core.segment import PlaneDone

        job = self._job
        uncertainty = None
        if isinstance(event, tuple):  # (PlaneDone, its uncertainty) from _with_uncertainty
            event, uncertainty = event
        if isinstance(event, PlaneDone):
            where = (*event.index, *event.region)
            labels_layer = job["labels"]
            labels_layer.data[where] = event.labels
            labels_layer.refresh()
            job["planes_done"] += 1
            job["cells"] += event.n_objects
            if job.get("prob") is not None:
                job["prob"].refresh()
            if uncertainty is not None and job.get("uncertainty") is not None:
                job["uncertainty"].data[where] = uncertainty
                job["uncertainty"].refresh()
            return
        prob_layer = job.get("prob")
        if prob_layer is not None:
            r0, c0 = event.origin
            region = job["region"]
            for rows, cols in event.regions:
                prows = _intersect(slice(rows.start + r0, rows.stop + r0), region[0])
                pcols = _intersect(slice(cols.start + c0, cols.stop + c0), region[1])
                local = (
                    slice(prows.start - r0, prows.stop - r0),
                    slice(pcols.start - c0, pcols.stop - c0),
                )
                prob_layer.data[(*event.index, prows, pcols)] = foreground_probability(
                    event.probabilities[(slice(None), *local)]
                )
            now = time.monotonic()
            if now - self._last_refresh > REFRESH_INTERVAL:
                prob_layer.refresh()
                self._last_refresh = now
        where = f"plane {event.index[0] if event.index else 0}"
        self.status.value = (
            f"{where} ({event.plane + 1}/{event.n_planes}): tile batch {event.done}/{event.total}"
        )
        if event.message:
            show_info(event.message)

    def _on_returned(self, next_label: int) -> None:
        job = self._job
        found = "binary mask (1 = interior)" if job["mask"] else f"{job['cells']} cells"
        self.status.value = (
            f"Done: {found} in {job['planes_done']} plane(s) → '{job['labels'].name}'."
        )
        if job.get("uncertainty") is not None:
            self.status.value += (
                f" Uncertainty → '{job['uncertainty'].name}': '1. Annotate' › "
                "'Next region to annotate' shows where to annotate next."
            )

    def _on_aborted(self) -> None:
        job = self._job
        self.status.value = (
            f"Cancelled: {job['planes_done']} of {job['n_planes']} plane(s) done and kept."
        )

    def _on_export_clicked(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(
            self.native,
            "Export model for bioimage.io",
            str(Path.home() / "unet-model.zip"),
            "bioimage.io model package (*.zip)",
        )
        if path:
            try:
                self.export_model(path)
            except ValueError as err:
                show_warning(f"Cannot export: {err}")

    def _on_use_clicked(self) -> None:
        try:
            self.use_as_annotation()
        except ValueError as err:
            from napari.utils.notifications import show_error

            show_error(f"Cannot use the prediction as annotation: {err}")

    def _default_source(self) -> str:
        """The session's model when there is one, else the bundled nuclei model."""
        return CURRENT if get_session(self._viewer).model is not None else DEFAULT_PRETRAINED

    def _on_model_changed(self, model: Any = None) -> None:
        # the picker reports the change (model info); the default follows the session
        self.picker.follow(self._default_source())  # unless the user chose a model

    def _update_model_info(self) -> None:
        model = self.model
        source = self.picker.value
        if model is None:
            self.model_info.value = (
                "No model yet: train one in '3. Train'."
                if source == CURRENT
                else "Choose a napari-unet model file."
            )
            self.diameter.tooltip = DIAMETER_TOOLTIP
            return
        from napari_unet.core.checkpoint import suggested_diameter, suggested_threshold
        from napari_unet.core.tasks import model_task

        if source in pretrained_models():
            text = f"Bundled {source} model: {pretrained_models()[source]}"
        else:
            config = model.config
            text = f"U-Net: depth {config.depth}, {config.base_channels} base channels"
            steps = model.metadata.get("best_step") if isinstance(model.metadata, dict) else None
            if steps:
                text += f", checkpoint of training step {steps}"
        # the threshold that scored best on the validation images during training
        self.threshold.value = suggested_threshold(model)
        trained = suggested_diameter(model)
        if trained is None:
            size = "its training object size is unknown (no rescaling)"
        else:
            size = f"trained on objects ~{trained:.0f} px across"
        self.diameter.tooltip = f"{DIAMETER_TOOLTIP}\nThis model: {size}."
        membranes = model_task(model) == "membranes"
        self.regions.visible = membranes
        self.split.visible = self.expand.visible = not membranes  # cell post-processing
        output = "membranes: binary mask output" if membranes else "cells: instance output"
        self.model_info.value = f"{text}; {output}; threshold {self.threshold.value:.2f}; {size}"

    def _on_scope_changed(self, value: Any = None) -> None:
        self.link.enabled = self.scope.value == "stack"

    def _on_image_changed(self, value: Any = None) -> None:
        image = self.image_layer.value
        if image is None:
            return
        layer = annotations_of(self._viewer, image)
        if layer is not None and layer in self.annotation_layer.choices:
            self.annotation_layer.value = layer
