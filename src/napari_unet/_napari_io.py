"""Reader, writer and sample data callables for the npe2 manifest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

LayerData = tuple[Any, dict[str, Any], str]

_DATA = Path(__file__).parent / "_data"
#: What the manifest's reader claims (``*.tif``, ``*.tiff``, files only).
_SUFFIXES = (".tif", ".tiff")


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return :func:`read_lazily` for TIFF files, else None.

    napari offers this reader for ``*.tif``/``*.tiff`` files next to its builtin
    one: File › Open and drag-and-drop ask which to use (once, if the choice is
    remembered); ``viewer.open(path)`` uses napari's builtin reader unless
    ``plugin="napari-unet-paper"`` is given. Folders (``.zarr`` included) are left
    to napari's builtin reader, which opens zarr lazily with dask. See
    ``docs/development.md``.
    """
    paths = [path] if isinstance(path, str) else path
    if not paths or not all(
        str(p).lower().endswith(_SUFFIXES) and not Path(p).is_dir() for p in paths
    ):
        return None
    return read_lazily


def read_lazily(path: str | list[str]) -> list[LayerData]:
    """Open TIFF images without loading them (a memmap or tifffile's zarr view).

    A zarr folder works too (a zarr array view) when called directly.
    """
    from napari_unet.core.io import open_image

    paths = [path] if isinstance(path, str) else path
    layers = []
    for p in paths:
        data = open_image(p)
        kind = (
            "labels"
            if data.dtype.kind in "iu" and Path(p).stem.endswith(("mask", "masks", "labels"))
            else "image"
        )
        layers.append((data, {"name": Path(str(p).rstrip("/")).stem}, kind))
    return layers


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a Labels layer to a (Big)TIFF or zarr, plane by plane."""
    import numpy as np

    from napari_unet.core.io import PlaneWriter

    data = np.asarray(data) if not hasattr(data, "shape") else data
    dtype = np.uint32 if np.dtype(data.dtype).itemsize > 2 else data.dtype
    with PlaneWriter(path, tuple(data.shape), dtype, overwrite=True) as writer:
        for index in np.ndindex(*data.shape[:-2]):
            writer.write(np.asarray(data[index]))
    return [path]


def sample_nuclei() -> list[LayerData]:
    """DSB 2018 fluorescence nuclei (CC0) with their instance masks."""
    import tifffile

    image = tifffile.imread(_DATA / "nuclei.tif")
    masks = tifffile.imread(_DATA / "nuclei_masks.tif")
    return [
        (image, {"name": "nuclei"}, "image"),
        (masks, {"name": "nuclei masks", "opacity": 0.5}, "labels"),
    ]
