"""Export a widget's model as a bioimage.io package, in a worker, with its test.

Writing the package (tracing the network, the test tensors) and
``bioimageio.core``'s model test take tens of seconds, so both run in a
napari worker with an indeterminate progress bar in the activity dock; the
status line says which step runs and how the test ended.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_info, show_warning

if TYPE_CHECKING:
    from magicgui.widgets import Label, PushButton
    from napari.qt.threading import GeneratorWorker

    from napari_unet.core.bioimageio import PackageCheck
    from napari_unet.core.model import UNet


def export_job(
    model: UNet, path: str, sample: np.ndarray | None
) -> Generator[str, None, tuple[Path, PackageCheck]]:
    """Write the package, then test it; yields the step that starts."""
    from napari_unet.core.bioimageio import check_package, export_bioimageio

    yield "writing the bioimage.io package…"
    written = export_bioimageio(model, path, name=f"napari-unet {Path(path).stem}", sample=sample)
    yield "checking it with bioimageio.core's model test…"
    return written, check_package(written)


def plane_sample(layer: Any, index: tuple[int, ...], model: UNet) -> np.ndarray | None:
    """The plane ``index`` of an Image layer as a test sample, if it fits the model.

    Returns (Y, X) or (C, Y, X), or None (the package then uses the bundled
    nuclei image) when there is no layer, it is RGB, or its channels or size
    do not fit.
    """
    from napari_unet.core.bioimageio import package_geometry
    from napari_unet.core.tiling import as_channels_first

    if layer is None or layer.rgb:
        return None
    data = layer.data[0] if layer.multiscale else layer.data
    try:
        arr, lead, _ = as_channels_first(data, model.in_channels)
    except ValueError:
        return None
    if min(arr.shape[-2:]) < package_geometry(model)["min"]:
        return None
    return np.asarray(arr[index[: len(lead)]])


class PackageExporter:
    """Run :func:`export_job` in a worker and report in a status line.

    Parameters
    ----------
    button : PushButton
        Disabled while an export runs.
    status : Label
        The widget's status line.
    """

    def __init__(self, button: PushButton, status: Label) -> None:
        self._button = button
        self._status = status

    def run(self, model: UNet, path: str, sample: np.ndarray | None) -> GeneratorWorker:
        """Start the export of ``model`` to ``path``; return the started worker."""
        from napari.qt.threading import create_worker

        worker = create_worker(
            export_job, model, path, sample, _progress={"desc": "bioimage.io export"}
        )
        worker.yielded.connect(self._on_step)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(lambda: setattr(self._button, "enabled", True))
        self._button.enabled = False
        worker.start()
        return worker

    def _on_step(self, step: str) -> None:
        self._status.value = f"Export: {step}"

    def _on_returned(self, result: tuple[Path, PackageCheck]) -> None:
        path, check = result
        if check.passed:
            self._status.value = f"Exported {path.name}; bioimageio.core's model test passed"
            show_info(f"bioimage.io package written and tested: {path}")
        else:
            self._status.value = f"Exported {path.name}, but bioimageio.core's test failed"
            show_warning(f"{path}: bioimageio.core's model test failed: {check.failures}")

    def _on_errored(self, err: BaseException) -> None:
        self._status.value = f"Export failed: {err}"
