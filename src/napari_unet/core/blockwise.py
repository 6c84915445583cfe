"""Instance labels of a plane of any size, block by block, equal to whole-plane labelling.

:func:`iter_label_blocks` turns a foreground mask (a lazy 2D array: zarr,
memmap, numpy) into the labels that
:func:`~napari_unet.core.postprocess.probabilities_to_labels` gives for the
whole plane at once (the same partition of pixels; ids are a permutation),
holding only a few blocks in memory:

1. **Components.** Each block is labelled on its own (4-connectivity, as
   :func:`scipy.ndimage.label`); the pairs of foreground pixels that face each
   other across a block border are joined by union-find
   (:func:`scipy.sparse.csgraph.connected_components`), which gives every
   component one id and its whole area and bounding box.
2. **Objects.** Components smaller than ``min_size`` are removed; with
   ``split`` each remaining component is split by the distance-transform
   watershed in its own bounding box (read whole, so an object crossing
   blocks is split as a whole). Memory grows with the largest object here.
3. **Growing.** ``expand`` and ``fill_gaps`` act within a few pixels, so each
   block is grown with a halo of that reach and only its own pixels written.

Scratch arrays (provisional ids) are kept where ``scratch`` says: in memory
for numpy, on disk for a zarr group.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.segmentation import expand_labels

from napari_unet.core.postprocess import close_gaps, split_touching
from napari_unet.core.progress import run_to_end

__all__ = [
    "DEFAULT_BLOCK",
    "LABEL_BATCH",
    "BlockProgress",
    "iter_label_blocks",
    "label_blocks",
    "label_blocks_dask",
]

#: Edge of the blocks labelled at once (pixels).
DEFAULT_BLOCK = 1024
#: Finished blocks that :func:`label_blocks_dask` computes at once.
LABEL_BATCH = 16

Window = tuple[slice, slice]
#: Makes a scratch array: (name, shape, dtype) -> writable 2D array filled with 0.
Allocator = Callable[[str, tuple[int, int], Any], Any]


@dataclass(frozen=True)
class BlockProgress:
    """Progress of :func:`iter_label_blocks`: ``done`` of ``total`` block steps."""

    done: int
    total: int
    stage: str


def _grid(shape: tuple[int, int], block: int) -> tuple[int, int]:
    return -(-shape[0] // block), -(-shape[1] // block)


def _blocks(shape: tuple[int, int], block: int) -> list[Window]:
    return [
        (slice(y, min(y + block, shape[0])), slice(x, min(x + block, shape[1])))
        for y in range(0, shape[0], block)
        for x in range(0, shape[1], block)
    ]


def _numpy_scratch(name: str, shape: tuple[int, int], dtype: Any) -> np.ndarray:
    del name
    return np.zeros(shape, dtype)


def _label_block(block: np.ndarray, min_size: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Components of a block, without those already known to be too small.

    A component that does not reach the block's edge is whole, so one under
    ``min_size`` pixels is removed at once (noise can make millions of them).
    Returns the labels (1..n), n and the areas.
    """
    local, n = ndi.label(block > 0)
    area = np.bincount(local.ravel(), minlength=n + 1)
    edge = np.concatenate([local[0], local[-1], local[:, 0], local[:, -1]])
    drop = area < min_size
    drop[0] = False
    drop[edge] = False
    if drop.any():
        keep = ~drop
        keep[0] = False
        new = np.zeros(n + 1, np.int32)
        new[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        local, n, area = new[local], int(keep.sum()), np.concatenate([[0], area[keep]])
    return local, n, area[1:]


@dataclass(frozen=True)
class _Summary:
    """One block's components: their count, areas, boxes and ids on the block's edges."""

    n: int
    area: np.ndarray  # int32
    boxes: np.ndarray | None  # (n, 4) int32 plane coordinates: row start, stop, col start, stop
    edges: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # top, bottom, left, right


def _summarise(mask_block: Any, ids: Any, window: Window, min_size: int, boxes: bool) -> _Summary:
    """Label one block of the mask into ``ids`` (block-local ids) and summarise it.

    The components' boxes (only the split needs them) are kept if ``boxes``.
    """
    local, n, area = _label_block(np.asarray(mask_block), min_size)
    rows, cols = window
    corners = None
    if boxes:
        box = [(r.start, r.stop, c.start, c.stop) for r, c in ndi.find_objects(local)]
        origin = np.array([rows.start, rows.start, cols.start, cols.start], np.int32)
        corners = np.array(box, np.int32).reshape(-1, 4) + origin
    ids[window] = local.astype(np.uint32, copy=False)
    edges = (local[0].copy(), local[-1].copy(), local[:, 0].copy(), local[:, -1].copy())
    return _Summary(n, area.astype(np.int32), corners, edges)


class _Components:
    """The plane's components, joined across block borders from the blocks' summaries.

    A pixel's provisional id is its block-local id plus the block's offset;
    ``lut`` maps provisional ids to component + 1 (0: background). Memory: a
    few bytes per component (and 16 more for the boxes, when the blocks
    kept them).
    """

    def __init__(self, summaries: list[_Summary], grid: tuple[int, int], block: int) -> None:
        counts = np.array([s.n for s in summaries], np.int64)
        self.block = block
        self.offsets = (np.cumsum(counts) - counts).reshape(grid)
        total = int(counts.sum())
        joins = []
        for k, s in enumerate(summaries):
            # foreground pixels facing each other across the top and the left border
            if k >= grid[1]:
                up = k - grid[1]
                joins.append(self._pair(summaries[up].edges[1], s.edges[0], up, k))
            if k % grid[1]:
                joins.append(self._pair(summaries[k - 1].edges[3], s.edges[2], k - 1, k))
        pairs = np.concatenate(joins, axis=1) if joins else np.zeros((2, 0), np.int64)
        graph = coo_matrix((np.ones(pairs.shape[1]), (pairs[0], pairs[1])), shape=(total, total))
        n_comp, comp = connected_components(graph, directed=False)
        del pairs, graph
        self.lut = np.zeros(total + 1, np.int32)
        self.lut[1:] = comp + 1
        areas = np.concatenate([s.area for s in summaries]) if total else np.zeros(0)
        self.area = np.bincount(comp, weights=areas, minlength=n_comp).astype(np.int64)
        del areas
        self.boxes: np.ndarray | None = None
        if summaries and all(s.boxes is not None for s in summaries):
            corners = np.concatenate([s.boxes for s in summaries if s.boxes is not None])
            self.boxes = np.zeros((n_comp, 4), np.int32)
            self.boxes[:, [0, 2]] = np.iinfo(np.int32).max
            for col, reduce in (
                (0, np.minimum),
                (1, np.maximum),
                (2, np.minimum),
                (3, np.maximum),
            ):
                reduce.at(self.boxes[:, col], comp, corners[:, col])

    def _pair(self, a: np.ndarray, b: np.ndarray, ka: int, kb: int) -> np.ndarray:
        """Provisional ids (from 0) of the foreground pixel pairs ``a``-``b`` of blocks ka, kb."""
        both = (a > 0) & (b > 0)
        flat = self.offsets.ravel()
        return np.stack([a[both] + flat[ka] - 1, b[both] + flat[kb] - 1]).astype(np.int64)

    def read(self, ids: Any, window: Window) -> np.ndarray:
        """Component + 1 of every pixel of ``window`` (0: background)."""
        local = np.asarray(ids[window]).astype(np.int64)
        rows = np.arange(window[0].start, window[0].stop) // self.block
        cols = np.arange(window[1].start, window[1].stop) // self.block
        return self.lut[np.where(local > 0, local + self.offsets[np.ix_(rows, cols)], 0)]


@dataclass(frozen=True)
class _Relabel:
    """Final ids from component + 1 (and, with ``split``, the pieces of each owner's objects)."""

    base: np.ndarray  # per component + 1: its id, or (split) the id before its owner's pieces
    split: bool
    n_objects: int

    def __call__(self, comp: np.ndarray, pieces: np.ndarray | None) -> np.ndarray:
        if pieces is None:
            return self.base[comp]
        return np.where(pieces > 0, self.base[comp] + pieces, 0)


def _kept_ids(comps: _Components, min_size: int) -> _Relabel:
    kept = comps.area >= min_size
    base = np.zeros(len(kept) + 1, np.int64)
    base[1:][kept] = np.arange(1, int(kept.sum()) + 1)
    return _Relabel(base, False, int(kept.sum()))


def _owners(comps: _Components, blocks: list[Window], min_size: int) -> list[np.ndarray]:
    """The kept components each block owns (their box starts in it)."""
    kept, boxes = comps.area >= min_size, comps.boxes
    assert boxes is not None, "the blocks were summarised without their boxes"
    return [
        np.flatnonzero(
            kept
            & (boxes[:, 0] >= r.start)
            & (boxes[:, 0] < r.stop)
            & (boxes[:, 2] >= c.start)
            & (boxes[:, 2] < c.stop)
        )
        for r, c in blocks
    ]


def _owner_window(comps: _Components, owned: np.ndarray, shape: tuple[int, int]) -> Window:
    """The owned objects' boxes and the background ring around them (for distances)."""
    assert comps.boxes is not None, "the blocks were summarised without their boxes"
    boxes = comps.boxes[owned]
    r0, r1 = max(int(boxes[:, 0].min()) - 1, 0), min(int(boxes[:, 1].max()) + 1, shape[0])
    c0, c1 = max(int(boxes[:, 2].min()) - 1, 0), min(int(boxes[:, 3].max()) + 1, shape[1])
    return slice(r0, r1), slice(c0, c1)


def _split_owned(
    ids: Any, source: Any, comps: _Components, owned: np.ndarray, window: Window, min_distance: int
) -> int:
    """Split one block's objects whole into ``source`` (pieces 1..k); returns k."""
    comp = comps.read(ids, window)
    mine = np.isin(comp, owned + 1)
    origin = (window[0].start, window[1].start)
    pieces = split_touching(np.where(mine, comp, 0), min_distance, origin)
    source[window] = np.where(mine, pieces, np.asarray(source[window])).astype(np.uint32)
    return int(pieces.max())


def _piece_ids(comps: _Components, owners: list[np.ndarray], counts: list[int]) -> _Relabel:
    starts = np.cumsum(counts) - np.asarray(counts, np.int64)
    base = np.zeros(len(comps.area) + 1, np.int64)
    for owned, start in zip(owners, starts, strict=True):
        base[owned + 1] = start
    return _Relabel(base, True, int(np.sum(counts)))


def _grown_block(
    ids: Any,
    source: Any,
    comps: _Components,
    relabel: _Relabel,
    window: Window,
    shape: tuple[int, int],
    expand: int,
    fill_gaps: int,
) -> np.ndarray:
    """The final labels of one block, grown with a halo of the growing's reach."""
    # growing reads this far: expand, then the gaps between the grown cells
    reach = expand + (2 * (fill_gaps + 1) if fill_gaps else 0)
    reach += 1 if reach else 0
    rows, cols = window
    grown = (
        slice(max(rows.start - reach, 0), min(rows.stop + reach, shape[0])),
        slice(max(cols.start - reach, 0), min(cols.stop + reach, shape[1])),
    )
    lab = relabel(comps.read(ids, grown), None if source is None else np.asarray(source[grown]))
    if expand:
        lab = expand_labels(lab, expand)
    lab = close_gaps(lab, fill_gaps)
    core = (
        slice(rows.start - grown[0].start, rows.stop - grown[0].start),
        slice(cols.start - grown[1].start, cols.stop - grown[1].start),
    )
    return lab[core].astype(np.uint32, copy=False)


def _check(mask: Any, out: Any, block: int) -> tuple[int, int]:
    shape = (int(mask.shape[0]), int(mask.shape[1]))
    if len(mask.shape) != 2 or tuple(out.shape) != shape:
        raise ValueError(
            f"`mask` must be 2D and `out` of its shape, got {tuple(mask.shape)} and "
            f"{tuple(out.shape)}"
        )
    if int(block) != block or block < 1:
        raise ValueError(f"`block` must be a positive integer, got {block!r}")
    return shape


def iter_label_blocks(
    mask: Any,
    out: Any,
    *,
    min_size: int = 16,
    split: bool = False,
    min_distance: int = 5,
    expand: int = 0,
    fill_gaps: int = 0,
    block: int = DEFAULT_BLOCK,
    scratch: Allocator | None = None,
) -> Generator[BlockProgress, None, int]:
    """Label a 2D foreground mask block by block into ``out``.

    Parameters
    ----------
    mask : 2D array-like
        Foreground (nonzero), read block by block.
    out : writable 2D array-like of uint32
        Destination (numpy, zarr, memmap); every pixel is written.
    min_size, split, min_distance, expand, fill_gaps
        As in :func:`~napari_unet.core.postprocess.probabilities_to_labels`.
    block : int
        Block edge (pixels).
    scratch : callable, optional
        ``scratch(name, shape, dtype)`` makes a zero-filled writable array
        for provisional ids (numpy in memory if None; pass one that makes zarr
        arrays on disk to bound memory).

    Yields
    ------
    BlockProgress
        After every block of every stage.

    Returns
    -------
    n_objects : int
        Objects written (ids ``1 .. n_objects``).

    Examples
    --------
    >>> mask = np.zeros((6, 9), bool); mask[1:5, 2:8] = True
    >>> out = np.zeros((6, 9), np.uint32)
    >>> label_blocks(mask, out, min_size=1, block=4), int(out.max())
    (1, 1)
    """
    shape = _check(mask, out, block)
    make = scratch or _numpy_scratch
    blocks = _blocks(shape, int(block))
    total = len(blocks) * (3 if split else 2)
    ids = make("components", shape, np.uint32)
    summaries = []
    for k, window in enumerate(blocks):
        summaries.append(_summarise(mask[window], ids, window, min_size, split))
        yield BlockProgress(k + 1, total, "components")
    comps = _Components(summaries, _grid(shape, int(block)), int(block))
    done = len(blocks)
    source = None
    relabel = _kept_ids(comps, min_size)
    if split:
        source = make("objects", shape, np.uint32)
        owners = _owners(comps, blocks, min_size)
        counts = []
        for owned in owners:
            if owned.size:
                where = _owner_window(comps, owned, shape)
                counts.append(_split_owned(ids, source, comps, owned, where, min_distance))
            else:
                counts.append(0)
            done += 1
            yield BlockProgress(done, total, "objects")
        relabel = _piece_ids(comps, owners, counts)
    for window in blocks:
        out[window] = _grown_block(ids, source, comps, relabel, window, shape, expand, fill_gaps)
        done += 1
        yield BlockProgress(done, total, "growing")
    return relabel.n_objects


def label_blocks(mask: Any, out: Any, **options: Any) -> int:
    """Blocking :func:`iter_label_blocks` (same parameters); returns the object count."""
    return run_to_end(iter_label_blocks(mask, out, **options))


def label_blocks_dask(
    mask: Any,
    out: Any,
    *,
    min_size: int = 16,
    split: bool = False,
    min_distance: int = 5,
    expand: int = 0,
    fill_gaps: int = 0,
    block: int = DEFAULT_BLOCK,
    scratch: str | os.PathLike[str] | None = None,
    batch: int = LABEL_BATCH,
) -> int:
    """Label a lazy 2D foreground mask (a dask array) with tasks on the dask scheduler.

    The same passes as :func:`iter_label_blocks`, each block (or each
    block's objects) a task: on a cluster the blocks are computed and labelled
    by the workers, which share the provisional ids through zarr arrays in
    ``scratch``; the client joins the components from the blocks' edges and
    writes ``batch`` finished blocks at a time into ``out``.

    Parameters
    ----------
    mask : dask array of shape (M, N)
        Foreground (nonzero); rechunked to ``block``.
    out : writable 2D array-like of uint32
        Destination, written by this process (numpy, zarr, memmap, ...).
    min_size, split, min_distance, expand, fill_gaps, block
        As in :func:`iter_label_blocks`.
    scratch : path, optional
        Folder for the provisional ids (4 bytes per pixel, on disk; every
        worker must see it: on a cluster of several machines, a shared file
        system). None: a temporary folder, removed at the end.
    batch : int
        Finished blocks computed at once (memory: ``batch`` blocks of uint32).

    Returns
    -------
    n_objects : int
        Objects written (ids ``1 .. n_objects``).

    Examples
    --------
    >>> import dask.array as da
    >>> mask = np.zeros((6, 9), bool); mask[1:5, 2:8] = True
    >>> out = np.zeros((6, 9), np.uint32)
    >>> label_blocks_dask(da.from_array(mask), out, min_size=1, block=4), int(out.max())
    (1, 1)
    """
    import dask
    import dask.array as da
    import zarr

    shape = _check(mask, out, block)
    block = int(block)
    blocks = _blocks(shape, block)
    lazy = da.asarray(mask).rechunk((block, block)).to_delayed().ravel()
    folder = Path(tempfile.mkdtemp(prefix="napari-unet-labels-", dir=scratch))
    try:
        store = zarr.open_group(str(folder), mode="w")

        def array(name: str) -> Any:
            return store.zeros(name=name, shape=shape, chunks=(block, block), dtype="u4")

        ids = array("components")
        summarise = dask.delayed(_summarise, pure=True)
        summaries = dask.compute(
            *[summarise(b, ids, w, min_size, split) for b, w in zip(lazy, blocks, strict=True)]
        )
        comps = _Components(list(summaries), _grid(shape, block), block)
        relabel = _kept_ids(comps, min_size)
        source = None
        shared = dask.delayed(comps, pure=True)
        if split:
            source = array("objects")
            owners = _owners(comps, blocks, min_size)
            counts = [0] * len(owners)
            windows = {k: _owner_window(comps, o, shape) for k, o in enumerate(owners) if o.size}
            split_task = dask.delayed(_split_owned, pure=True)
            for wave in _waves(windows, block):
                done = dask.compute(
                    *[
                        split_task(ids, source, shared, owners[k], windows[k], min_distance)
                        for k in wave
                    ]
                )
                for k, n in zip(wave, done, strict=True):
                    counts[k] = n
            relabel = _piece_ids(comps, owners, counts)
        grow = dask.delayed(_grown_block, pure=True)
        shared_relabel = dask.delayed(relabel, pure=True)
        for first in range(0, len(blocks), max(int(batch), 1)):
            part = blocks[first : first + max(int(batch), 1)]
            labels = dask.compute(
                *[
                    grow(ids, source, shared, shared_relabel, w, shape, expand, fill_gaps)
                    for w in part
                ]
            )
            for window, lab in zip(part, labels, strict=True):
                out[window] = lab
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return relabel.n_objects


def _waves(windows: dict[int, Window], chunk: int) -> list[list[int]]:
    """Group the windows so that no two of a group write to the same chunk."""
    waves: list[tuple[set[tuple[int, int]], list[int]]] = []
    for k, (rows, cols) in windows.items():
        chunks = {
            (i, j)
            for i in range(rows.start // chunk, (rows.stop - 1) // chunk + 1)
            for j in range(cols.start // chunk, (cols.stop - 1) // chunk + 1)
        }
        for used, members in waves:
            if not used & chunks:
                used |= chunks
                members.append(k)
                break
        else:
            waves.append((chunks, [k]))
    return [members for _, members in waves]
