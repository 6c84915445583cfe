"""From class probabilities to instance labels.

A 2-class U-Net trained with the paper's weight maps leaves thin background
gaps between touching cells, so instances are the connected components of the
thresholded foreground probability; small components are removed, and an
optional watershed on the distance transform splits cells still touching.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.segmentation import expand_labels, relabel_sequential, watershed

from napari_unet.core.weightmap import two_nearest_distances

__all__ = [
    "FILL_GAPS",
    "close_gaps",
    "foreground_probability",
    "object_diameter",
    "probabilities_to_labels",
    "split_touching",
]

#: Gap (px per cell) that segmentation gives back between touching cells by
#: default (:func:`close_gaps`); on held-out corpus images 1 px raised SEG by
#: 0.001 and 2 px lowered it by 0.008 (docs/benchmarks.md).
FILL_GAPS = 1


def foreground_probability(prob: np.ndarray) -> np.ndarray:
    """Foreground probability of a (n_classes, M, N) array: 1 - P(background)."""
    return 1.0 - np.asarray(prob[0], dtype=np.float32)


def object_diameter(labels: ArrayLike | list[ArrayLike]) -> float | None:
    """Median equivalent-circle diameter (px) of the objects in instance label images.

    Parameters
    ----------
    labels : array or list of arrays
        Instance labels (0 = background), one image or several.

    Returns
    -------
    diameter : float or None
        ``median(sqrt(4 * area / pi))`` over all objects; None if there are none.

    Examples
    --------
    >>> labels = np.zeros((20, 20), int); labels[:10, :10] = 1
    >>> round(object_diameter(labels), 2)
    11.28
    """
    items = labels if isinstance(labels, list) else [labels]
    areas = [np.bincount(np.asarray(lab).ravel())[1:] for lab in items]
    found = np.concatenate(areas) if areas else np.zeros(0)
    found = found[found > 0]
    if not found.size:
        return None
    return float(np.median(np.sqrt(4 * found / np.pi)))


def close_gaps(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """Give touching cells back the pixels between them, without merging or growing elsewhere.

    Training separates touching cells by making their shared boundary pixels
    background (:func:`~napari_unet.core.dataset.separate_touching`), so the
    predicted cells stop short of each other. A background pixel at distance
    ``d1 <= width + 0.5`` from its nearest cell (diagonal neighbours included)
    and ``d2`` from the second-nearest one lies in the gap between them when
    ``d1 + d2 <= 2 * (width + 1)`` (the paper's weight-map distances); it is
    given to the nearest cell. Elsewhere (a cell's outer edge) background
    stays background. On touching disks separated as in training, ``width=1``
    gives back ~90 % of the removed pixels.

    Parameters
    ----------
    labels : ndarray of int, shape (M, N)
        Instance labels (0 = background).
    width : int
        Pixels each cell may grow into the gap.

    Returns
    -------
    ndarray
        Labels with the same ids (no cell is merged, added or removed).

    Examples
    --------
    >>> close_gaps(np.array([[1, 1, 0, 0, 2, 2, 0, 0, 0]]), 1).tolist()
    [[1, 1, 1, 2, 2, 2, 0, 0, 0]]
    """
    if width < 1 or not labels.any():
        return labels
    gap = 2 * (width + 1)
    d1, d2 = two_nearest_distances(labels, gap)
    between = (labels == 0) & (d1 <= width + 0.5) & (d1 + d2 <= gap)
    return _give_nearest_label(labels, between, width + 0.5)


def _give_nearest_label(labels: np.ndarray, where: np.ndarray, reach: float) -> np.ndarray:
    """``labels`` with each pixel of ``where`` given the label of its nearest cell pixel.

    Every such pixel must have a cell pixel within ``reach``. Neighbours are
    tried nearest first, equal distances in a fixed order of offsets, so the
    choice depends on the pixel's surroundings only (the same in any crop).
    A whole-plane :func:`~skimage.segmentation.expand_labels` did the same at
    ~3x the cost of the rest of the post-processing (1024² plane, 700 cells).
    """
    rows, cols = np.nonzero(where)
    found = np.zeros(rows.size, labels.dtype)
    r = int(reach)
    offsets = sorted(
        ((dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)),
        key=lambda o: (o[0] ** 2 + o[1] ** 2, o),
    )
    for dy, dx in offsets[1:]:  # offsets[0] is the pixel itself
        if dy * dy + dx * dx > reach * reach:
            break
        todo = np.flatnonzero(found == 0)
        if not todo.size:
            break
        y, x = rows[todo] + dy, cols[todo] + dx
        inside = (y >= 0) & (y < labels.shape[0]) & (x >= 0) & (x < labels.shape[1])
        found[todo[inside]] = labels[y[inside], x[inside]]
    out = labels.copy()
    out[rows, cols] = found
    return out


def split_touching(
    labels: np.ndarray, min_distance: int = 5, origin: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """Split touching cells by a watershed on the distance transform of each object.

    Every object is split at the saddles of its distance to the background,
    one piece per local maximum at least ``min_distance`` px from the others
    in it. Equal distances are flooded in the order of their plane
    coordinates, so an object's pieces depend on its own pixels only, not on
    the other objects in the array or where the array was cut from a plane.

    Parameters
    ----------
    labels : integer ndarray of shape (M, N)
        Objects (0 = background).
    min_distance : int
        Smallest distance (pixels) between two cell centres.
    origin : (int, int)
        Plane coordinates of ``labels[0, 0]`` (for a crop of a plane).

    Returns
    -------
    ndarray of int32
        The pieces, numbered from 1.
    """
    if not labels.any():
        return np.zeros(labels.shape, np.int32)
    dist = ndi.distance_transform_edt(labels > 0)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=labels, exclude_border=False)
    markers = np.zeros(labels.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # flood by rank: no two pixels tie, so the order is the same in any crop
    rows, cols = np.indices(labels.shape)
    order = np.lexsort(((cols + origin[1]).ravel(), (rows + origin[0]).ravel(), -dist.ravel()))
    rank = np.empty(labels.size, np.int64)
    rank[order] = np.arange(labels.size)
    return watershed(rank.reshape(labels.shape), markers, mask=labels > 0)


def _plane_labels(
    fg: np.ndarray,
    threshold: float,
    min_size: int,
    split: bool,
    min_distance: int,
    expand: int,
    gaps: int = 0,
) -> np.ndarray:
    mask = fg > threshold
    labels, _ = ndi.label(mask)
    if min_size > 1:
        labels[np.bincount(labels.ravel())[labels] < min_size] = 0
    if split:
        labels = split_touching(labels, min_distance)
    if expand:
        labels = expand_labels(labels, expand)
    labels = close_gaps(labels, gaps)
    return relabel_sequential(labels)[0].astype(np.uint32, copy=False)


def probabilities_to_labels(
    prob: ArrayLike,
    *,
    threshold: float = 0.5,
    min_size: int = 16,
    split: bool = False,
    min_distance: int = 5,
    expand: int = 0,
    fill_gaps: int = 0,
) -> np.ndarray:
    """Turn softmax probabilities into instance labels.

    Parameters
    ----------
    prob : array of shape (n_classes, M, N) or (..., n_classes, M, N), or (M, N)
        Class probabilities (class 0 = background) as returned by
        :func:`~napari_unet.core.predict_tiled`, or a 2D foreground probability.
    threshold : float
        Pixels whose foreground probability exceeds this are cells.
    min_size : int
        Objects smaller than this many pixels are removed.
    split : bool
        Split touching cells by a watershed on the distance transform.
    min_distance : int
        Smallest distance (pixels) between two cell centres when splitting.
    expand : int
        Grow every cell by this many pixels into the background without
        merging cells (restores the boundary pixels that training with
        separated touching cells leaves out).
    fill_gaps : int
        Grow cells by up to this many pixels only into the gaps between
        touching cells (:func:`close_gaps`): their outer edges stay.

    Returns
    -------
    labels : ndarray of uint32, shape (M, N) or (..., M, N)
        0 = background, 1..K per cell; ids are unique across the planes of a
        stack (each plane continues where the previous stopped).

    Examples
    --------
    >>> p = np.zeros((2, 8, 8), np.float32); p[0] = 1
    >>> p[:, 1:4, 1:4] = [[[0]], [[1]]]; p[:, 5:8, 5:8] = [[[0]], [[1]]]
    >>> probabilities_to_labels(p, min_size=1).max()
    np.uint32(2)
    """
    prob = np.asarray(prob)
    if prob.dtype.kind not in "biuf":
        raise ValueError(f"`prob` must be a real numeric array, got dtype {prob.dtype}")
    if prob.size and not (0 <= prob.min() and prob.max() <= 1):  # NaN fails both too
        raise ValueError("`prob` must hold probabilities in [0, 1] (no NaN or infinity)")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"`threshold` must be in [0, 1], got {threshold}")
    if min_size < 0 or min_distance < 1 or expand < 0 or fill_gaps < 0:
        raise ValueError(
            f"`min_size`, `expand` and `fill_gaps` must be >= 0 and `min_distance` >= 1, got "
            f"{min_size}, {expand}, {fill_gaps}, {min_distance}"
        )
    if prob.ndim == 2:
        return _plane_labels(prob, threshold, min_size, split, min_distance, expand, fill_gaps)
    if prob.ndim < 3 or prob.shape[-3] < 2:
        raise ValueError(
            f"`prob` must have shape (..., n_classes, M, N) with n_classes >= 2, got {prob.shape}"
        )
    lead = prob.shape[:-3]
    out = np.zeros((*lead, *prob.shape[-2:]), dtype=np.uint32)
    offset = 0
    for index in np.ndindex(*lead):
        labels = _plane_labels(
            foreground_probability(prob[index]),
            threshold,
            min_size,
            split,
            min_distance,
            expand,
            fill_gaps,
        )
        out[index] = np.where(labels > 0, labels + offset, 0)
        offset += int(labels.max())
    return out
