"""The widgets' defaults come from the frozen configs (TrainConfig, SegmentConfig)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_settings_defaults_are_the_train_config_defaults():
    from napari_unet._widgets import _settings
    from napari_unet.core.training import TrainConfig

    config = TrainConfig()
    defaults = _settings.DEFAULTS
    for name in _settings.TRAIN_SETTINGS:
        expected = getattr(config, name)
        assert defaults[name] == (0.0 if expected is None else expected), name
    assert defaults["tile_size"] == 0 and defaults["device"] == "auto"
    assert _settings.load_settings() == defaults  # nothing saved yet
    defaults["steps"] = -1  # a copy: the defaults stay
    assert _settings.DEFAULTS["steps"] == config.steps


def test_saved_settings_override_and_unknown_keys_are_refused():
    from napari_unet._widgets._settings import get_setting, load_settings, save_settings

    save_settings(steps=12, device="cpu")
    assert get_setting("steps") == 12 and load_settings()["device"] == "cpu"
    with pytest.raises(KeyError, match="unknown"):
        save_settings(patch_size=64)


def test_train_fields_start_at_the_train_config_defaults(make_napari_viewer):
    from napari_unet.core.training import TrainConfig, validation_interval

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-paper", "3. Train")
    config = TrainConfig()
    assert widget.task.value == config.task
    assert widget.steps.value == config.steps and widget.minutes.value == config.minutes
    assert widget.patch_size.value == config.patch_size
    assert widget.batch_size.value == config.batch_size
    assert widget.learning_rate.value == 0.0 and config.learning_rate is None  # auto
    assert widget.weighting.value == config.weighting
    assert widget.w0.value == config.w0 and widget.sigma.value == config.sigma
    assert widget.base_channels.value == config.base_channels
    assert widget.validate.value == (config.validation == "auto")
    assert widget.scale_augment.value == (config.scales != (1.0,))
    # the form's config is the default one, with the one validation interval rule
    expected = dataclasses.replace(config, validate_every=validation_interval(config.steps))
    assert widget._config() == expected

    for steps, every in [(6, 5), (3, 3), (400, 20), (10_000, 100), (50_000, 100)]:
        widget.steps.value = steps
        assert widget._config().validate_every == every == validation_interval(steps)


def test_predict_fields_start_at_the_segment_config_defaults(make_napari_viewer):
    from napari_unet.core.segment_config import SegmentConfig

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-paper", "4. Predict")
    config = SegmentConfig()
    assert widget.min_size.value == config.min_size and widget.split.value == config.split
    assert widget.expand.value == config.expand and widget.regions.value == config.regions
    assert widget.tta.value == config.tta
    assert widget.diameter.value == 0.0 and config.diameter is None  # as trained
    assert widget.tile_size.value == 0 and widget.device.value == "auto"


def test_device_box_shows_only_offered_devices():
    from napari_unet._widgets._settings import DEVICES, device_box

    assert device_box("cpu").value == "cpu"
    box = device_box("tpu", tooltip="where to run")
    assert box.value == "auto" and list(box.choices) == DEVICES and box.label == "Device"


# -- the current model version, restored with the next napari session ---------------


def small_store(n=2):
    import torch

    from napari_unet._widgets._settings import versions_path
    from napari_unet.core.model import UNet
    from napari_unet.core.versions import VersionStore

    store = VersionStore(versions_path())
    for i in range(n):
        torch.manual_seed(i)
        store.add(UNet(base_channels=4).eval(), parent=f"v{i}" if i else "scratch")
    return store


def test_the_current_version_comes_back_in_the_next_session(make_napari_viewer):
    from napari_unet._widgets._session import get_session
    from napari_unet._widgets._settings import autosave_path, save_settings, versions_path

    assert versions_path() == autosave_path().with_name("napari-unet-autosave-versions")
    store = small_store()
    save_settings(version="v1")  # what the last session chose
    viewer = make_napari_viewer()
    _, predict = viewer.window.add_plugin_dock_widget("napari-unet-paper", "4. Predict")
    session = get_session(viewer)
    assert session.version == "v1" and session.model_path == store.path("v1")
    expected = store.load("v1").state_dict()
    for key, value in session.model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), expected[key].numpy())
    assert predict.model_source.value == "current" and predict.model is session.model
    _, train = viewer.window.add_plugin_dock_widget("napari-unet-paper", "3. Train")
    assert train.version.choices == ("v2", "v1") and train.version.value == "v1"
    assert train.retrain_button.enabled and train.retrain_button.text == "Retrain v1"


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_broken_version_store_is_a_notification_not_a_crash(make_napari_viewer, damage):
    import shutil

    from napari.utils.notifications import notification_manager

    from napari_unet._widgets._session import get_session
    from napari_unet._widgets._settings import load_settings, save_settings

    store = small_store(1)
    save_settings(version="v1")
    if damage == "corrupt":
        store.index_path.write_text('{"format": "napari-unet/versions", "versio')
    else:
        shutil.rmtree(store.folder)
    before = len(notification_manager.records)
    viewer = make_napari_viewer()
    _, train = viewer.window.add_plugin_dock_widget("napari-unet-paper", "3. Train")
    messages = [str(n.message) for n in notification_manager.records[before:]]
    expected = "corrupt" if damage == "corrupt" else "no model version 'v1'"
    assert any("could not restore the model version 'v1'" in m and expected in m for m in messages)
    session = get_session(viewer)
    assert session.model is None and session.version is None
    assert load_settings()["version"] == ""  # not tried again in the next session
    assert train.version.choices == () and not train.retrain_button.enabled
    if damage == "corrupt":
        assert "cannot be read" in train.versions_info.value
