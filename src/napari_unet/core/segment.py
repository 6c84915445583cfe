"""Whole-job segmentation: normalize, predict tiled, label, plane by plane.

This is the high-level prediction that the command line and the widgets run:
each plane is normalized with the settings stored in the model, predicted by
overlap-tile inference and turned into instance labels whose ids continue
from plane to plane (ids are unique in the whole stack; cells are not linked
across planes). Memory is bounded by one plane.
"""

from __future__ import annotations

import dataclasses
import mmap
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_unet.core.io import ImageReadError
from napari_unet.core.model import UNet
from napari_unet.core.postprocess import probabilities_to_labels
from napari_unet.core.tiling import TileProgress, as_channels_first, iter_predict_tiled


@dataclass(frozen=True)
class PlaneDone:
    """One plane segmented.

    Attributes
    ----------
    plane : int
        Position of the plane in the job (0-based).
    index : tuple of int
        Index of the plane in the leading axes of the image (() for 2D).
    n_planes : int
        Planes in the job.
    labels : ndarray of uint32, shape (M, N)
        Instance labels, ids offset to be unique across the job.
    probabilities : ndarray of float32, shape (n_classes, M, N)
    n_objects : int
        Cells found in this plane.
    """

    plane: int
    index: tuple[int, ...]
    n_planes: int
    labels: np.ndarray
    probabilities: np.ndarray
    n_objects: int


def iter_segment(
    model: UNet,
    image: Any,
    *,
    planes: Iterable[tuple[int, ...]] | None = None,
    tile_size: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = "auto",
    threshold: float = 0.5,
    min_size: int = 16,
    split: bool = False,
    expand: int = 0,
    tta: bool = False,
    channel_axis: int | None = None,
    first_label: int = 1,
) -> Generator[TileProgress | PlaneDone, None, int]:
    """Segment the planes of ``image``, yielding tile progress and finished planes.

    Parameters
    ----------
    model : UNet
        Network; its ``normalization`` is applied to every plane.
    image : array-like of shape (..., M, N) or (..., C, M, N)
        Lazy or in-memory image (see :func:`~napari_unet.core.iter_predict_tiled`).
    planes : iterable of tuple of int, optional
        Indices (into the leading axes) of the planes to segment; all if None.
    tile_size, batch_size, device, tta
        Passed to :func:`~napari_unet.core.iter_predict_tiled`.
    threshold, min_size, split, expand
        Passed to :func:`~napari_unet.core.probabilities_to_labels`.
    channel_axis : int, optional
        Channel axis for multi-channel models (default -3).
    first_label : int
        Id of the first cell; later cells count up from it.

    Yields
    ------
    TileProgress or PlaneDone
        Tile progress (``done``/``total`` over the whole job), and each plane
        when it is finished.

    Returns
    -------
    next_label : int
        The id after the last cell written.
    """
    arr, lead, channels = as_channels_first(image, model.in_channels, channel_axis)
    todo = list(np.ndindex(*lead)) if planes is None else [tuple(p) for p in planes]
    for index in todo:
        if len(index) != len(lead) or any(
            not 0 <= i < n for i, n in zip(index, lead, strict=True)
        ):
            raise ValueError(f"plane index {index} is out of range for leading shape {lead}")
    next_label = first_label
    done_before = 0
    for k, index in enumerate(todo):
        try:
            plane = np.asarray(arr[index])
        except Exception as err:  # decoders raise many types (zlib.error, TiffFileError)
            raise ImageReadError(f"cannot read plane {index} of the input: {err}") from None
        x = model.normalization(plane)
        del plane
        _release_pages(arr)
        gen = iter_predict_tiled(
            model,
            x,
            tile_size=tile_size,
            batch_size=batch_size,
            device=device,
            channel_axis=-3 if channels else None,
            tta=tta,
        )
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                prob = stop.value
                break
            per_plane = event.total
            yield dataclasses.replace(
                event,
                done=done_before + event.done,
                total=per_plane * len(todo),
                plane=k,
                n_planes=len(todo),
                regions=tuple((k, rows, cols) for _, rows, cols in event.regions),
            )
        done_before += per_plane
        labels = probabilities_to_labels(
            prob, threshold=threshold, min_size=min_size, split=split, expand=expand
        )
        n_objects = int(labels.max())
        labels[labels > 0] += np.uint32(next_label - 1)
        next_label += n_objects
        yield PlaneDone(k, index, len(todo), labels, prob, n_objects)
    return next_label


def _release_pages(image: Any) -> None:
    """Drop the pages of a read-only memory-mapped input from this process.

    They are file-backed and reclaimable, but they count in RSS while mapped:
    without this, RSS grows to the size of the stack as planes are read.
    """
    buffer = getattr(image, "_mmap", None)  # numpy.memmap keeps its mmap.mmap here
    read_only = getattr(image, "mode", None) == "r"
    if buffer is not None and read_only and hasattr(mmap, "MADV_DONTNEED"):
        buffer.madvise(mmap.MADV_DONTNEED)
