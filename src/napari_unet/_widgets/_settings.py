"""Widget settings that persist between napari sessions, and shared form pieces.

Stored as a small JSON file next to napari's own settings file (so a napari
settings reset or a custom ``NAPARI_CONFIG`` location applies to them too).
The training autosave (:func:`autosave_path`) and the model versions
(:func:`versions_path`) live beside it; the ``"version"`` setting names the
current version, which the next napari session restores
(:meth:`napari_unet._widgets._session.Session.restore`).

The defaults of the training settings are the defaults of
:class:`~napari_unet.core.train_config.TrainConfig` (:data:`TRAIN_SETTINGS`): they
are read from it when first needed, not restated here. Only the settings that
no config holds (the tile size and the device, which the widgets pass to the
core jobs as arguments) have their defaults here (:data:`WIDGET_DEFAULTS`).

Form pieces: the "Device" box (:func:`device_box`) and the folded "Advanced"
section (:func:`advanced_section`) that keeps the expert fields out of a
microscopist's first view.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from magicgui.widgets import ComboBox, Container
    from magicgui.widgets.bases import Widget
    from superqt import QCollapsible

logger = logging.getLogger(__name__)

#: Devices offered by the widgets ("auto": cuda, then mps, then the CPU).
DEVICES = ["auto", "cpu", "cuda", "mps"]
#: Settings whose default is the :class:`~napari_unet.core.train_config.TrainConfig` field
#: of that name (``minutes``: None, no time limit, is saved as 0).
TRAIN_SETTINGS = ("w0", "sigma", "base_channels", "steps", "minutes")
#: Settings that no config holds.
WIDGET_DEFAULTS: dict[str, Any] = {
    "tile_size": 0,  # 0 = automatic (from memory): iter_segment's tile_size=None
    "device": DEVICES[0],
    "precision": "auto",  # inference arithmetic (napari_unet.core.precision.PRECISIONS)
    # the session's current model version ("v2", in versions_path()); "" = none
    "version": "",
}


@functools.cache
def defaults() -> dict[str, Any]:
    """Every setting's default: the :class:`TrainConfig` fields, then the widgets' own.

    Cached; the values are copied so callers may change them.
    """
    from napari_unet.core.train_config import TrainConfig

    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {name: fields[name] for name in TRAIN_SETTINGS}
    if values["minutes"] is None:
        values["minutes"] = 0.0
    return {**values, **WIDGET_DEFAULTS}


def __getattr__(name: str) -> Any:
    # DEFAULTS is built on first use
    if name == "DEFAULTS":
        return dict(defaults())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def settings_path() -> Path:
    """The JSON file holding napari-unet's widget settings."""
    from napari.settings import get_settings

    config = get_settings().config_path
    folder = Path(config).parent if config else Path.home() / ".config" / "napari"
    return folder / "napari-unet.json"


def autosave_path() -> Path:
    """Where training writes its best model as it goes (survives a crash)."""
    return settings_path().with_name("napari-unet-autosave.pt")


def versions_path() -> Path:
    """The folder of the model versions that training runs make: beside the autosave.

    See :func:`napari_unet.core.versions.versions_folder`; the current version's
    name is the ``"version"`` setting.
    """
    from napari_unet.core.versions import versions_folder

    return versions_folder(autosave_path())


def load_settings() -> dict[str, Any]:
    """All settings: saved values over :func:`defaults` (bad files are ignored)."""
    values = dict(defaults())
    path = settings_path()
    try:
        saved = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as err:
        logger.warning("ignoring unreadable napari-unet settings %s: %s", path, err)
        saved = {}
    if isinstance(saved, dict):
        values.update({k: v for k, v in saved.items() if k in values})
    return values


def get_setting(key: str) -> Any:
    """One setting's value."""
    return load_settings()[key]


def save_settings(**values: Any) -> None:
    """Update settings (unknown keys are refused)."""
    unknown = set(values) - set(defaults())
    if unknown:
        raise KeyError(f"unknown napari-unet settings: {sorted(unknown)}")
    current = load_settings()
    current.update(values)
    path = settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(current, indent=2))
        tmp.replace(path)
    except OSError as err:
        logger.warning("could not save napari-unet settings to %s: %s", path, err)


def device_box(value: Any = None, **options: Any) -> ComboBox:
    """The "Device" combo box, showing ``value`` (e.g. a saved setting) when it is offered.

    Parameters
    ----------
    value : str, optional
        Initial device; anything not in :data:`DEVICES` shows ``"auto"``.
    **options
        More ComboBox options (``tooltip``, ``label``).
    """
    from magicgui.widgets import ComboBox

    options.setdefault("label", "Device")
    return ComboBox(choices=DEVICES, value=value if value in DEVICES else DEVICES[0], **options)


def advanced_section(
    form: Container, widgets: Sequence[Widget], *, before: Widget, title: str = "Advanced"
) -> tuple[Container, QCollapsible]:
    """Fold ``widgets`` into a collapsed section of ``form``, placed just above ``before``.

    The widgets go into a labelled magicgui Container inside a superqt
    ``QCollapsible`` (collapsed: click its title to unfold it). They keep their
    values, signals and ``visible`` flags; only the section's height hides them.
    Call it once the form is complete (it inserts into the form's Qt layout).

    Parameters
    ----------
    form : Container
        The widget's form, already holding ``before``.
    widgets : sequence of magicgui widgets
        Fields not in ``form`` (no layer choices: the section's choices are not
        reset with the form's).
    before : magicgui widget
        The form's widget the section goes above.
    title : str
        Text of the section's toggle.

    Returns
    -------
    inner : Container
        The container of the folded widgets.
    section : QCollapsible
        The section (``expand()``, ``collapse()``, ``isExpanded()``).
    """
    from magicgui.widgets import Container
    from superqt import QCollapsible

    inner = Container(widgets=list(widgets), labels=True)
    inner.margins = (0, 0, 0, 0)
    section = QCollapsible(title, expandedIcon="▾", collapsedIcon="▸")
    section.addWidget(inner.native)
    wrapper = getattr(before, "_labeled_widget_ref", None)
    anchor = wrapper().native if wrapper is not None and wrapper() is not None else before.native
    layout = form.native.layout()
    layout.insertWidget(layout.indexOf(anchor), section)
    return inner, section
