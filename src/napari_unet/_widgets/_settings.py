"""Widget settings that persist between napari sessions.

Stored as a small JSON file next to napari's own settings file (so a napari
settings reset or a custom ``NAPARI_CONFIG`` location applies to them too).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "w0": 10.0,
    "sigma": 5.0,
    "tile_size": 0,  # 0 = automatic
    "device": "auto",
    "base_channels": 16,
    "steps": 10_000,  # a cap: the time budget ends training (TrainConfig)
    "minutes": 5.0,
}


def settings_path() -> Path:
    """The JSON file holding napari-unet's widget settings."""
    from napari.settings import get_settings

    config = get_settings().config_path
    folder = Path(config).parent if config else Path.home() / ".config" / "napari"
    return folder / "napari-unet.json"


def autosave_path() -> Path:
    """Where training writes its best model as it goes (survives a crash)."""
    return settings_path().with_name("napari-unet-autosave.pt")


def load_settings() -> dict[str, Any]:
    """All settings: saved values over :data:`DEFAULTS` (bad files are ignored)."""
    values = dict(DEFAULTS)
    path = settings_path()
    try:
        saved = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as err:
        logger.warning("ignoring unreadable napari-unet settings %s: %s", path, err)
        saved = {}
    if isinstance(saved, dict):
        values.update({k: v for k, v in saved.items() if k in DEFAULTS})
    return values


def get_setting(key: str) -> Any:
    """One setting's value."""
    return load_settings()[key]


def save_settings(**values: Any) -> None:
    """Update settings (unknown keys are refused)."""
    unknown = set(values) - set(DEFAULTS)
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
