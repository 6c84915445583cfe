"""The shared model picker: bundled, session ("current"), file and scratch sources."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet._widgets._session import get_session

pytestmark = pytest.mark.gui


class FakeViewer:
    """Stands for a viewer: the picker only needs its session."""


def small_unet(base_channels=4, seed=0):
    import torch

    from napari_unet.core.model import UNet

    torch.manual_seed(seed)
    return UNet(base_channels=base_channels).eval()


@pytest.fixture
def make_picker(qtbot):
    from magicgui.widgets import Container

    from napari_unet._widgets._model_picker import ModelPicker

    def make(**options):
        viewer = FakeViewer()
        options = {
            "order": ["current", "bundled", "scratch", "file"],
            "value": "scratch",
        } | options
        picker = ModelPicker(viewer, no_current="no current model here", **options)
        form = Container(widgets=picker.widgets)  # a parent, as in the widgets' forms
        qtbot.addWidget(form.native)
        picker.refresh()
        return viewer, picker

    return make


def test_choices_follow_the_order_and_texts():
    from napari_unet._widgets._model_picker import model_choices
    from napari_unet.core.pretrained import pretrained_models

    bundled = [(f"{name} (bundled model)", name) for name in pretrained_models()]
    assert model_choices(["bundled", "scratch", "current", "file"]) == [
        *bundled,
        ("scratch (new network)", "scratch"),
        ("current model", "current"),
        ("model file", "file"),
    ]
    assert model_choices(["current", "file"], {"current": "current model (session)"}) == [
        ("current model (session)", "current"),
        ("model file", "file"),
    ]


def test_bundled_model_loads_with_the_safe_loader_once(make_picker):
    from napari_unet.core.pretrained import load_pretrained

    _, picker = make_picker(value="nuclei")
    model = picker.load()
    assert model is not None and model.config == load_pretrained("nuclei").config
    assert picker.model is model and picker.load() is model  # loaded once
    assert picker.description() == "the bundled nuclei model"
    assert picker.file.native.isHidden()


def test_current_is_the_session_model(make_picker):
    viewer, picker = make_picker(value="current")
    changes = []
    picker.changed.connect(changes.append)
    assert picker.model is None
    with pytest.raises(ValueError, match="no current model here"):
        picker.load()
    model = small_unet()
    get_session(viewer).set_model(model)
    assert changes == ["current"]  # the session's model changed: so did the choice's
    assert picker.model is model and picker.load() is model
    assert picker.description() == "the current model"


def test_file_source_loads_reports_and_reloads(make_picker, tmp_path):
    from napari.utils.notifications import notification_manager

    from napari_unet.core.checkpoint import ModelFileError, save_model

    _, picker = make_picker()
    assert picker.load() is None and picker.description() is None  # scratch
    picker.source.value = "file"
    assert picker.picked and not picker.file.native.isHidden()
    with pytest.raises(ValueError, match="choose a model file"):
        picker.load()

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    before = len(notification_manager.records)
    picker.file.value = bad
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("Cannot load the model" in m and "bad.pt" in m for m in messages)
    assert picker.model is None
    with pytest.raises(ModelFileError):
        picker.load()

    path = save_model(tmp_path / "model.pt", small_unet(4))
    picker.file.value = path
    first = picker.model
    assert first is not None and first.config.base_channels == 4
    assert picker.load() is first and picker.description() == "model.pt"
    save_model(path, small_unet(8))  # e.g. saved again after training
    assert picker.model is first  # the one loaded, until the next load
    second = picker.load()
    assert second is not first and second.config.base_channels == 8
    assert picker.model is second


def test_file_source_opens_a_bioimageio_package_we_exported(make_picker, tmp_path):
    pytest.importorskip("bioimageio.spec")
    import zipfile

    from napari_unet.core.bioimageio import export_bioimageio

    model = small_unet(2)
    path = export_bioimageio(model, tmp_path / "model.zip")
    _, picker = make_picker(value="file")
    assert "*.zip" in picker.file.filter
    picker.file.value = path
    loaded = picker.load()
    assert loaded.config == model.config
    for name, value in model.state_dict().items():
        assert (loaded.state_dict()[name] == value).all(), name

    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\nformat_version: 0.5.12\n")
    picker.file.value = foreign
    with pytest.raises(ValueError, match="not a valid bioimage"):
        picker.load()


def test_defaults_apply_until_the_user_picks(make_picker):
    _, picker = make_picker(value="scratch")
    changes = []
    picker.changed.connect(changes.append)
    picker.follow("nuclei")
    assert picker.value == "nuclei" and not picker.picked and changes == ["nuclei"]
    picker.follow("nuclei")  # no change, no signal
    assert changes == ["nuclei"]
    picker.source.value = "current"  # by hand
    assert picker.picked and changes == ["nuclei", "current"]
    picker.follow("scratch")
    assert picker.value == "current"


def test_predict_and_train_use_the_picker(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    _, predict = viewer.window.add_plugin_dock_widget("napari-unet-paper", "4. Predict")
    _, train = viewer.window.add_plugin_dock_widget("napari-unet-paper", "3. Train")
    assert predict.model_source is predict.picker.source
    assert predict.model_file is predict.picker.file
    assert train.start_from is train.picker.source and train.model_file is train.picker.file
    model = small_unet()
    get_session(viewer).set_model(model)
    train.start_from.value = "current"
    assert predict.model is model and train.picker.load() is model

    # the session's versions: Predict picks any of them, Train starts from any of them
    store = add_versions(get_session(viewer))
    assert {"version:v1", "version:v2"} <= set(predict.model_source.choices)
    assert {"version:v1", "version:v2"} <= set(train.start_from.choices)
    predict.model_source.value = "version:v1"
    assert same_weights(predict.model, store.load("v1"))
    assert "4 base channels" in predict.model_info.value
    train.start_from.value = "version:v2"
    assert same_weights(train.picker.load(), store.load("v2"))
    assert get_session(viewer).model is model  # still the current one


def add_versions(session, n=2):
    """``n`` versions in the session's store (v2 fine-tuned from v1, ...)."""
    store = session.store
    for i in range(n):
        store.add(small_unet(seed=i), parent=f"v{i}" if i else "scratch")
    session.versions_changed.emit()  # as the Train widget does after a run
    return store


