"""Widget tests: napari under Xvfb, settings redirected to a temporary folder."""

from __future__ import annotations

import pytest

pytest.importorskip("qtpy", reason="widget tests need a Qt binding")


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    from napari_unet._widgets import _settings

    path = tmp_path / "napari-unet-settings.json"
    monkeypatch.setattr(_settings, "settings_path", lambda: path)
    return path
