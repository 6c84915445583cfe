"""One model picker for the widgets: bundled, the session's, a version, a file, or none.

The Predict widget's "Model" and the Train widget's "Start from" are the same
choice: a model bundled with napari-unet (:mod:`napari_unet.core.pretrained`),
the viewer session's current model (:mod:`napari_unet._widgets._session`), one
of the model versions that training runs made (``"version:v2"``, newest first,
listed after the current model; the list follows the store), a model file
(chosen in a ``FileEdit``), or, for training, a new network (``"scratch"``).
:class:`ModelPicker` builds the two fields, loads every source through the
same safe loader (:func:`~napari_unet.core.checkpoint.load_model`,
which bundled models use too), caches what it loaded (a file again when it
changed on disk) and remembers whether the user chose by hand, so that the
widget's default (the session's model, the task's bundled model) only applies
until then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, FileEdit
from psygnal import Signal

from napari_unet._widgets._session import get_session
from napari_unet.core.pretrained import SCRATCH, pretrained_models

if TYPE_CHECKING:
    import napari

    from napari_unet.core.model import UNet
    from napari_unet.core.versions import ModelVersion

#: Model sources other than a bundled model's name.
CURRENT, FILE = "current", "file"
#: Stand-in for "every bundled model, in :func:`pretrained_models` order" in an order.
BUNDLED = "bundled"
#: Stand-in for "the session's model versions, newest first" in an order; without it
#: they follow ``"current"`` (else they go before ``"file"``, else last).
VERSIONS = "versions"
#: A version's source value is this prefix and its name: ``"version:v2"``.
VERSION_PREFIX = "version:"


def version_source(name: str) -> str:
    """The picker value of model version ``name``.

    Examples
    --------
    >>> version_source("v2")
    'version:v2'
    """
    return f"{VERSION_PREFIX}{name}"


def source_version(source: str) -> str | None:
    """The version name of a picker value (None if it is not a version).

    Examples
    --------
    >>> source_version("version:v2"), source_version("nuclei")
    ('v2', None)
    """
    return source[len(VERSION_PREFIX) :] if source.startswith(VERSION_PREFIX) else None


#: How each source is shown (a bundled model: ``"<name> (bundled model)"``).
TEXTS = {CURRENT: "current model", FILE: "model file", SCRATCH: "scratch (new network)"}


def _with_versions(order: Sequence[str]) -> list[str]:
    """``order`` with :data:`VERSIONS` placed (after current, else before file, else last)."""
    order = list(order)
    if VERSIONS not in order:
        if CURRENT in order:
            order.insert(order.index(CURRENT) + 1, VERSIONS)
        elif FILE in order:
            order.insert(order.index(FILE), VERSIONS)
        else:
            order.append(VERSIONS)
    return order


def model_choices(
    order: Sequence[str],
    texts: Mapping[str, str] | None = None,
    versions: Sequence[ModelVersion] = (),
) -> list[tuple[str, str]]:
    """``(text shown, value)`` choices of a model picker, in ``order``.

    Parameters
    ----------
    order : sequence of str
        ``"bundled"`` (all bundled models), ``"scratch"``, ``"current"``,
        ``"versions"``, ``"file"``.
    texts : mapping, optional
        Texts replacing the defaults of :data:`TEXTS`.
    versions : sequence of ModelVersion
        Model versions to offer (shown as :meth:`ModelVersion.describe`, in
        the order given), where ``order`` has ``"versions"`` or else after
        ``"current"`` (before ``"file"``, or last).

    Examples
    --------
    >>> model_choices(["current", "bundled", "file"])
    [('current model', 'current'), ('nuclei (bundled model)', 'nuclei'), ('model file', 'file')]
    """
    shown = {**TEXTS, **(texts or {})}
    choices: list[tuple[str, str]] = []
    for source in _with_versions(order) if versions else order:
        if source == BUNDLED:
            choices += [(f"{name} (bundled model)", name) for name in pretrained_models()]
        elif source == VERSIONS:
            choices += [(v.describe(), version_source(v.name)) for v in versions]
        else:
            choices.append((shown[source], source))
    return choices


class ModelPicker:
    """Choose a model: bundled, the session's current one, a file (or scratch).

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Whose session's model ``"current"`` is.
    order : sequence of str
        Sources offered, see :func:`model_choices`; the session's model
        versions join them (after ``"current"``) and follow its store.
    value : str
        The initial (default) source.
    label, tooltip : str
        Of the source combo box.
    texts : mapping, optional
        Texts of the sources (see :data:`TEXTS`).
    no_current, no_file : str
        Messages of the ValueError that :meth:`load` raises when there is no
        current model or no file chosen.

    Attributes
    ----------
    source : ComboBox
        The choice (a bundled model's name, ``"current"``, a version
        ``"version:v2"``, ``"file"``, ``"scratch"``).
    file : FileEdit
        The model file; shown only when the source is ``"file"``.
    picked : bool
        The user chose the source by hand: :meth:`follow` leaves it alone.
    changed : Signal
        Emitted (with the source) when the source, the file or the session's
        model changed.
    """

    changed = Signal(object)

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        *,
        order: Sequence[str],
        value: str,
        label: str = "Model",
        tooltip: str = "",
        texts: Mapping[str, str] | None = None,
        no_current: str = "there is no current model",
        no_file: str = "choose a model file",
    ) -> None:
        self._viewer = viewer
        self._order = list(order)
        self._texts = dict(texts or {})
        self._bundled: dict[str, UNet] = {}
        self._file_model: UNet | None = None
        self._file_key: tuple[str, int, int] | None = None
        self.no_current = no_current
        self.no_file = no_file
        self.picked = False
        session = get_session(viewer)
        self._choices = model_choices(order, texts, session.versions()[0][::-1])
        # a callable: the form's reset_choices (napari calls it as layers change) keeps them
        self.source = ComboBox(
            choices=self._current_choices, value=value, label=label, tooltip=tooltip
        )
        self.file = FileEdit(
            mode="r",
            filter="napari-unet or bioimage.io model (*.pt *.zip)",
            nullable=True,
            label="Model file",
            tooltip="A napari-unet model file (.pt) or a bioimage.io package (.zip) "
            "exported by napari-unet",
        )
        self.source.changed.connect(self._on_source_changed)
        self.file.changed.connect(self._on_file_changed)
        session.model_changed.connect(self._on_session_model)
        session.versions_changed.connect(self.update_versions)

    # -- public API -------------------------------------------------------
    @property
    def widgets(self) -> list[Any]:
        """The fields to put in a form: the source and the file."""
        return [self.source, self.file]

    @property
    def value(self) -> str:
        """The chosen source."""
        return str(self.source.value)

    @property
    def model(self) -> UNet | None:
        """The chosen model as loaded now, without raising for a missing one.

        None for ``"scratch"``, for ``"current"`` without a session model, and
        for a file not chosen or that did not load. A file is the one last
        loaded (:meth:`load` loads it again if it changed on disk since).
        """
        source = self.value
        if source == SCRATCH:
            return None
        if source == CURRENT:
            return get_session(self._viewer).model
        if source == FILE:
            return self._file_model
        version = source_version(source)
        if version is not None:
            try:
                return get_session(self._viewer).load_version(version)
            except (ValueError, OSError):  # reported by load()
                return None
        return self._load_bundled(source)

    def load(self) -> UNet | None:
        """The chosen model, loaded (again if its file changed); None for ``"scratch"``.

        Raises
        ------
        ValueError
            No current model or no file chosen (the messages given), the
            file is not a usable model (``ModelFileError``, a ValueError), or
            the version is gone (``VersionError``, a ValueError).
        """
        source = self.value
        if source == SCRATCH:
            return None
        if source == CURRENT:
            model = get_session(self._viewer).model
            if model is None:
                raise ValueError(self.no_current)
            return model
        if source == FILE:
            return self._load_file()
        version = source_version(source)
        if version is not None:
            return get_session(self._viewer).load_version(version)
        return self._load_bundled(source)

    def description(self) -> str | None:
        """The chosen model as messages name it (``"the bundled nuclei model"``); None: scratch."""
        source = self.value
        if source == SCRATCH:
            return None
        if source == CURRENT:
            return "the current model"
        if source == FILE:
            return Path(self.file.value).name if self.file.value is not None else "a model file"
        version = source_version(source)
        if version is not None:
            return f"version {version}"
        return f"the bundled {source} model"

    def origin(self) -> str:
        """What a model trained from the chosen one started from, for its version record.

        ``"scratch"``, a bundled model's name, a version's name, or a model
        file's path; for ``"current"``, the current model's version (or file,
        or ``"current model"`` if it is neither).
        """
        source = self.value
        if source == CURRENT:
            session = get_session(self._viewer)
            if session.version is not None:
                return session.version
            return str(session.model_path) if session.model_path else "current model"
        if source == FILE:
            return str(self.file.value) if self.file.value is not None else FILE
        return source_version(source) or source

    def follow(self, value: str) -> None:
        """Show ``value`` (a default) unless the user chose a source by hand."""
        if not self.picked and value != self.value:
            with self.source.changed.blocked():
                self.source.value = value
            self.refresh()
            self.changed.emit(self.value)

    def refresh(self) -> None:
        """Show the file field only for the ``"file"`` source."""
        self.file.visible = self.value == FILE

    def update_versions(self) -> None:
        """List the session's versions as they are in the store now (newest first).

        The choice is kept; if it was a version that is gone, the picker shows
        ``"current"`` (or its first source) and emits ``changed``.
        """
        versions, _ = get_session(self._viewer).versions()
        choices = model_choices(self._order, self._texts, versions[::-1])
        if choices == self._choices:
            return
        value = self.value
        values = [v for _, v in choices]
        kept = value in values
        self._choices = choices
        with self.source.changed.blocked():
            # cleared first: magicgui appends new items at the end, not in order
            self.source.choices = []
            self.source.reset_choices()
            self.source.value = value if kept else CURRENT if CURRENT in values else values[0]
        if not kept:
            self.refresh()
            self.changed.emit(self.value)

    # -- internals --------------------------------------------------------
    def _current_choices(self, widget: Any = None) -> list[tuple[str, str]]:
        return self._choices

    def _key(self) -> tuple[str, int, int] | None:
        path = self.file.value
        if path is None:
            return None
        try:
            stat = Path(path).stat()
        except OSError:
            return (str(path), -1, -1)
        return (str(path), stat.st_mtime_ns, stat.st_size)

    def _load_file(self) -> UNet:
        from napari_unet.core.checkpoint import load_model

        if self.file.value is None:
            raise ValueError(self.no_file)
        key = self._key()
        if self._file_model is None or key != self._file_key:
            self._file_model, self._file_key = None, None
            self._file_model = load_model(self.file.value)
            self._file_key = key
        return self._file_model

    def _load_bundled(self, name: str) -> UNet:
        if name not in self._bundled:
            from napari_unet.core.pretrained import load_pretrained

            self._bundled[name] = load_pretrained(name)
        return self._bundled[name]

    def _on_source_changed(self, value: Any = None) -> None:
        self.picked = True
        self.refresh()
        self.changed.emit(self.value)

    def _on_file_changed(self, value: Any = None) -> None:
        from napari_unet.core.checkpoint import ModelFileError

        self._file_model, self._file_key = None, None
        if self.file.value is not None:
            try:
                self._load_file()
            except ModelFileError as err:
                from napari.utils.notifications import show_error

                show_error(f"Cannot load the model: {err}")
        self.changed.emit(self.value)

    def _on_session_model(self, model: Any = None) -> None:
        self.changed.emit(self.value)
