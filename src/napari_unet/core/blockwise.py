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

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.segmentation import expand_labels

from napari_unet.core.postprocess import close_gaps, split_touching
from napari_unet.core.progress import run_to_end

__all__ = ["DEFAULT_BLOCK", "BlockProgress", "iter_label_blocks", "label_blocks"]

#: Edge of the blocks labelled at once (pixels).
DEFAULT_BLOCK = 1024

Window = tuple[slice, slice]
#: Makes a scratch array: (name, shape, dtype) -> writable 2D array filled with 0.
Allocator = Callable[[str, tuple[int, int], Any], Any]


@dataclass(frozen=True)
class BlockProgress:
    """Progress of :func:`iter_label_blocks`: ``done`` of ``total`` block steps."""

    done: int
    total: int
    stage: str


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


def _components(
    mask: Any, ids: Any, blocks: list[Window], total: int, min_size: int
) -> Generator[BlockProgress, None, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Label the blocks of ``mask`` into ``ids`` and join components across block borders.

    Returns, over the provisional ids, the component of each (``lut``, 0 for
    background), and per component its area and bounding box
    (row start, row stop, column start, column stop).
    """
    offset = 0
    areas: list[np.ndarray] = []
    boxes: list[np.ndarray] = []
    joins: list[np.ndarray] = []
    for k, (rows, cols) in enumerate(blocks):
        local, n, area = _label_block(np.asarray(mask[rows, cols]), min_size)
        areas.append(area)
        box = [(r.start, r.stop, c.start, c.stop) for r, c in ndi.find_objects(local)]
        origin = np.array([rows.start, rows.start, cols.start, cols.start])
        boxes.append(np.array(box, np.int64).reshape(-1, 4) + origin)
        lab = np.where(local > 0, local + offset, 0).astype(np.uint32)
        ids[rows, cols] = lab
        # foreground pixels facing each other across the top and the left border
        if rows.start > 0:
            joins.append(np.stack([np.asarray(ids[rows.start - 1, cols]), lab[0]]))
        if cols.start > 0:
            joins.append(np.stack([np.asarray(ids[rows, cols.start - 1]), lab[:, 0]]))
        offset += n
        yield BlockProgress(k + 1, total, "components")
    pairs = np.concatenate(joins, axis=1).astype(np.int64) if joins else np.zeros((2, 0), int)
    pairs = pairs[:, (pairs[0] > 0) & (pairs[1] > 0)] - 1
    graph = coo_matrix((np.ones(pairs.shape[1]), (pairs[0], pairs[1])), shape=(offset, offset))
    n_comp, comp = connected_components(graph, directed=False)
    lut = np.concatenate([[0], comp + 1]).astype(np.int64)
    area = np.bincount(comp, weights=np.concatenate(areas), minlength=n_comp).astype(np.int64)
    corners = np.concatenate(boxes)
    merged = np.zeros((n_comp, 4), np.int64)
    merged[:, [0, 2]] = np.iinfo(np.int64).max
    for col, reduce in ((0, np.minimum), (1, np.maximum), (2, np.minimum), (3, np.maximum)):
        reduce.at(merged[:, col], comp, corners[:, col])
    return lut, area, merged


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
    shape = (int(mask.shape[0]), int(mask.shape[1]))
    if len(mask.shape) != 2 or tuple(out.shape) != shape:
        raise ValueError(
            f"`mask` must be 2D and `out` of its shape, got {tuple(mask.shape)} and "
            f"{tuple(out.shape)}"
        )
    if int(block) != block or block < 1:
        raise ValueError(f"`block` must be a positive integer, got {block!r}")
    make = scratch or _numpy_scratch
    blocks = _blocks(shape, int(block))
    # growing reads this far: expand, then the gaps between the grown cells
    reach = expand + (2 * (fill_gaps + 1) if fill_gaps else 0)
    reach += 1 if reach else 0
    total = len(blocks) * (3 if split else 2)
    ids = make("components", shape, np.uint32)
    lut, area, boxes = yield from _components(mask, ids, blocks, total, min_size)
    done = len(blocks)
    kept = area >= min_size
    # final ids: sequential over the kept components (split: their pieces)
    final = np.zeros(len(area) + 1, np.uint32)
    if not split:
        final[1:][kept] = np.arange(1, int(kept.sum()) + 1, dtype=np.uint32)
        source, lookup = ids, final[lut]
        n_objects = int(kept.sum())
    else:
        source, lookup = make("objects", shape, np.uint32), None
        n_objects = 0
        owner = [
            np.flatnonzero(
                kept
                & (boxes[:, 0] >= r.start)
                & (boxes[:, 0] < r.stop)
                & (boxes[:, 2] >= c.start)
                & (boxes[:, 2] < c.stop)
            )
            for r, c in blocks
        ]
        for owned in owner:
            if owned.size:
                # the objects' boxes and the background ring around them (distances)
                r0, r1 = int(boxes[owned, 0].min()) - 1, int(boxes[owned, 1].max()) + 1
                c0, c1 = int(boxes[owned, 2].min()) - 1, int(boxes[owned, 3].max()) + 1
                r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, shape[0]), min(c1, shape[1])
                window = (slice(r0, r1), slice(c0, c1))
                comp = lut[np.asarray(ids[window])]  # component + 1, 0 = background
                mine = np.isin(comp, owned + 1)
                pieces = split_touching(np.where(mine, comp, 0), min_distance, (r0, c0))
                pieces[pieces > 0] += np.uint32(n_objects)
                n_objects = max(n_objects, int(pieces.max()))
                source[window] = np.where(mine, pieces, np.asarray(source[window]))
            done += 1
            yield BlockProgress(done, total, "objects")
    for rows, cols in blocks:
        grown = (
            slice(max(rows.start - reach, 0), min(rows.stop + reach, shape[0])),
            slice(max(cols.start - reach, 0), min(cols.stop + reach, shape[1])),
        )
        lab = np.asarray(source[grown])
        if lookup is not None:
            lab = lookup[lab]
        if expand:
            lab = expand_labels(lab, expand)
        lab = close_gaps(lab, fill_gaps)
        core = (
            slice(rows.start - grown[0].start, rows.stop - grown[0].start),
            slice(cols.start - grown[1].start, cols.stop - grown[1].start),
        )
        out[rows, cols] = lab[core].astype(np.uint32, copy=False)
        done += 1
        yield BlockProgress(done, total, "growing")
    return n_objects


def label_blocks(mask: Any, out: Any, **options: Any) -> int:
    """Blocking :func:`iter_label_blocks` (same parameters); returns the object count."""
    return run_to_end(iter_label_blocks(mask, out, **options))
