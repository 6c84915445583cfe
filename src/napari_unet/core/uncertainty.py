"""Where the network is unsure, and which window to annotate next.

:func:`uncertainty_map` turns the softmax probabilities of a prediction into a
per-pixel uncertainty in [0, 1]: the normalised entropy of the foreground
probability, 1 where it is 0.5 and 0 where it is 0 or 1. Probabilities
averaged over test-time flips and rotations (or given view by view) make it
count the disagreement of the views too. :func:`next_region` finds the window
of a plane or stack with the highest mean uncertainty that overlaps no
annotated pixel: the region whose annotation should teach the network most.
Both are plain functions on arrays (no network pass, no GUI).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from napari_unet.core.annotations import Rectangle

__all__ = ["SuggestedRegion", "next_region", "uncertainty_map"]


def _check_probabilities(prob: np.ndarray, name: str) -> None:
    if prob.dtype.kind not in "biuf":
        raise ValueError(f"`{name}` must be a real numeric array, got dtype {prob.dtype}")
    if prob.size and not (0 <= prob.min() and prob.max() <= 1):  # NaN fails both too
        raise ValueError(f"`{name}` must hold probabilities in [0, 1] (no NaN or infinity)")


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy (bits) of Bernoulli(p), with 0 log 0 = 0."""
    p = np.asarray(p, np.float64)
    out = np.zeros_like(p)
    for q in (p, 1.0 - p):
        inside = q > 0
        out[inside] -= q[inside] * np.log2(q[inside])
    return out


