"""Which axis of an input file is what: planes, channels, Y and X.

A TIFF says its axes (tifffile's series axes: ``YXS`` for an RGB image,
``CYX``, ``ZCYX``, ``TZCYX`` for ImageJ hyperstacks; ``Q`` or ``I`` for axes
it cannot name); a zarr array may say them in its attributes (OME-Zarr
``multiscales`` axes or xarray's ``_ARRAY_DIMENSIONS``). :func:`arrange`
turns an image and its axes into what the rest of the package expects:
``(planes..., Y, X)``, or ``(planes..., C, Y, X)`` when channels are kept,
lazily where it can (views, or dask for zarr).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CHANNEL_LETTERS", "MIN_SPATIAL", "arrange", "file_axes"]

#: Axis letters that hold channels: C, and S (tifffile's samples, e.g. RGB).
CHANNEL_LETTERS = "CS"
#: A Y or X axis shorter than this is refused unless the axes are given:
#: it is almost certainly channels.
MIN_SPATIAL = 8


def file_axes(path: str | os.PathLike[str]) -> str | None:
    """The axes a TIFF or zarr input declares (e.g. ``"YXS"``), or None if it names none.

    Axes tifffile cannot name (``Q``, ``I``) count as planes.
    """
    path = Path(path)
    if path.suffix.lower() == ".zarr":
        import zarr

        try:
            attrs = dict(zarr.open(str(path), mode="r").attrs)
        except Exception:  # the reader reports unreadable inputs
            return None
        names = attrs.get("_ARRAY_DIMENSIONS")
        scales = attrs.get("multiscales")
        if names is None and isinstance(scales, list) and scales and isinstance(scales[0], dict):
            listed = scales[0].get("axes", [])
            if isinstance(listed, list):
                names = [a["name"] if isinstance(a, dict) else a for a in listed]
        if not isinstance(names, list | tuple | str) or not names:
            return None
        return "".join(str(n)[0] for n in names).upper()
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            axes = tif.series[0].axes
    except Exception:
        return None
    named = axes.replace("Q", "").replace("I", "")
    return axes if any(a in CHANNEL_LETTERS for a in named) else None


def _take(image: Any, axis: int, index: int | list[int]) -> Any:
    if isinstance(image, np.ndarray):
        return np.take(image, index, axis=axis)
    import dask.array as da

    return da.take(da.asarray(image), index, axis=axis)


def _move(image: Any, source: int, target: int) -> Any:
    if source % image.ndim == target % image.ndim:
        return image
    if isinstance(image, np.ndarray):
        return np.moveaxis(image, source, target)
    import dask.array as da

    return da.moveaxis(da.asarray(image), source, target)


def arrange(
    image: Any,
    axes: str | None = None,
    *,
    in_channels: int | None = 1,
    channels: Sequence[int] | None = None,
    name: str = "the image",
) -> Any:
    """Put an image's axes in the package's order and pick its channels.

    Parameters
    ----------
    image : array-like
        As read (numpy, memmap, zarr, dask).
    axes : str, optional
        One letter per axis (``"YXS"``, ``"ZCYX"``; ``C`` or ``S`` = channels,
        the last two other letters are Y and X). None: no channel axis,
        ``(planes..., Y, X)``.
    in_channels : int, optional
        Channels the model takes (None: keep every channel, e.g. to train a
        new model).
    channels : sequence of int, optional
        Channels to use, in order; one channel gives a single-channel image.
    name : str
        What to call the image in error messages (e.g. its file name).

    Returns
    -------
    array-like
        ``(planes..., Y, X)`` or ``(planes..., C, Y, X)``.

    Raises
    ------
    ValueError
        If the axes do not fit the image, a channel index is out of range,
        the channel count does not fit the model (the message says how to
        pick channels), or a Y/X axis shorter than 8 would be taken as space.
    """
    shape = tuple(int(s) for s in image.shape)
    if axes is not None:
        axes = axes.upper()
        if len(axes) != len(shape) or len(set(axes)) != len(axes):
            raise ValueError(
                f"axes {axes!r} do not fit {name} of shape {shape} (one distinct letter per axis)"
            )
    found = [i for i, a in enumerate(axes or "") if a in CHANNEL_LETTERS]
    if len(found) > 1:
        raise ValueError(f"axes {axes!r} of {name} name more than one channel axis")
    if found:
        image = _move(image, found[0], -3) if len(shape) >= 3 else image
        n = int(image.shape[-3])
        picked = list(range(n)) if channels is None else [int(c) for c in channels]
        if any(not 0 <= c < n for c in picked) or not picked:
            raise ValueError(f"{name} has channels 0-{n - 1}; cannot use {channels}")
        if len(picked) == 1:
            image = _take(image, -3, picked[0])
        elif picked != list(range(n)):
            image = _take(image, -3, picked)
        kept = len(picked)
        if in_channels is not None and kept != in_channels:
            how = (
                f"pick one with --channels N (0-{n - 1})"
                if in_channels == 1
                else f"pick {in_channels} with --channels"
            )
            raise ValueError(
                f"{name} has {kept} channels (axes {axes}) but the model takes "
                f"{in_channels}: {how}, or give --axes if the axis holds planes"
            )
    elif channels is not None:
        raise ValueError(f"{name} has no channel axis (axes {axes or 'unknown'}); give --axes")
    spatial = tuple(image.shape[-2:])
    if axes is None and min(spatial) < MIN_SPATIAL:
        raise ValueError(
            f"{name} has shape {shape}: its last axes {spatial} are too short for Y and X; if "
            "the last axis holds channels, give --axes (e.g. YXC) or --channel-axis -1"
        )
    return image
