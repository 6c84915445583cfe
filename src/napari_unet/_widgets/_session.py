"""Per-viewer state shared by the napari-unet widgets.

Kept in a ``WeakKeyDictionary`` keyed by the viewer (napari's advice for widget
communication), so each viewer has its own session and closing it frees it.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psygnal import Signal

if TYPE_CHECKING:
    import napari

    from napari_unet.core.model import UNet

#: Key of napari-unet's entries in a Labels layer's ``metadata``.
METADATA_KEY = "napari_unet"


class Session:
    """The current model of a viewer and the signal that announces changes.

    Attributes
    ----------
    model : UNet or None
        The model last trained or loaded in this viewer.
    model_path : Path or None
        Where that model is saved, if it is.
    """

    model_changed = Signal(object)

    def __init__(self) -> None:
        self.model: UNet | None = None
        self.model_path: Path | None = None

    def set_model(self, model: UNet | None, path: str | Path | None = None) -> None:
        """Make ``model`` the current model and emit ``model_changed``."""
        self.model = model
        self.model_path = Path(path) if path is not None else None
        self.model_changed.emit(model)


_SESSIONS: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


def get_session(viewer: napari.viewer.Viewer) -> Session:
    """Return the session of ``viewer`` (created on first use).

    Widgets opened from the plugin menu get a proxy of the viewer; the session
    is keyed by the viewer itself, so all widgets of a viewer share it.
    """
    viewer = getattr(viewer, "__wrapped__", viewer)
    session = _SESSIONS.get(viewer)
    if session is None:
        session = _SESSIONS[viewer] = Session()
    return session


def annotation_info(layer: Any) -> dict[str, Any]:
    """napari-unet's annotation entries in a Labels layer's metadata (created if missing).

    Keys: ``"planes"`` (list of fully annotated plane indices) and ``"image"``
    (name of the Image layer the labels annotate).
    """
    info = layer.metadata.setdefault(METADATA_KEY, {})
    info.setdefault("planes", [])
    return info
