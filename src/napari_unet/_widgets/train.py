"""The "3. Train" dock widget: fine-tune a U-Net on the annotations of this viewer.

The widget gathers training crops from a Labels layer (its fully annotated
planes and rectangles), builds a :class:`~napari_unet.core.TrainConfig` from
the form, and runs :func:`~napari_unet.core.iter_train` in a napari worker.
It plots the loss and validation scores as they arrive, stops cooperatively
(the core returns the best model so far) and hands the trained model to the
viewer's session, where the Predict widget picks it up. With "Live preview"
on, the part of the current plane on screen is segmented with the current
weights every few seconds (in the training thread, as the core's
:class:`~napari_unet.core.preview.LivePreview` schedules it) and shown in the
Predict widget's layer ``"<image> prediction"``; panning, zooming or moving
the slider moves the previewed window.

Every finished run (stopped or not) becomes a model version (``v1``, ``v2``,
...: :mod:`napari_unet.core.versions`) in the store beside the autosave. The
"Version" row lists them, newest first, with the current one selected:
choosing another makes it the session's model at once. "Retrain" fine-tunes
the current version on the current annotations (corrected predictions
included); the new version and the one it replaces are scored on the same
held-out pixels (the union of the runs' validation bands) in the worker
(:func:`~napari_unet.core.train_versions.train_and_record`: training, then
the version), and the row says whether the correction helped.

The fields start at the :class:`~napari_unet.core.train_config.TrainConfig`
defaults (the budget, model size and weight-map settings at the last values
used, :mod:`napari_unet._widgets._settings`); the task's preset sets the
advanced ones, folded away under "Advanced". The shared pieces: the model
picker (:mod:`~napari_unet._widgets._model_picker`), the worker lifecycle
(:mod:`~napari_unet._widgets._worker`) and the layer follower
(:mod:`~napari_unet._widgets._layers`).
"""

from __future__ import annotations

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
from napari.utils.notifications import show_error, show_info

from napari_unet._widgets._layers import (
    LayerFollower,
    ViewFollower,
    annotated_image,
    annotated_rectangles,
    current_index,
    field_of_view,
    prediction_layer,
    regions_layer_for,
    spatial_shape,
)
from napari_unet._widgets._model_picker import (
    BUNDLED,
    CURRENT,
    FILE,
    ModelPicker,
    model_choices,
)
from napari_unet._widgets._session import METADATA_KEY, get_session
from napari_unet._widgets._settings import (
    advanced_section,
    autosave_path,
    device_box,
    load_settings,
    save_settings,
)
from napari_unet._widgets._worker import JobRunner
from napari_unet.core.pretrained import SCRATCH, default_start, pretrained_models
from napari_unet.core.progress import format_duration
from napari_unet.core.tasks import TASKS, detect_task
from napari_unet.core.train_versions import VersionPlan, train_and_record

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

    from napari_unet.core.annotations import Crop
    from napari_unet.core.model import UNet
    from napari_unet.core.preview import PreviewUpdate
    from napari_unet.core.train_versions import TrainOutcome
    from napari_unet.core.training import TrainConfig, TrainProgress, TrainResult
    from napari_unet.core.versions import ModelVersion

#: "Start from" choices: (label shown, value); a bundled model's value is its name.
START_CHOICES = model_choices([BUNDLED, SCRATCH, CURRENT, FILE])
#: "Task" choices: (label shown, task name).
TASK_CHOICES = [("cells / nuclei", "cells"), ("membranes / regions", "membranes")]
BASE_CHANNELS = [8, 16, 32, 64]
#: Loss weightings offered (label, TrainConfig.weighting).
WEIGHTINGS = [
    ("weight map: border term", "border"),
    ("weight map: paper (class balance + border)", "unet"),
    ("none", "none"),
]