def same_weights(a, b):
    return all(
        np.array_equal(a.state_dict()[k].numpy(), v.numpy()) for k, v in b.state_dict().items()
    )


def test_version_choices_follow_current_or_go_before_file():
    from napari_unet._widgets._model_picker import model_choices
    from napari_unet.core.versions import ModelVersion

    versions = [
        ModelVersion(f"v{i}", "2026-11-20T10:00:00+01:00", "scratch", (), None) for i in (2, 1)
    ]
    texts = [v.describe() for v in versions]
    assert model_choices(["bundled", "current", "file"], versions=versions) == [
        ("nuclei (bundled model)", "nuclei"),
        ("current model", "current"),
        (texts[0], "version:v2"),
        (texts[1], "version:v1"),
        ("model file", "file"),
    ]
    assert [v for _, v in model_choices(["scratch", "file"], versions=versions)] == [
        "scratch",
        "version:v2",
        "version:v1",
        "file",
    ]
    assert [v for _, v in model_choices(["versions", "scratch"], versions=versions[:1])] == [
        "version:v2",
        "scratch",
    ]


def test_versions_are_listed_newest_first_and_load(make_picker):
    import shutil

    viewer, picker = make_picker(value="current")
    session = get_session(viewer)
    assert not [s for s in picker.source.choices if s.startswith("version:")]
    changes = []
    picker.changed.connect(changes.append)
    store = add_versions(session)
    assert picker.source.choices == (
        "current",
        "version:v2",
        "version:v1",
        "nuclei",
        "scratch",
        "file",
    )
    assert picker.source.native.itemText(1) == store.get("v2").describe()
    assert picker.value == "current" and not picker.picked and changes == []  # choice kept
    picker.source.value = "version:v1"
    model = picker.load()
    assert same_weights(model, store.load("v1")) and not same_weights(model, store.load("v2"))
    assert picker.model is model and picker.load() is model  # loaded once
    assert picker.description() == "version v1" and picker.origin() == "v1"
    assert session.model is None  # picking a version leaves the session's model alone

    # the current model is a version: a run started from it records which
    picker.source.value = "current"
    session.set_model(model, store.path("v1"), version="v1")
    assert picker.origin() == "v1"
    session.set_model(small_unet(), None)
    assert picker.origin() == "current model"

    # the store is gone: a clear error, and the choice falls back to the current model
    picker.source.value = "version:v2"
    shutil.rmtree(store.folder)
    with pytest.raises(ValueError, match="no model version 'v2'"):
        picker.load()
    assert picker.model is None
    changes.clear()
    session.versions_changed.emit()
    assert "version:v2" not in picker.source.choices
    assert picker.value == "current" and changes == ["current"]
