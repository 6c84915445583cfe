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