def uncertainty_map(prob: ArrayLike, *, views: bool = False) -> np.ndarray:
    """Per-pixel uncertainty in [0, 1]: the normalised entropy of the foreground probability.

    With ``p = 1 - P(background)`` the map is ``-(p log2 p + (1 - p)
    log2(1 - p))``: 1 where ``p = 0.5``, 0 where ``p`` is 0 or 1, and
    symmetric about 0.5 (0.47 at ``p`` = 0.1 or 0.9). Only foreground against
    background counts, so a model with more than two classes is scored on
    whether a pixel is background.

    With ``views=True`` the first axis of ``prob`` holds several predictions
    of the same plane(s) (e.g. test-time flips and rotations mapped back);
    the map is the entropy of their mean foreground probability. That is the
    views' mean entropy plus their disagreement (the mutual information
    between view and prediction, >= 0), so pixels where confident views
    contradict each other score high too (1 when half of the views say 0 and
    half say 1). The probabilities that
    :class:`~napari_unet.core.predictor.TestTimeAugmentation` averages give
    the same map as their 8 views with ``views=True``.

    Parameters
    ----------
    prob : array of shape (..., n_classes, M, N), or (M, N)
        Softmax probabilities (class 0 = background) as written by
        :func:`~napari_unet.core.predict_tiled` or ``napari-unet predict
        --probabilities``, or a 2D foreground probability; with ``views``, one
        more leading axis of views: (V, ..., n_classes, M, N) or (V, M, N).
    views : bool
        The first axis of ``prob`` indexes views of the same plane(s); they
        are averaged first.

    Returns
    -------
    ndarray of float32, shape (..., M, N)
        The uncertainty of every pixel, in [0, 1].

    Raises
    ------
    ValueError
        If ``prob`` is not numeric, holds values outside [0, 1] (or NaN), has
        fewer than 2 classes, or ``views`` is set with no views axis.

    Examples
    --------
    >>> fg = np.array([[0.0, 0.1, 0.5, 0.9, 1.0]])
    >>> print(uncertainty_map(np.stack([1 - fg, fg])).round(2))
    [[0.   0.47 1.   0.47 0.  ]]
    >>> two_views = np.array([[[0.0, 0.9]], [[1.0, 0.9]]])  # (V, M, N) foreground
    >>> print(uncertainty_map(two_views, views=True).round(2))
    [[1.   0.47]]
    """
    arr = np.asarray(prob)
    _check_probabilities(arr, "prob")
    if views:
        if arr.ndim < 3 or arr.shape[0] < 1:
            raise ValueError(
                f"`views=True` needs a leading axis of views: (V, ..., n_classes, M, N) or "
                f"(V, M, N), got shape {arr.shape}"
            )
        arr = arr.mean(axis=0, dtype=np.float64)
    if arr.ndim == 2:
        fg = np.asarray(arr, np.float64)
    elif arr.ndim >= 3 and arr.shape[-3] >= 2:
        fg = 1.0 - np.asarray(arr[..., 0, :, :], np.float64)
    else:
        raise ValueError(
            f"`prob` must have shape (..., n_classes, M, N) with n_classes >= 2, or (M, N), "
            f"got {arr.shape}{' after averaging the views' if views else ''}"
        )
    return np.clip(_binary_entropy(fg), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class SuggestedRegion:
    """A window to annotate next: rows ``y0:y1`` and columns ``x0:x1`` of one plane.

    Attributes
    ----------
    plane : tuple of int
        Index of the plane in the leading axes (``()`` for a 2D image).
    y0, y1, x0, x1 : int
        The window's rows ``y0:y1`` and columns ``x0:x1``.
    score : float
        Mean uncertainty over the window.
    """

    plane: tuple[int, ...]
    y0: int
    y1: int
    x0: int
    x1: int
    score: float

    @property
    def rows(self) -> slice:
        """Rows of the window, ``slice(y0, y1)``."""
        return slice(self.y0, self.y1)

    @property
    def cols(self) -> slice:
        """Columns of the window, ``slice(x0, x1)``."""
        return slice(self.x0, self.x1)

    @property
    def window(self) -> tuple[slice, slice]:
        """``(rows, cols)``, to index a plane."""
        return self.rows, self.cols

    @property
    def center(self) -> tuple[float, float]:
        """Centre of the window (row, column), e.g. to move a camera there."""
        return (self.y0 + self.y1) / 2, (self.x0 + self.x1) / 2

    def as_rectangle(self) -> Rectangle:
        """The window as an annotation :class:`~napari_unet.core.annotations.Rectangle`.

        Raises
        ------
        ValueError
            If the plane has more than one leading index (a rectangle knows
            one plane axis).
        """
        from napari_unet.core.annotations import Rectangle

        if len(self.plane) > 1:
            raise ValueError(
                f"a Rectangle has one plane axis; this window is in plane {self.plane}"
            )
        plane = self.plane[0] if self.plane else None
        return Rectangle(plane, self.y0, self.y1, self.x0, self.x1)


def _window_sums(values: np.ndarray, h: int, w: int) -> np.ndarray:
    """Sums over every h x w window (top-left corners), from a summed-area table."""
    table = np.zeros((values.shape[0] + 1, values.shape[1] + 1), values.dtype)
    np.cumsum(values, axis=0, out=table[1:, 1:])
    np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    return table[h:, w:] - table[:-h, w:] - table[h:, :-w] + table[:-h, :-w]


def _grid(n: int, size: int, stride: int) -> np.ndarray:
    """Window starts on a grid of ``stride``, plus the last one at the far edge."""
    starts = np.arange(0, n - size + 1, stride)
    return starts if starts[-1] == n - size else np.append(starts, n - size)


def _window_size(size: int | tuple[int, int]) -> tuple[int, int]:
    try:
        pair = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    except TypeError:  # not iterable: a float, None, ...
        pair = ()
    if len(pair) != 2 or not all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) and s >= 1 for s in pair
    ):
        raise ValueError(f"`size` must be an int >= 1 or a pair of them, got {size!r}")
    return int(pair[0]), int(pair[1])