class TrainWidget(Container):
    """Train or fine-tune a U-Net on the annotated planes and regions of a Labels layer.

    Parameters
    ----------
    viewer : napari.viewer.Viewer

    Attributes
    ----------
    labels_layer, image_layer : magicgui widgets
        Annotations (Labels layer) and the image they annotate.
    all_layers : CheckBox
        Also use every other annotated Labels layer of the viewer.
    task : ComboBox
        ``"cells"`` or ``"membranes"`` (:mod:`napari_unet.core.tasks`). Until the
        user picks one, it follows :func:`~napari_unet.core.tasks.detect_task`
        of the annotations; choosing one sets the fields of its preset.
    picker : ModelPicker
        The starting model; ``start_from`` and ``model_file`` are its fields.
    start_from : ComboBox
        A bundled model's name (e.g. ``"nuclei"``), ``"scratch"``, ``"current"``
        (the session's model) or ``"file"``. Until the user picks one, it follows
        :func:`~napari_unet.core.pretrained.default_start` of the annotations.
    minutes, steps : FloatSpinBox, SpinBox
        Budget: wall time (0 = no time limit) and the most optimisation steps.
    live_preview : CheckBox
        Show the segmentation of the visible part of the current plane with the
        current weights while training (in ``"<image> prediction"``).
    preview : LivePreview
        The window previewed (set from the view while training) and the
        preview schedule (:class:`~napari_unet.core.preview.PreviewSchedule`).
    previews_shown : int
        Previews written into the prediction layer in the current (or last) run.
    advanced : superqt.QCollapsible
        The folded section: model size, loss weights (w0, sigma), patch and
        batch size, learning rate, scale augmentation, validation.
    version : ComboBox
        The model versions of the store (newest first) with the current one
        selected; choosing another makes it the session's model at once.
    retrain_button : PushButton
        Fine-tune the current version on the current annotations (:meth:`retrain`).
    versions_info : Label
        The current version's scores: after a retrain, the new and the
        previous version on the same held-out pixels.
    plot : TrainingPlot
        Live loss / validation plot.
    progress_bar : napari.utils.progress or None
        The running job's bar in napari's activity dock (per mille of the
        binding budget, time or steps).
    last_result : TrainResult or None
        Result of the last finished training.
    last_version : ModelVersion or None
        The version the last finished training was kept as.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from napari_unet.core.preview import LivePreview
        from napari_unet.core.training import MULTI_SCALE, TrainConfig

        super().__init__()
        self._viewer = viewer
        self._job_layers: list[str] = []
        self._task_picked = False  # the user chose "Task": keep it
        self._n_examples = 1
        self._channels = 1  # of the annotated image, as last seen
        self.progress_bar: Any = None
        self._job_start: str | None = None
        self.last_result: TrainResult | None = None
        self.last_version: ModelVersion | None = None
        self._last_note = ""
        # the examples of the versions trained here (for fair comparisons), and
        # whether their runs held out validation bands
        self._runs: dict[str, tuple[list[Crop], bool]] = {}
        self._job_plan: VersionPlan | None = None
        self._version_choices: list[tuple[str, str]] = []
        self.preview = LivePreview()
        self.previews_shown = 0
        self._preview_job: dict[str, Any] = {}  # the previewed image layer and its geometry
        self._view = ViewFollower(viewer, self._update_preview_window)
        settings = load_settings()
        config = TrainConfig()  # the defaults of the fields no setting remembers

        self.labels_layer = create_widget(annotation="napari.layers.Labels", label="Annotations")
        self.image_layer = create_widget(annotation="napari.layers.Image", label="Image")
        self.all_layers = CheckBox(text="Also use other annotated layers", value=False)
        self.data_info = Label(value="", label="Training data")
        self.task = ComboBox(
            choices=TASK_CHOICES,
            value=config.task,
            label="Task",
            tooltip="\n".join(f"{name}: {text}" for name, text in TASKS.items()),
        )
        self.task_info = Label(value="")
        self.picker = ModelPicker(
            viewer,
            order=[BUNDLED, SCRATCH, CURRENT, FILE],
            value=SCRATCH,
            label="Start from",
            tooltip="Fine-tune a bundled model (the default for instance labels: "
            "few annotations go a long way), train a new network (the default for "
            "binary masks), or continue from the current model or a model file.\n"
            + "\n".join(f"{name}: {text}" for name, text in pretrained_models().items()),
            no_current="there is no current model: train from scratch or load a file",
            no_file="choose a model file to start from",
        )
        self.start_from, self.model_file = self.picker.source, self.picker.file
        self.minutes = FloatSpinBox(
            value=float(settings["minutes"]),
            min=0.0,
            max=10_000.0,
            step=1.0,
            label="Minutes",
            tooltip="Time budget: training (final validation included) ends when it is "
            "spent; 0 = no time limit",
        )
        self.steps = SpinBox(
            value=int(settings["steps"]),
            min=1,
            max=1_000_000,
            step=50,
            label="Max steps",
            tooltip="Most optimisation steps (a cap; the time budget normally ends training)",
        )
        base = int(settings["base_channels"])
        self.base_channels = ComboBox(
            choices=BASE_CHANNELS,
            value=base if base in BASE_CHANNELS else config.base_channels,
            label="Model size",
            tooltip="Channels of the first level (the paper uses 64; "
            f"{config.base_channels} trains fast on a CPU)",
        )
        self.device = device_box(settings["device"])
        self.weighting = ComboBox(
            choices=WEIGHTINGS,
            value=config.weighting,
            label="Loss weights",
            tooltip="The paper's border weights (w0, sigma) in the gaps between touching "
            "cells; with the paper's class balance too (helps very short trainings on "
            "dense cells); or none (every annotated pixel weighs the same: best on EM "
            "membranes). See docs/benchmarks.md.",
        )
        self.w0 = FloatSpinBox(
            value=float(settings["w0"]), min=0.0, max=100.0, step=1.0, label="w0"
        )
        self.sigma = FloatSpinBox(
            value=float(settings["sigma"]), min=0.5, max=50.0, step=0.5, label="sigma (px)"
        )
        self.patch_size = SpinBox(
            value=config.patch_size,
            min=64,
            max=2048,
            step=16,
            label="Patch size",
            tooltip="Input patch edge (rounded up to a valid size)",
        )
        self.batch_size = SpinBox(value=config.batch_size, min=1, max=64, label="Batch size")
        self.learning_rate = FloatSpinBox(
            value=config.learning_rate or 0.0,
            min=0.0,
            max=1.0,
            step=1e-4,
            label="Learning rate",
            tooltip="Adam's initial learning rate (cosine decay); auto: 1e-3 for a new "
            "network, 1e-4 when fine-tuning a model (TrainConfig)",
        )
        self.learning_rate.native.setDecimals(4)
        self.learning_rate.native.setSpecialValueText("auto")
        self.scale_augment = CheckBox(
            text="Scale augmentation (cells 0.5x-1.4x)",
            value=config.scales == MULTI_SCALE,
            tooltip="Also train on the examples zoomed 0.5x to 1.41x: for images to "
            "segment at other magnifications than the annotated ones",
        )
        self.validate = CheckBox(
            text="Validate on a held-out part of each example",
            value=config.validation == "auto",
            tooltip="Hold out the far end (a fifth) of every annotated example to score the "
            "model, keep the best one and pick its threshold; the rest trains",
        )
        self.live_preview = CheckBox(
            text="Live preview (the view, every few seconds)",
            value=True,
            tooltip="While training, segment the part of the current plane on screen "
            "with the current weights into '<image> prediction'; pan or zoom to move "
            "it. It runs between training steps, rarer when it is slow, so that it "
            "takes at most a tenth of the time.",
        )
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.save_button = PushButton(text="Save model…", enabled=False)
        buttons = Container(
            widgets=[self.train_button, self.stop_button, self.save_button],
            layout="horizontal",
            labels=False,
        )
        buttons.margins = (0, 0, 0, 0)
        self.status = Label(value="Not trained yet.", label="Status")
        self.version = ComboBox(
            # a callable: the form's reset_choices (napari calls it as layers change) keeps them
            choices=lambda widget: self._version_choices,
            label="Version",
            tooltip="Every training run is kept as a version (v1, v2, …) beside the "
            "autosave. Choose one to make it the current model at once (for '4. Predict' "
            "and 'Retrain').",
        )
        self.retrain_button = PushButton(
            text="Retrain",
            enabled=False,
            tooltip="Fine-tune the current version on the current annotations (with the "
            "cells copied by '4. Predict' → 'Use as annotation' and corrected), with the "
            "budget above. The new version and this one are then scored on the same "
            "held-out pixels.",
        )
        versions_row = Container(
            widgets=[self.version, self.retrain_button],
            layout="horizontal",
            labels=False,
            label="Version",
        )
        versions_row.margins = (0, 0, 0, 0)
        from qtpy.QtWidgets import QSizePolicy

        # the versions' labels are long: the combo box takes the width, the button its text's
        self.retrain_button.native.setSizePolicy(QSizePolicy.Maximum, QSizePolicy.Fixed)
        versions_row.native.layout().setStretch(0, 1)
        self.versions_info = Label(value="")

        self.extend(
            [
                self.labels_layer,
                self.image_layer,
                self.all_layers,
                self.data_info,
                self.task,
                self.task_info,
                *self.picker.widgets,
                self.minutes,
                self.steps,
                self.device,
                self.live_preview,
                buttons,
                self.status,
                versions_row,
                self.versions_info,
            ]
        )
        # what a microscopist rarely changes: folded away, the task's preset sets it
        self._advanced_form, self.advanced = advanced_section(
            self,
            [
                self.base_channels,
                self.weighting,
                self.w0,
                self.sigma,
                self.patch_size,
                self.batch_size,
                self.learning_rate,
                self.scale_augment,
                self.validate,
            ],
            before=buttons,
            title="Advanced: model size, loss weights, patches, learning rate, validation",
        )

        for label in (self.data_info, self.task_info, self.status, self.versions_info):
            label.native.setWordWrap(True)
        from napari_unet._widgets._plot import TrainingPlot

        self.plot = TrainingPlot(viewer)
        self.native.layout().addWidget(self.plot)

        self._runner = JobRunner(
            start_button=self.train_button,
            cancel_button=self.stop_button,
            status=self.status,
            what="Training",
            controls=[
                self.labels_layer,
                self.image_layer,
                self.task,
                self.start_from,
                self.steps,
                self.minutes,
                self.device,
                self.version,
            ],
            on_running=self._on_running,
            cancel_quits=False,  # the job returns the best model so far
            cancel_message="Stopping after this step…",
        )
        self._runner.connect_start(self.start, "Cannot train")
        # the summary follows the chosen labels' marked planes and drawn rectangles
        self._follower = LayerFollower(
            viewer,
            {"metadata": [self.update_summary, self._on_labels_metadata]},
            {"data": self.update_summary},
        )
        self.labels_layer.changed.connect(self._on_labels_changed)
        viewer.layers.events.inserted.connect(self.update_summary)
        viewer.layers.events.removed.connect(self.update_summary)
        self.task.changed.connect(self._on_task_changed)
        self.picker.changed.connect(self._show_start)
        self.weighting.changed.connect(self._on_weighting_changed)
        self.save_button.changed.connect(self._on_save_clicked)
        self.live_preview.changed.connect(self._on_live_preview_changed)
        self.version.changed.connect(self._on_version_selected)
        self.retrain_button.changed.connect(self._on_retrain_clicked)
        session = get_session(viewer)
        session.model_changed.connect(self._on_model_changed)
        session.versions_changed.connect(self.update_versions)
        self.picker.refresh()
        self._show_start()
        self._on_labels_changed()
        session.restore()  # the version of the last napari session, if any
        self.update_versions()

    # -- public API -------------------------------------------------------
    @property
    def is_running(self) -> bool:
        """True while a training worker runs."""
        return self._runner.is_running

    def start(self, *, from_version: str | None = None) -> GeneratorWorker:
        """Start training with the form's values; the run becomes a new version.

        Parameters
        ----------
        from_version : str, optional
            Fine-tune this version (of the session's store) instead of the
            "Start from" choice (:meth:`retrain` passes the current version).

        Returns
        -------
        worker : GeneratorWorker
            The running napari worker (yields ``TrainProgress``, ``PreviewUpdate``
            and a status line while it scores versions; returns a
            :class:`~napari_unet.core.train_versions.TrainOutcome`).

        Raises
        ------
        ValueError
            If training is running, nothing is annotated, or the starting
            model is missing or does not fit the image.
        """
        if self.is_running:
            raise ValueError("training is already running")
        self.update_summary()
        crops, sources = self._collect_crops()
        channels = 1 if crops[0].image.ndim == 2 else crops[0].image.shape[0]
        self._follow_labels([c.labels for c in crops], channels, [c.mask for c in crops])
        session = get_session(self._viewer)
        if from_version is not None:
            if session.version == from_version and session.model is not None:
                model = session.model
            else:
                model = session.load_version(from_version)
            parent, start_text = from_version, f"version {from_version}"
        else:
            model = self._starting_model()
            parent, start_text = self.picker.origin(), self.picker.description()
        if model is not None and model.in_channels != channels:
            raise ValueError(
                f"the starting model expects {model.in_channels} channel(s) but the image has "
                f"{channels}; train from scratch or pick another model"
            )
        config = self._config()
        save_settings(
            steps=config.steps,
            minutes=float(self.minutes.value),
            base_channels=int(self.base_channels.value),
            device=self.device.value,
            w0=config.w0,
            sigma=config.sigma,
        )

        self._job_layers = sources
        self._job_start = start_text
        self._job_plan = self._version_plan(session, parent, crops, sources, config)
        self.plot.clear()
        from napari.utils import progress

        # the bar counts the binding budget (time or steps), not the step cap
        self.progress_bar = progress(total=1000, desc="Training U-Net")
        self._start_preview(channels)
        held_out = (
            " (a fifth of each held out for validation)" if config.validation == "auto" else ""
        )
        how = f"Fine-tuning {self._job_start}" if self._job_start else "Training a new network"
        return self._runner.start(
            train_and_record,
            [c.image for c in crops],
            [c.labels for c in crops],
            plan=self._job_plan,
            masks=[c.mask for c in crops],
            model=model,
            config=config,
            device=self.device.value,
            checkpoint=autosave_path(),
            should_stop=self._runner.stop_event.is_set,
            preview=self.preview,
            message=f"{how} on {len(crops)} example(s){held_out}; the best model so far is "
            f"autosaved to {autosave_path()}…",
            yielded=self._on_progress,
            returned=self._on_trained,
            finished=self._on_finished,
        )

    def retrain(self) -> GeneratorWorker:
        """Fine-tune the current version on the current annotations: the next version.

        The annotations are read afresh (corrected predictions included) and
        split into training and validation bands as in any run; the new
        version is scored against the current one on the same held-out pixels.

        Returns
        -------
        worker : GeneratorWorker
            As :meth:`start`.

        Raises
        ------
        ValueError
            If there is no current version, or as :meth:`start`.
        """
        name = get_session(self._viewer).version
        if name is None:
            raise ValueError(
                "there is no current version to retrain: train a first one with 'Train', "
                "or choose a version"
            )
        return self.start(from_version=name)

    def use_version(self, name: str) -> UNet:
        """Make version ``name`` the session's model (as choosing it in "Version" does).

        Raises
        ------
        ValueError
            If the store holds no such version or its file is missing or corrupt.
        """
        model = get_session(self._viewer).use_version(name)
        self.update_versions()
        return model

    def stop(self) -> None:
        """Stop after the current step; the best model so far is kept."""
        self._runner.cancel()

    def close(self) -> None:
        """Close the widget; it stops following its layers and the view."""
        self._follower.close()
        self._view.stop()
        super().close()

    def save_model(self, path: str | Path) -> Path:
        """Save the last trained model (or the session's model) to ``path``.

        Returns
        -------
        path : Path
        """
        from napari_unet.core.checkpoint import save_model

        session = get_session(self._viewer)
        model = session.model  # the current version after a switch
        if model is None and self.last_result is not None:
            model = self.last_result.model
        if model is None:
            raise ValueError("there is no trained model to save yet")
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".pt")
        layers = self._job_layers
        if self.last_result is None or model is not self.last_result.model:
            layers = self._version_sources(session.version)
        saved = save_model(path, model, training_layers=layers)
        if session.model is model:
            session.set_model(model, saved, version=session.version)
        show_info(f"Saved the U-Net model to {saved}")
        return saved

    # -- gathering --------------------------------------------------------
    def _pairs(self) -> list[tuple[Any, Any]]:
        """(image layer, labels layer) pairs to train on."""
        labels, image = self.labels_layer.value, self.image_layer.value
        if labels is None or image is None:
            raise ValueError("choose an annotation (Labels) layer and its Image layer")
        pairs = [(image, labels)]
        if self.all_layers.value:
            from napari.layers import Labels

            for layer in self._viewer.layers:
                if not isinstance(layer, Labels) or layer.name == labels.name:
                    continue
                other = annotated_image(self._viewer, layer)
                if other is not None:
                    pairs.append((other, layer))
        return pairs

    def _collect_crops(self) -> tuple[list[Crop], list[str]]:
        """Training crops of every pair (copied, so painting during training is safe)."""
        from napari_unet.core.annotations import Annotation, Crop

        crops: list[Crop] = []
        sources: list[str] = []
        unmarked: list[str] = []
        for image, labels in self._pairs():
            spatial = spatial_shape(image)
            if spatial != tuple(labels.data.shape):
                raise ValueError(
                    f"'{labels.name}' has shape {tuple(labels.data.shape)} but '{image.name}' "
                    f"has shape {tuple(spatial)}; choose the image the labels annotate"
                )
            if labels.data.ndim not in (2, 3):
                raise ValueError(
                    f"'{labels.name}' must be 2D or a stack of planes (3D), got "
                    f"{labels.data.ndim} dimensions"
                )
            annotation = Annotation(
                labels.data,
                tuple(self._planes(labels)),
                tuple(annotated_rectangles(self._viewer, labels)),
            )
            if not annotation.marked:
                unmarked.append(labels.name)
            found = annotation.crops(image.data, channel_axis=-1 if image.rgb else None)
            crops += [
                Crop(np.array(c.image), np.array(c.labels), np.array(c.mask), c.source)
                for c in found
            ]
            sources += [f"{labels.name}: {c.source}" for c in found]
        if not crops:
            raise ValueError(
                "nothing to train on: paint some cells, then mark planes as annotated or draw "
                "annotated rectangles (in '1. Annotate')"
            )
        if unmarked:
            show_info(
                f"No planes or regions are marked as annotated in {', '.join(unmarked)}: every "
                "plane with painted cells counts as fully annotated (unpainted pixels = "
                "background)."
            )
        return crops, sources

    def _starting_model(self) -> UNet | None:
        return self.picker.load()

    def _version_plan(
        self,
        session: Any,
        parent: str,
        crops: list[Crop],
        sources: list[str],
        config: TrainConfig,
    ) -> VersionPlan:
        """The run's version: its parent, and the versions it is compared with."""
        versions, _ = session.versions()
        known = {v.name: v for v in versions}
        compare = sorted(
            {n for n in (session.version, parent) if n in known},
            key=lambda n: known[n].number,
        )
        # a version trained here without validation trained on its bands: no fair score
        compare = [n for n in compare if self._runs.get(n, ([], True))[1]]
        return VersionPlan(
            store=session.store,
            parent=parent,
            crops=crops,
            sources=sources,
            validated=config.validation == "auto",
            compare=compare,
            runs=[self._runs[n][0] for n in compare if n in self._runs],
        )

    def _version_sources(self, name: str | None) -> list[str]:
        """Where version ``name``'s training examples came from (as its record says)."""
        if name is None:
            return []
        versions, _ = get_session(self._viewer).versions()
        for version in versions:
            if version.name == name and version.annotations is not None:
                return list(version.annotations.sources)
        return []

    @staticmethod
    def _planes(labels: Any) -> list[int]:
        """The planes marked fully annotated in a Labels layer's metadata."""
        info = labels.metadata.get(METADATA_KEY)
        return [int(p) for p in info.get("planes", [])] if isinstance(info, dict) else []

    def _config(self) -> TrainConfig:
        from napari_unet.core.training import MULTI_SCALE, TrainConfig, validation_interval

        steps = int(self.steps.value)
        minutes = float(self.minutes.value)
        return TrainConfig(
            task=self.task.value,
            steps=steps,
            minutes=minutes if minutes > 0 else None,
            batch_size=int(self.batch_size.value),
            learning_rate=float(self.learning_rate.value) or None,
            patch_size=int(self.patch_size.value),
            weighting=self.weighting.value,
            w0=float(self.w0.value),
            sigma=float(self.sigma.value),
            scales=MULTI_SCALE if self.scale_augment.value else (1.0,),
            validation="auto" if self.validate.value else "none",
            validate_every=validation_interval(steps),
            base_channels=int(self.base_channels.value),
        )

    # -- slots ------------------------------------------------------------
    def _on_save_clicked(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        session = get_session(self._viewer)
        default = str(session.model_path or Path.home() / "unet-model.pt")
        path, _ = QFileDialog.getSaveFileName(
            self.native, "Save U-Net model", default, "napari-unet model (*.pt)"
        )
        if path:
            self.save_model(path)

    def _on_labels_changed(self, value: Any = None) -> None:
        labels = self.labels_layer.value
        self._follower.follow(labels)  # and no longer the labels chosen before
        image = annotated_image(self._viewer, labels)
        if image is not None and image in self.image_layer.choices:
            self.image_layer.value = image
        self._on_labels_metadata()
        self.update_summary()

    def _on_labels_metadata(self, event: Any = None) -> None:
        """Follow the default start of the annotated planes (e.g. one was just marked)."""
        labels, image = self.labels_layer.value, self.image_layer.value
        if labels is None:
            return
        planes = self._planes(labels)
        data = labels.data
        if planes and data.ndim == 3:
            annotated = [data[p] for p in planes]
        elif data.ndim == 2 or isinstance(data, np.ndarray):
            annotated = [data]
        else:  # an unmarked stack on disk: decided from its painted planes at the start
            return
        channels = image.data.shape[-1] if image is not None and image.rgb else 1
        self._follow_labels(annotated, channels)

    def _follow_labels(
        self, labels: list[Any], channels: int, masks: list[Any] | None = None
    ) -> None:
        """Task and start detected from ``labels``, unless the user picked them by hand."""
        self._n_examples = len(labels)
        if not self._task_picked:
            choice = detect_task([np.asarray(lab) for lab in labels], masks)
            doubt = "" if choice.certain else " (unsure: check it)"
            self.task_info.value = f"From the labels: {choice.reason}{doubt}."
            if choice.task != self.task.value:  # fields the user set stay until the task changes
                with self.task.changed.blocked():
                    self.task.value = choice.task
                self._apply_task_preset()
        self._channels = channels
        self._follow_start()

    def _follow_start(self) -> None:
        """Start from the task's default model unless the user picked a start by hand."""
        self.picker.follow(default_start(self.task.value, self._channels) or SCRATCH)

    def _apply_task_preset(self) -> None:
        """Set the fields that the chosen task's preset decides."""
        from napari_unet.core.tasks import task_config

        config = task_config(self.task.value, self._n_examples)
        self.weighting.value = config.weighting
        self.patch_size.value = config.patch_size
        self.batch_size.value = config.batch_size
        self.validate.value = config.validation == "auto"

    def _on_task_changed(self, value: Any = None) -> None:
        self._task_picked = True
        self.task_info.value = "Chosen by hand."
        self._apply_task_preset()
        self._follow_start()

    def update_summary(self, event: Any = None) -> str:
        """Describe what the chosen Labels layer marks as annotated (shown in the form)."""
        labels = self.labels_layer.value
        if labels is None:
            text = "Add or choose a Labels layer with annotations."
        else:
            planes = self._planes(labels)
            shapes = regions_layer_for(self._viewer, labels)
            n_regions = len(shapes.data) if shapes is not None else 0
            parts = []
            if planes:
                parts.append(f"{len(planes)} annotated plane(s)")
            if n_regions:
                parts.append(f"{n_regions} annotated region(s)")
            text = (
                " + ".join(parts)
                if parts
                else "Nothing marked: painted planes count as fully annotated."
            )
        self.data_info.value = text
        return text

    def _show_start(self, value: Any = None) -> None:
        # a fine-tuned model keeps its architecture
        self.base_channels.enabled = self.picker.value == SCRATCH

    def _on_weighting_changed(self, value: Any = None) -> None:
        self.w0.enabled = self.sigma.enabled = self.weighting.value != "none"

    def _on_model_changed(self, model: Any = None) -> None:
        self.save_button.enabled = not self.is_running and (
            self.last_result is not None or model is not None
        )
        self.update_versions()

    # -- versions ---------------------------------------------------------------
    def update_versions(self) -> None:
        """List the store's versions (newest first), select the current one, show its scores."""
        session = get_session(self._viewer)
        versions, error = session.versions()
        current = session.version if any(v.name == session.version for v in versions) else None
        choices = [(v.describe(), v.name) for v in reversed(versions)]
        if versions and current is None:  # e.g. the model of a file: no version is current
            choices.insert(0, ("(not a version: choose one to use it)", ""))
        with self.version.changed.blocked():
            if choices != self._version_choices:
                self._version_choices = choices
                # cleared first: magicgui appends new items at the end, not in order
                self.version.choices = []
                self.version.reset_choices()
            if choices:
                self.version.value = current or ""
        running = self.is_running
        self.version.enabled = bool(versions) and not running
        self.retrain_button.enabled = current is not None and not running
        self.retrain_button.text = f"Retrain {current}" if current else "Retrain"
        self.versions_info.value = self._versions_text(versions, current, error)

    def _versions_text(
        self, versions: list[ModelVersion], current: str | None, error: str | None
    ) -> str:
        if error is not None:
            return f"The model versions cannot be read: {error}"
        if not versions:
            return "Each training run is kept as a version (v1, v2, …) to compare and go back to."
        if current is None:
            return "The current model is not one of these versions."
        version = next(v for v in versions if v.name == current)
        lines = []
        cmp = version.comparison
        if cmp is not None and version.name in cmp.scores:
            lines += [cmp.versus(version.name, other) for other in cmp.scores if other != current]
            result = self.last_result
            if (
                self.last_version is not None
                and self.last_version.name == current
                and result is not None
                and result.best_step == 0
                and version.parent in cmp.scores
            ):
                lines.append(
                    f"Training did not beat {version.parent} on validation: {current} "
                    f"keeps {version.parent}'s weights."
                )
        elif "score" in version.scores:
            lines.append(
                f"{current}: validation score {version.scores['score']:.2f} on its own "
                "held-out band."
            )
        else:
            lines.append(f"{current}: no validation scores.")
        if self.last_version is not None and self.last_version.name == current and self._last_note:
            lines.append(self._last_note[0].upper() + self._last_note[1:] + ".")
        return "\n".join(lines)

    def _on_version_selected(self, value: Any = None) -> None:
        name = self.version.value
        session = get_session(self._viewer)
        if not name or name == session.version:
            return
        try:
            self.use_version(name)
        except (ValueError, OSError) as err:
            show_error(f"Cannot switch to version {name}: {err}")
            self.update_versions()  # back to the current one

    def _on_retrain_clicked(self, value: Any = None) -> None:
        try:
            self.retrain()
        except ValueError as err:  # bad input: tell the user, keep the form
            show_error(f"Cannot retrain: {err}")

    # -- live preview ---------------------------------------------------------
    def _start_preview(self, channels: int) -> None:
        """Preview the chosen image while this job trains (if it fits the model)."""
        from napari_unet.core.tiling import as_channels_first

        image = self.image_layer.value
        self.previews_shown = 0
        self._preview_job = {}
        self.preview.set_image(None)
        self.preview.enabled = bool(self.live_preview.value)
        if image is None:
            return
        data = image.data[0] if image.multiscale else image.data
        axis = -1 if image.rgb else None
        try:
            arr, lead, has_channels = as_channels_first(data, channels, axis)
        except ValueError:  # the image does not fit the trained network: no preview
            return
        self.preview.set_image(data, axis)
        shape = (*lead, int(arr.shape[-2]), int(arr.shape[-1]))
        self._preview_job = {"image": image, "n_lead": len(lead), "shape": shape}
        self._preview_job["channels"] = has_channels
        self._view.start()

    def _update_preview_window(self) -> None:
        """Preview the part of the current plane on the canvas (none in 3D or off screen)."""
        image = self._preview_job.get("image")
        if image is None or image not in self._viewer.layers:
            self.preview.clear_window()
            return
        try:
            rows, cols = field_of_view(self._viewer, image)
        except ValueError:
            self.preview.clear_window()
            return
        index = current_index(self._viewer, image, self._preview_job["n_lead"])
        self.preview.set_window(index, rows, cols)

    def _on_live_preview_changed(self, value: Any = None) -> None:
        self.preview.enabled = bool(self.live_preview.value)

    def _show_preview(self, update: PreviewUpdate) -> None:
        """Write a preview into the image's prediction layer (created if missing)."""
        job = self._preview_job
        image = job.get("image")
        if not self.live_preview.value or image is None or image not in self._viewer.layers:
            return
        layer = prediction_layer(self._viewer, image, job["shape"], job["channels"])
        layer.data[(*update.index, *update.region)] = update.labels
        layer.refresh()
        self.previews_shown += 1

    def _on_progress(self, event: TrainProgress | PreviewUpdate | str) -> None:
        from napari_unet.core.preview import PreviewUpdate

        if isinstance(event, str):  # after training: scoring and saving the version
            self.status.value = event
            return
        if isinstance(event, PreviewUpdate):
            self._show_preview(event)
            return
        self.plot.add_loss(event.step, event.loss)
        parts = [
            f"step {event.step}",
            f"{event.fraction:.0%} of the budget",
            f"loss {event.loss:.3f}",
        ]
        if event.validation is not None:
            v = event.validation
            self.plot.add_validation(event.step, v["iou"], v["f1"])
        if event.best_score is not None:
            parts.append(f"best score {event.best_score:.2f}")
        parts.append(f"ETA {format_duration(event.eta)}")
        if not self._runner.stop_event.is_set():
            self.status.value = " · ".join(parts)
        if self.progress_bar is not None:
            # last: napari's bar processes events, so the job's end may run inside it
            self.progress_bar.update(int(event.fraction * 1000) - self.progress_bar.n)

    def _on_trained(self, outcome: TrainOutcome) -> None:
        result, version = outcome.result, outcome.version
        self.last_result, self.last_version = result, version
        self._last_note = outcome.note
        session = get_session(self._viewer)
        plan, self._job_plan = self._job_plan, None
        if version is not None and plan is not None:
            self._runs[version.name] = (plan.crops, plan.validated)
            # named as its file is: a run started from it records the version it started from
            result.model.metadata["name"] = version.name
            session.set_model(result.model, plan.store.folder / version.file, version=version.name)
            save_settings(version=version.name)
            session.versions_changed.emit()  # the pickers and the Version row list it
        else:
            session.set_model(result.model)
        reason = {
            "steps": "all steps done",
            "time": "time budget spent",
            "early": "no more improvement (early stop)",
            "stopped": "stopped",
            "diverged": "the loss became NaN: try a lower learning rate",
        }.get(result.stopped, result.stopped)
        if result.best_score is not None:
            history = {h["step"]: h for h in result.history}
            best = history.get(result.best_step, {})
            score = (
                f"best validation score {result.best_score:.2f} "
                f"(IoU {best.get('iou', 0):.2f}, F1 {best.get('f1', 0):.2f} at threshold "
                f"{result.threshold:.2f}) at step {result.best_step}"
            )
        else:
            # the run's own setting: the checkbox may have changed since it started
            wanted = result.model.metadata["training"]["config"]["validation"] == "auto"
            score = "no validation" + (
                " (no example had cells both in its held-out fifth and in the rest)"
                if wanted
                else ""
            )
        how = f"fine-tuned {self._job_start}" if self._job_start else "trained from scratch"
        summary = f"{how}, {result.steps} steps in {format_duration(result.elapsed)}"
        if version is not None:
            kept, lost = f", kept as version {version.name}", ""
            where = f"It is version {version.name} and now the current model for '4. Predict'"
        else:
            kept, lost = "", f" Not kept as a version ({outcome.note})." if outcome.note else ""
            where = "It is now the current model for '4. Predict'; use 'Save model…' to keep it"
        self.status.value = f"Done ({reason}){kept}: {summary}; {score}.{lost}"
        show_info(f"U-Net training finished ({reason}): {summary}; {score}. {where}.")

    def _on_finished(self) -> None:
        self._view.stop()
        if self.progress_bar is not None:
            self.progress_bar.close()
            self.progress_bar = None

    def _on_running(self, running: bool) -> None:
        self.save_button.enabled = not running and (
            self.last_result is not None or get_session(self._viewer).model is not None
        )
        session = get_session(self._viewer)
        self.retrain_button.enabled = not running and session.version is not None
        if not running:
            self._show_start()
            self.update_versions()
