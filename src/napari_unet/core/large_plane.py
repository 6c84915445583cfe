"""Segment planes of any size with memory bounded by a few tiles.

:func:`iter_segment_large` reads a plane tile by tile (TIFF strips or tiles,
zarr chunks, dask blocks, a memmap), normalizes it with the model's
percentiles measured on a subsample of the plane, streams the probabilities
out tile by tile (:func:`~napari_unet.core.tiling.run_tiles`), keeps only the
thresholded foreground (in a scratch array on disk for big planes) and labels
it block by block (:func:`~napari_unet.core.blockwise.iter_label_blocks`), so
a cell crossing tile and block borders gets one id and post-processing acts on
whole objects. The labels equal those of a whole-plane
:func:`~napari_unet.core.segment.iter_segment` (the same partition of pixels)
whenever the subsample is the whole plane (planes up to
:data:`SAMPLE_PIXELS`); above, the percentiles are those of an even grid of
pixels, which differ from the exact ones by a fraction of a grey level.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from napari_unet.core.blockwise import (
    DEFAULT_BLOCK,
    BlockProgress,
    iter_label_blocks,
    label_blocks_dask,
)
from napari_unet.core.device import select_device
from napari_unet.core.io import allocate_zeros, release_pages
from napari_unet.core.model import UNet
from napari_unet.core.postprocess import FILL_GAPS, foreground_probability
from napari_unet.core.predictor import Predictor, TestTimeAugmentation, as_predictor
from napari_unet.core.progress import relay
from napari_unet.core.segment_config import SegmentConfig
from napari_unet.core.tiling import (
    as_channels_first,
    auto_tile_size,
    iter_predict_tiled,
    plan_tiles,
)

__all__ = [
    "SAMPLE_PIXELS",
    "SCRATCH_NUMPY_BYTES",
    "STREAM_PIXELS",
    "LargePlaneProgress",
    "PlaneWritten",
    "iter_segment_large",
    "iter_write_large",
    "label_dask",
    "plane_sample",
]

#: Planes with more pixels than this are segmented tile by tile by the command line.
STREAM_PIXELS = 2048 * 2048
#: Normalization statistics come from at most about this many pixels of a plane.
SAMPLE_PIXELS = 4096 * 4096
#: Scratch arrays larger than this live on disk (zarr), smaller ones in memory.
SCRATCH_NUMPY_BYTES = 64 * 2**20

#: Writes a block of the output plane: (rows, cols, values).
BlockWriter = Callable[[slice, slice, np.ndarray], None]


@dataclass(frozen=True)
class LargePlaneProgress:
    """Progress of :func:`iter_segment_large`: ``done`` of ``total`` steps of a plane.

    ``stage`` is ``"tiles"`` (a batch of tiles predicted) or a labelling stage
    of :func:`~napari_unet.core.blockwise.iter_label_blocks`; ``message`` a
    notice for the user (an out-of-memory fallback), else "".
    """

    done: int
    total: int
    stage: str
    message: str = ""


def plane_sample(
    image: Any, index: tuple[int, ...], channels: bool, max_pixels: int = SAMPLE_PIXELS
) -> np.ndarray:
    """An even grid of at most ~``max_pixels`` pixels of a plane, read row by row.

    Parameters
    ----------
    image : array-like of shape (..., M, N) or (..., C, M, N)
    index : tuple of int
        The plane (leading axes).
    channels : bool
        Whether axis -3 holds channels.
    max_pixels : int
        Largest sample; the whole plane when it has no more pixels.

    Returns
    -------
    sample : ndarray of shape ([C,] m, n)
    """
    rows, cols = int(image.shape[-2]), int(image.shape[-1])
    step = max(1, math.ceil(math.sqrt(rows * cols / max_pixels)))
    chan = (slice(None),) if channels else ()
    band = max(1, 2**22 // max(cols, 1))  # read ~4 M pixels at a time
    parts = []
    for r0 in range(0, rows, band * step):
        r1 = min(rows, r0 + band * step)
        key = (*index, *chan, slice(r0, r1, step), slice(None, None, step))
        parts.append(np.array(image[key]))  # a copy: the band's pages can go
        release_pages(image)  # strided reads map whole pages (and their neighbours)
    return np.concatenate(parts, axis=-2)


class _NormalizedPlane:
    """A plane of an image, normalized when read (any part, with fixed limits)."""

    def __init__(self, image: Any, index: tuple[int, ...], channels: bool, model: UNet) -> None:
        self.image, self.index, self.channels = image, index, channels
        self.limits = model.normalization.limits(plane_sample(image, index, channels))
        self.normalization = model.normalization
        self.shape = tuple(int(n) for n in image.shape[len(index) :])
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key: tuple[Any, ...]) -> np.ndarray:
        tile = self.normalization.apply(np.asarray(self.image[(*self.index, *key)]), self.limits)
        release_pages(self.image)  # a memory-mapped input would fill RSS with the plane
        return tile


class _ForegroundSink:
    """The ``out`` of the tiler: keeps ``foreground > threshold`` of each tile core."""

    def __init__(
        self,
        shape: tuple[int, int],
        n_classes: int,
        threshold: float,
        mask: Any,
        probabilities: BlockWriter | None,
        mask_out: BlockWriter | None,
    ) -> None:
        self.shape = (n_classes, *shape)
        self.dtype = np.dtype(np.float32)
        self.threshold, self.mask = threshold, mask
        self.probabilities, self.mask_out = probabilities, mask_out

    def __setitem__(self, key: tuple[Any, ...], prob: np.ndarray) -> None:
        _, rows, cols = key
        fg = (foreground_probability(prob) > self.threshold).astype(np.uint8)
        if self.mask is not None:
            self.mask[rows, cols] = fg
        if self.mask_out is not None:
            self.mask_out(rows, cols, fg)
        if self.probabilities is not None:
            self.probabilities(rows, cols, prob)


class _OffsetLabels:
    """The ``out`` of the labelling: ids shifted by ``first - 1``, written as blocks."""

    def __init__(self, shape: tuple[int, int], first: int, write: BlockWriter) -> None:
        self.shape, self.first, self.write = shape, first, write

    def __setitem__(self, key: tuple[slice, slice], labels: np.ndarray) -> None:
        shifted = np.where(labels > 0, labels + np.uint32(self.first - 1), 0).astype(np.uint32)
        self.write(*key, shifted)


def iter_segment_large(
    model: UNet,
    image: Any,
    index: tuple[int, ...] = (),
    *,
    write_labels: BlockWriter,
    write_probabilities: BlockWriter | None = None,
    tile_size: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = "auto",
    threshold: float = 0.5,
    min_size: int = SegmentConfig.min_size,
    split: bool = SegmentConfig.split,
    expand: int = SegmentConfig.expand,
    fill_gaps: int = FILL_GAPS,
    tta: bool = SegmentConfig.tta,
    channel_axis: int | None = None,
    first_label: int = 1,
    output: Literal["instances", "mask"] = "instances",
    block: int | None = None,
    precision: str = "auto",
) -> Generator[LargePlaneProgress, None, int]:
    """Segment one plane of ``image`` tile by tile, writing the result block by block.

    Parameters
    ----------
    model : UNet
    image : array-like of shape (..., M, N) or (..., C, M, N)
        Read lazily, a tile at a time.
    index : tuple of int
        The plane (leading axes; () for a 2D image).
    write_labels : callable
        ``write_labels(rows, cols, block)`` receives every block of the
        labels (uint32; ids from ``first_label``) or of the mask (uint8),
        each pixel once.
    write_probabilities : callable, optional
        ``write_probabilities(rows, cols, block)`` receives the class
        probabilities (n_classes, h, w) of every tile core.
    tile_size, batch_size, device, tta, precision
        As in :func:`~napari_unet.core.segment.iter_segment`.
    threshold, min_size, split, expand, fill_gaps, output
        As in :func:`~napari_unet.core.segment.iter_segment`
        (:meth:`SegmentConfig.segment_kwargs` gives them for a model).
    channel_axis : int, optional
        Channel axis for multi-channel models (default -3).
    first_label : int
        Id of the first cell.
    block : int, optional
        Edge of the labelling blocks (:data:`~napari_unet.core.blockwise.DEFAULT_BLOCK`).

    Yields
    ------
    LargePlaneProgress
        After every batch of tiles and every labelling block.

    Returns
    -------
    n_objects : int
        Cells written (0 for a mask).
    """
    if output not in ("instances", "mask"):
        raise ValueError(f"`output` must be 'instances' or 'mask', got {output!r}")
    block = DEFAULT_BLOCK if block is None else block
    arr, lead, channels = as_channels_first(image, model.in_channels, channel_axis)
    if len(index) != len(lead) or any(not 0 <= i < n for i, n in zip(index, lead, strict=True)):
        raise ValueError(f"plane index {index} is out of range for leading shape {lead}")
    shape = (int(arr.shape[-2]), int(arr.shape[-1]))
    plane = _NormalizedPlane(arr, tuple(index), channels, model)
    dev = select_device(device)
    predictor: Predictor = as_predictor(model, dev, precision)
    if tta:
        predictor = TestTimeAugmentation(predictor)
    tile = tile_size or auto_tile_size(predictor, dev)
    n_tiles = len(plan_tiles(predictor, shape, tile).origins)
    mask_only = output == "mask"
    n_blocks = 0 if mask_only else math.ceil(shape[0] / block) * math.ceil(shape[1] / block)
    total = n_tiles + n_blocks * (3 if split else 2)

    mask = None if mask_only else _scratch("foreground", shape, np.uint8)
    sink = _ForegroundSink(
        shape,
        predictor.n_classes,
        threshold,
        mask,
        write_probabilities,
        write_labels if mask_only else None,
    )
    for event in iter_predict_tiled(
        predictor,
        plane,
        tile_size=tile,
        batch_size=batch_size,
        device=dev,
        out=sink,
        channel_axis=-3 if channels else None,
    ):
        yield LargePlaneProgress(event.done, total, "tiles", event.message)
    if mask_only:
        return 0
    labelling = _label_mask(
        mask, shape, first_label, write_labels, block, min_size, split, expand, fill_gaps
    )
    n_objects: int = yield from relay(
        labelling, lambda step: LargePlaneProgress(n_tiles + step.done, total, step.stage)
    )
    return n_objects


@dataclass(frozen=True)
class PlaneWritten:
    """A plane of :func:`iter_write_large` is complete in its outputs."""

    plane: int
    index: tuple[int, ...]
    n_planes: int
    n_objects: int


def iter_write_large(
    model: UNet,
    image: Any,
    labels_out: Any,
    probabilities_out: Any = None,
    **options: Any,
) -> Generator[LargePlaneProgress | PlaneWritten, None, int]:
    """Segment every plane of ``image`` tile by tile into writers of whole stacks.

    Parameters
    ----------
    model : UNet
    image : array-like of shape (..., M, N) or (..., C, M, N)
    labels_out, probabilities_out : PlaneWriter
        Outputs written block by block (``write_block``), plane after plane
        (``next_plane``); see :class:`~napari_unet.core.io.PlaneWriter`.
    **options
        Passed to :func:`iter_segment_large` (not ``first_label``: ids are
        unique across the stack, counting up from 1).

    Yields
    ------
    LargePlaneProgress or PlaneWritten
        Progress (counted over the whole stack) and each finished plane.

    Returns
    -------
    next_label : int
        The id after the last cell written.
    """
    channel_axis = options.get("channel_axis")
    _, lead, _ = as_channels_first(image, model.in_channels, channel_axis)
    planes = list(np.ndindex(*lead))
    next_label = 1
    for k, index in enumerate(planes):
        job = iter_segment_large(
            model,
            image,
            index,
            write_labels=labels_out.write_block,
            write_probabilities=None
            if probabilities_out is None
            else probabilities_out.write_block,
            first_label=next_label,
            **options,
        )

        def over_stack(step: LargePlaneProgress, k: int = k) -> LargePlaneProgress:
            # every plane takes the same steps: count them over the stack
            done, total = k * step.total + step.done, step.total * len(planes)
            return LargePlaneProgress(done, total, step.stage, step.message)

        n_objects: int = yield from relay(job, over_stack)
        labels_out.next_plane()
        if probabilities_out is not None:
            probabilities_out.next_plane()
        next_label += n_objects
        yield PlaneWritten(k, index, len(planes), n_objects)
    return next_label


def label_dask(
    probabilities: Any,
    out: Any,
    *,
    threshold: float = 0.5,
    min_size: int = SegmentConfig.min_size,
    split: bool = SegmentConfig.split,
    expand: int = SegmentConfig.expand,
    fill_gaps: int = FILL_GAPS,
    block: int | None = None,
    scratch: str | os.PathLike[str] | None = None,
) -> int:
    """Instance labels of lazy probabilities (e.g. :func:`~napari_unet.core.predict_dask`).

    Each plane is labelled by tasks on the dask scheduler
    (:func:`~napari_unet.core.blockwise.label_blocks_dask`; on a cluster if
    one is active): the workers compute the probabilities' blocks, threshold
    and label them, and split and grow the objects; this process joins the
    components across block borders and writes the finished blocks into
    ``out``, with memory bounded by a few blocks. The labels equal
    :func:`~napari_unet.core.postprocess.probabilities_to_labels` of each whole
    plane (the same partition); ids are unique across the stack.

    Parameters
    ----------
    probabilities : dask array of shape (..., n_classes, M, N)
        Softmax probabilities (class 0 = background).
    out : writable array-like of shape (..., M, N), uint32
        Destination (zarr, numpy, memmap).
    threshold, min_size, split, expand, fill_gaps
        As in :func:`~napari_unet.core.postprocess.probabilities_to_labels`.
    block : int, optional
        Edge of the labelling blocks.
    scratch : path, optional
        Folder for the provisional ids, which every worker must see (on a
        cluster of several machines, a shared file system); None: a temporary
        folder on this machine.

    Returns
    -------
    n_objects : int
        Cells written (ids ``1 .. n_objects``).

    Examples
    --------
    >>> import dask.array as da
    >>> prob = np.zeros((2, 40, 50), np.float32); prob[0] = 1
    >>> prob[:, 5:15, 5:15] = [[[0]], [[1]]]
    >>> out = np.zeros((40, 50), np.uint32)
    >>> label_dask(da.from_array(prob, chunks=(2, 20, 25)), out, block=16)
    1
    """
    import dask.array as da

    shape = (int(probabilities.shape[-2]), int(probabilities.shape[-1]))
    if len(probabilities.shape) < 3 or tuple(out.shape) != (*probabilities.shape[:-3], *shape):
        raise ValueError(
            f"`out` must have the probabilities' shape without the class axis, "
            f"{(*probabilities.shape[:-3], *shape)}; got {tuple(out.shape)}"
        )
    background = da.asarray(probabilities)[..., 0, :, :].astype(np.float32)
    mask = (1.0 - background) > threshold
    next_label = 1
    for index in np.ndindex(*mask.shape[:-2]):

        def write(rows: slice, cols: slice, labels: np.ndarray, at: tuple = index) -> None:
            out[(*at, rows, cols)] = labels

        next_label += label_blocks_dask(
            mask[index],
            _OffsetLabels(shape, next_label, write),
            min_size=min_size,
            split=split,
            expand=expand,
            fill_gaps=fill_gaps,
            block=DEFAULT_BLOCK if block is None else block,
            scratch=scratch,
        )
    return next_label - 1


def _label_mask(
    mask: Any,
    shape: tuple[int, int],
    first_label: int,
    write: BlockWriter,
    block: int | None,
    min_size: int,
    split: bool,
    expand: int,
    fill_gaps: int,
) -> Generator[BlockProgress, None, int]:
    """Label a plane's foreground mask block by block, ids from ``first_label``, into ``write``."""
    return iter_label_blocks(
        mask,
        _OffsetLabels(shape, first_label, write),
        min_size=min_size,
        split=split,
        expand=expand,
        fill_gaps=fill_gaps,
        block=DEFAULT_BLOCK if block is None else block,
        scratch=_scratch,
    )


def _scratch(name: str, size: tuple[int, int], dtype: Any) -> Any:
    return allocate_zeros(size, dtype, name=name, limit=SCRATCH_NUMPY_BYTES)
