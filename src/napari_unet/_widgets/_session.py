"""Per-viewer state shared by the napari-unet widgets.

Kept in a ``WeakKeyDictionary`` keyed by the viewer (napari's advice for widget
communication), so each viewer has its own session and closing it frees it.

A session holds the current model and, when that model is one of the model
versions that training runs make (:mod:`napari_unet.core.versions`), its
version name. The versions live in one store beside the training autosave
(:func:`~napari_unet._widgets._settings.versions_path`); the current version's
name is saved in the settings, so the next napari session restores it the
first time a widget asks for the model (:meth:`Session.restore`).
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psygnal import Signal

if TYPE_CHECKING:
    import napari

    from napari_unet.core.model import UNet
    from napari_unet.core.versions import ModelVersion, VersionStore

logger = logging.getLogger(__name__)

#: Key of napari-unet's entries in a Labels layer's ``metadata``.
METADATA_KEY = "napari_unet"
#: Loaded version models kept in memory by a session (the most recently used).
CACHED_VERSIONS = 4


class Session:
    """The current model of a viewer, its model versions, and the signals that announce changes.

    Parameters
    ----------
    store : VersionStore, optional
        Where the versions are (default: :func:`~napari_unet._widgets._settings.versions_path`,
        looked up on every use).
    restore : str, optional
        A version to make the current model the first time the model is asked
        for (the one saved in the settings by the last napari session).

    Attributes
    ----------
    model : UNet or None
        The model last trained, chosen or restored in this viewer.
    model_path : Path or None
        Where that model is saved, if it is.
    version : str or None
        The model's version name in :attr:`store` (None: not a version).
    model_changed : Signal
        Emitted (with the model) when the current model changed.
    versions_changed : Signal
        Emitted when a version was added to the store.
    """

    model_changed = Signal(object)
    versions_changed = Signal()

    def __init__(self, store: VersionStore | None = None, *, restore: str | None = None) -> None:
        self._model: UNet | None = None
        self.model_path: Path | None = None
        self.version: str | None = None
        self._store = store
        self._restore = restore or None
        self._loaded: OrderedDict[tuple[str, str, int, int], UNet] = OrderedDict()

    @property
    def model(self) -> UNet | None:
        """The current model (the version to restore is loaded on first use)."""
        self.restore()
        return self._model

    @property
    def store(self) -> VersionStore:
        """The model versions' store."""
        if self._store is not None:
            return self._store
        from napari_unet._widgets._settings import versions_path
        from napari_unet.core.versions import VersionStore

        return VersionStore(versions_path())

    def set_model(
        self, model: UNet | None, path: str | Path | None = None, *, version: str | None = None
    ) -> None:
        """Make ``model`` the current model and emit ``model_changed``.

        Parameters
        ----------
        model : UNet or None
        path : path-like, optional
            Where it is saved.
        version : str, optional
            Its version name in :attr:`store`, if it is a version.
        """
        self._restore = None  # a model set now wins over the one of the last session
        self._model = model
        self.model_path = Path(path) if path is not None else None
        self.version = version
        self.model_changed.emit(model)

    def versions(self) -> tuple[list[ModelVersion], str | None]:
        """The store's versions (oldest first) and, if it cannot be read, why (else None)."""
        from napari_unet.core.versions import VersionError

        store = self.store
        try:
            return store.list(), None
        except VersionError as err:
            logger.debug("cannot read the model versions in %s: %s", store.folder, err)
            return [], str(err)

    def load_version(self, name: str) -> UNet:
        """Version ``name`` of the store, loaded once (again if its file changed).

        Raises
        ------
        VersionError
            If the store's index cannot be read or holds no such version.
        ModelFileError
            If its model file is missing or corrupt.
        """
        from napari_unet.core.checkpoint import load_model

        path = self.store.path(name)
        try:
            stat = path.stat()
            key = (name, str(path), stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = (name, str(path), -1, -1)
        model = self._loaded.get(key)
        if model is None:
            model = load_model(path)
            self._loaded[key] = model
            while len(self._loaded) > CACHED_VERSIONS:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(key)
        return model

    def use_version(self, name: str) -> UNet:
        """Make version ``name`` the current model (and the one the next session restores).

        Returns
        -------
        model : UNet

        Raises
        ------
        VersionError, ModelFileError
            As :meth:`load_version` (the current model is kept then).
        """
        from napari_unet._widgets._settings import save_settings

        model = self.load_version(name)
        self.set_model(model, self.store.path(name), version=name)
        save_settings(version=name)
        return model

    def restore(self) -> bool:
        """Make the version saved by the last napari session the current model, once.

        Nothing happens after a model was set, or on the second call. A version
        that cannot be loaded (the store is missing or corrupt, the file is
        gone) is reported in a warning notification and forgotten.

        Returns
        -------
        bool
            True if a version was restored by this call.
        """
        name, self._restore = self._restore, None
        if not name:
            return False
        try:
            model = self.load_version(name)
            path = self.store.path(name)
        except (ValueError, OSError) as err:  # VersionError and ModelFileError are ValueErrors
            from napari.utils.notifications import show_warning

            from napari_unet._widgets._settings import save_settings

            save_settings(version="")
            show_warning(
                f"napari-unet could not restore the model version {name!r} of the last "
                f"session: {err}. There is no current model: train one in '3. Train' or "
                "pick a model in '4. Predict'."
            )
            return False
        self._model, self.model_path, self.version = model, path, name
        self.model_changed.emit(model)
        return True


_SESSIONS: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


def _saved_version() -> str | None:
    from napari_unet._widgets._settings import get_setting

    name = get_setting("version")
    return name if isinstance(name, str) and name else None


def get_session(viewer: napari.viewer.Viewer) -> Session:
    """Return the session of ``viewer`` (created on first use).

    Widgets opened from the plugin menu get a proxy of the viewer; the session
    is keyed by the viewer itself, so all widgets of a viewer share it. A new
    session restores the current model version saved in the settings when its
    model is first asked for.
    """
    viewer = getattr(viewer, "__wrapped__", viewer)
    session = _SESSIONS.get(viewer)
    if session is None:
        session = _SESSIONS[viewer] = Session(restore=_saved_version())
    return session


def annotation_info(layer: Any) -> dict[str, Any]:
    """napari-unet's annotation entries in a Labels layer's metadata (created if missing).

    Keys: ``"planes"`` (list of fully annotated plane indices) and ``"image"``
    (name of the Image layer the labels annotate).
    """
    info = layer.metadata.setdefault(METADATA_KEY, {})
    info.setdefault("planes", [])
    return info
