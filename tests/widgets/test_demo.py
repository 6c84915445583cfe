"""The GUI demo opens the sample half-annotated with the four widgets."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet._widgets._session import annotation_info
from napari_unet._widgets.demo import build_demo

pytestmark = pytest.mark.gui


def test_demo_viewer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widgets = build_demo(viewer)
    assert set(widgets) == {"1. Annotate", "2. Weight map", "3. Train", "4. Predict"}
    masks = viewer.layers["nuclei masks"]
    half = masks.data.shape[1] // 2
    assert masks.data[:, :half].max() > 100 and not masks.data[:, half:].any()
    assert annotation_info(masks)["image"] == "nuclei"
    rectangles = widgets["1. Annotate"].rectangles()
    assert len(rectangles) == 1
    r = rectangles[0]
    assert (r.y0, r.y1, r.x0, r.x1) == (0, masks.data.shape[0], 0, half)
    assert widgets["3. Train"].data_info.value == "1 annotated region(s)"
    assert np.issubdtype(masks.data.dtype, np.integer)
    weight_map = widgets["2. Weight map"]  # live preview of the annotated half
    qtbot.waitUntil(lambda: "nuclei masks weights" in viewer.layers, timeout=30_000)
    qtbot.waitUntil(lambda: not weight_map.is_running, timeout=30_000)
    weights = viewer.layers["nuclei masks weights"].data
    assert weights[:, :half].max() > 5 and not weights[:, half + 1 :].any()
