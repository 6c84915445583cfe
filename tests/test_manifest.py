"""The npe2 manifest validates, its commands import, and the sample data loads."""

from __future__ import annotations

import numpy as np
import pytest

npe2 = pytest.importorskip("npe2")


def test_manifest_validates_and_imports():
    manifest = npe2.PluginManifest.from_distribution("napari-unet-paper")
    manifest.validate_imports()
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert widgets == {"1. Annotate", "2. Weight map", "3. Train", "4. Predict"}
    assert [s.key for s in manifest.contributions.sample_data] == ["nuclei"]


def test_sample_data_is_a_matching_pair():
    from napari_unet._napari_io import sample_nuclei

    (image, _, kind_i), (masks, _, kind_m) = sample_nuclei()
    assert (kind_i, kind_m) == ("image", "labels")
    assert image.shape == masks.shape == (520, 696)
    assert len(np.unique(masks)) - 1 == 313


def test_reader_and_writer_round_trip(tmp_path):
    from napari_unet._napari_io import get_reader, write_labels

    labels = np.zeros((2, 30, 40), np.uint32)
    labels[1, 5:9, 5:9] = 70000
    path = str(tmp_path / "cells_masks.tif")
    assert write_labels(path, labels, {}) == [path]
    reader = get_reader(path)
    assert reader is not None and get_reader(str(tmp_path / "x.png")) is None
    [(data, meta, kind)] = reader(path)
    assert kind == "labels" and meta["name"] == "cells_masks"
    np.testing.assert_array_equal(np.asarray(data), labels)


# --- which reader napari picks (docs/development.md, "Which reader opens a file") ---

PLUGIN = "napari-unet-paper"


@pytest.fixture
def files(tmp_path):
    """A small TIFF stack, a zarr array and a plain folder, as our writer saves them."""
    from napari_unet._napari_io import write_labels

    labels = np.zeros((2, 30, 40), np.uint32)
    labels[:, 5:9, 5:9] = 7
    paths = {"tif": str(tmp_path / "cells.tif"), "zarr": str(tmp_path / "cells.zarr")}
    for path in paths.values():
        write_labels(path, labels, {})
    folder = tmp_path / "folder"
    folder.mkdir()
    write_labels(str(folder / "plane.tif"), labels[0], {})
    paths["folder"] = str(folder)
    return paths


def test_reader_is_offered_for_tiff_files_only(files):
    # what napari asks npe2 before it opens a path: the readers whose patterns match
    pytest.importorskip("napari")
    from napari.plugins import _initialize_plugins, _npe2

    _initialize_plugins()
    assert set(_npe2.get_readers(files["tif"])) == {"napari", PLUGIN}
    # no folders: a reader that accepts directories is offered for every folder
    assert set(_npe2.get_readers(files["zarr"])) == {"napari"}
    assert set(_npe2.get_readers(files["folder"])) == {"napari"}


@pytest.fixture
def viewer(make_napari_viewer, monkeypatch):
    pytest.importorskip("qtpy", reason="needs a Qt binding")
    from napari.settings import get_settings

    # the reader preferences set below stay in memory, out of the user's settings file
    monkeypatch.setattr(type(get_settings()), "_maybe_save", lambda self: None)
    return make_napari_viewer()


@pytest.mark.gui
def test_viewer_open_uses_napari_unless_our_reader_is_chosen(viewer, files):
    [layer] = viewer.open(files["tif"])  # a script's default: plugin="napari"
    assert layer.source.reader_plugin == "napari"
    assert isinstance(layer.data, np.ndarray) and not isinstance(layer.data, np.memmap)

    [layer] = viewer.open(files["tif"], plugin=PLUGIN)
    assert layer.source.reader_plugin == PLUGIN
    assert isinstance(layer.data, np.memmap)  # lazy: not read into memory
    assert layer.data.shape == (2, 30, 40)


@pytest.mark.gui
def test_open_without_a_plugin_choice(viewer, files, monkeypatch):
    # plugin=None is what File > Open and drag-and-drop do (QtViewer._qt_open)
    from napari.errors import MultipleReaderError
    from napari.settings import get_settings

    # folders and .zarr: napari's builtin reader only, no question; zarr stays lazy
    [layer] = viewer.open(files["zarr"], plugin=None)
    assert layer.source.reader_plugin == "napari"
    assert type(layer.data).__module__.startswith("dask")
    [layer] = viewer.open(files["folder"], plugin=None)
    assert layer.source.reader_plugin == "napari"

    # a TIFF: two readers, so napari asks (the GUI shows its reader dialog)
    with pytest.raises(MultipleReaderError):
        viewer.open(files["tif"], plugin=None)
    # ... unless the user saved a preference (the dialog's "remember" box, Preferences)
    plugins = get_settings().plugins
    for choice in ("napari", PLUGIN):
        monkeypatch.setattr(plugins, "extension2reader", {"*.tif": choice})
        [layer] = viewer.open(files["tif"], plugin=None)
        assert layer.source.reader_plugin == choice


@pytest.mark.gui
def test_gui_open_asks_only_for_tiffs(viewer, files, monkeypatch):
    from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog

    offered: list[list[str]] = []

    def cancel(dialog):
        offered.append(sorted(b.text() for b in dialog.reader_btn_group.buttons()))
        return "", False  # the user pressed Cancel

    monkeypatch.setattr(QtReaderDialog, "get_user_choices", cancel)
    qt_viewer = viewer.window._qt_viewer
    qt_viewer._qt_open([files["zarr"]], stack=False)
    qt_viewer._qt_open([files["folder"]], stack=False)
    assert offered == [] and len(viewer.layers) == 2
    qt_viewer._qt_open([files["tif"]], stack=False)
    assert offered == [["U-Net Segmentation", "napari builtins"]]
    assert len(viewer.layers) == 2  # cancelled: nothing opened