def next_region(
    uncertainty: ArrayLike,
    size: int | tuple[int, int],
    *,
    annotated: ArrayLike | None = None,
    stride: int = 1,
) -> SuggestedRegion:
    """The most uncertain window of a plane or stack that overlaps no annotated pixel.

    Every window of ``size`` inside a plane is scored by its mean
    uncertainty (one summed-area table per plane, so all windows cost about
    as much as a pass over the plane); windows that contain an annotated
    pixel are skipped. Of equal scores (to 1e-9) the first window wins, in
    the order plane, row, column.

    Parameters
    ----------
    uncertainty : array of shape (M, N) or (..., M, N)
        Per-pixel uncertainty, e.g. from :func:`uncertainty_map` (any finite
        values: higher = more in need of annotation).
    size : int or (int, int)
        Window edge (or rows, columns) in pixels; at most the plane's.
    annotated : array of the shape of ``uncertainty``, optional
        Nonzero where pixels are already annotated (a boolean mask, or the
        painted labels themselves); None = nothing annotated.
    stride : int
        Window starts are multiples of ``stride`` (plus the last start of a
        row or column, so the far edges are covered); 1 tries every window.
        In a plane where every grid window overlaps the annotation, every
        start is tried.

    Returns
    -------
    SuggestedRegion
        Plane index, rows, columns and mean uncertainty of the window.

    Raises
    ------
    ValueError
        If ``uncertainty`` has fewer than 2 dimensions, no planes, or
        non-finite values; ``size`` is not positive or exceeds the plane;
        ``stride`` < 1; ``annotated`` has another shape; or every window
        overlaps the annotated pixels (nothing left to annotate).

    Examples
    --------
    >>> u = np.zeros((8, 8), np.float32); u[4:6, 5:7] = 1.0; u[1:3, 1:3] = 0.5
    >>> r = next_region(u, 2)
    >>> r.plane, r.window, r.score
    ((), (slice(4, 6, None), slice(5, 7, None)), 1.0)
    >>> done = np.zeros((8, 8), bool); done[4:6, 5:7] = True
    >>> r = next_region(u, 2, annotated=done)
    >>> r.window, r.score
    ((slice(1, 3, None), slice(1, 3, None)), 0.5)
    """
    values = np.asarray(uncertainty)
    if values.ndim < 2:
        raise ValueError(
            f"`uncertainty` must have shape (M, N) or (..., M, N), got {values.shape}"
        )
    if values.dtype.kind not in "biuf":
        raise ValueError(f"`uncertainty` must be a real numeric array, got dtype {values.dtype}")
    if not np.isfinite(values).all():
        raise ValueError("`uncertainty` must be finite (no NaN or infinity)")
    lead, plane_shape = values.shape[:-2], values.shape[-2:]
    if not np.prod(lead, dtype=int) or not all(plane_shape):
        raise ValueError(f"`uncertainty` of shape {values.shape} has no planes to search")
    h, w = _window_size(size)
    if h > plane_shape[0] or w > plane_shape[1]:
        raise ValueError(
            f"`size` {h} x {w} is larger than the planes ({plane_shape[0]} x {plane_shape[1]})"
        )
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride < 1:
        raise ValueError(f"`stride` must be an int >= 1, got {stride!r}")
    mask = None
    if annotated is not None:
        mask = np.asarray(annotated)
        if mask.shape != values.shape:
            raise ValueError(
                f"`annotated` must have the shape of `uncertainty` {values.shape}, "
                f"got {mask.shape}"
            )
    ys, xs = _grid(plane_shape[0], h, stride), _grid(plane_shape[1], w, stride)
    on_grid = np.zeros((plane_shape[0] - h + 1, plane_shape[1] - w + 1), bool)
    on_grid[np.ix_(ys, xs)] = True
    best: SuggestedRegion | None = None
    for index in np.ndindex(*lead):
        allowed = on_grid
        if mask is not None:
            free = _window_sums((mask[index] != 0).astype(np.int64), h, w) == 0
            allowed = free & on_grid if (free & on_grid).any() else free
            if not allowed.any():
                continue
        means = _window_sums(values[index].astype(np.float64), h, w) / (h * w)
        scores = np.where(allowed, np.round(means, 9), -np.inf)
        y, x = np.unravel_index(int(np.argmax(scores)), scores.shape)
        if best is None or scores[y, x] > best.score:
            best = SuggestedRegion(
                tuple(int(i) for i in index),
                int(y),
                int(y) + h,
                int(x),
                int(x) + w,
                float(scores[y, x]),
            )
    if best is None:
        raise ValueError(
            f"every {h} x {w} window overlaps the annotated pixels: nothing left to annotate "
            f"(give a smaller `size`)"
        )
    return best
