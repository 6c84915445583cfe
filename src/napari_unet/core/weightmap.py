"""Pixel-wise loss weights from the U-Net paper.

Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical
Image Segmentation", MICCAI 2015, eq. 2::

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

``w_c`` balances the class frequencies, and the second (border) term makes the
thin background gaps between touching cells expensive to get wrong. ``d1`` and
``d2`` are the distances from a background pixel to the nearest and to the
second-nearest cell.

The border term is computed exactly wherever ``d1 + d2 <= cutoff`` and set to 0
beyond it, with ``cutoff = sigma * sqrt(2 * ln(1 / 1e-6))`` (about 5.26 sigma),
so the absolute error is at most ``1e-6 * w0``. This lets each cell's distance
transform be computed in a small window around it (its bounding box padded by
the cutoff), which keeps images with thousands of touching cells fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

__all__ = ["border_weight", "two_nearest_distances", "unet_weight_map"]

# The border term is dropped where it is below this fraction of w0.
_BORDER_REL_TOL = 1e-6


def unet_weight_map(
    labels: ArrayLike,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | Sequence[float] | None = "balanced",
    mask: ArrayLike | None = None,
) -> np.ndarray:
    """Compute the U-Net loss weight map (paper eq. 2) of an instance label image.

    Parameters
    ----------
    labels : integer or bool array of shape (..., Y, X)
        Instance labels: 0 is background, each cell has its own id (``True``
        is a single cell). Every 2D plane is processed on its own.
    w0 : float
        Height of the border term.
    sigma : float
        Width of the border term, in pixels.
    class_weights : "balanced", (w_background, w_foreground) or None
        ``"balanced"`` gives class ``c`` the weight ``N / (K * N_c)``, counted
        over the known pixels of each plane (``K`` = classes present);
        ``None`` gives 1 everywhere.
    mask : bool array of the same shape as ``labels``, optional
        Annotated region. Pixels outside it get weight 0 and do not count in
        the class balance; distances still use every cell of the plane.

    Returns
    -------
    weights : ndarray of float32, same shape as ``labels``

    Notes
    -----
    The border term is exact up to ``1e-6 * w0`` (see the module docstring).

    Examples
    --------
    Two one-pixel-wide cells with a two-pixel gap. Gap pixels have ``d1 = 1``
    and ``d2 = 2`` (weight ``1 + 10 * exp(-9 / 50)``), the outer columns
    ``d1 = 1`` and ``d2 = 4``:

    >>> labels = np.zeros((3, 6), dtype=np.uint8)
    >>> labels[:, 1], labels[:, 4] = 1, 2
    >>> w = unet_weight_map(labels, w0=10, sigma=5, class_weights=None)
    >>> print(np.round(w[0], 3))
    [7.065 1.    9.353 9.353 1.    7.065]
    """
    labels = _as_labels(labels)
    _check_border_params(w0, sigma)
    fixed_weights = _check_class_weights(class_weights)
    if mask is None:
        known = np.ones(labels.shape, dtype=bool)
    else:
        known = np.asarray(mask)
        if known.shape != labels.shape:
            raise ValueError(
                f"`mask` must have the shape of `labels` {labels.shape}, got {known.shape}"
            )
        known = known.astype(bool)

    planes = labels.reshape(-1, *labels.shape[-2:])
    known_planes = known.reshape(planes.shape)
    out = np.empty(planes.shape, dtype=np.float32)
    for i, (plane, plane_known) in enumerate(zip(planes, known_planes, strict=True)):
        foreground = plane != 0
        if fixed_weights is None:
            w_bg, w_fg = _balanced_weights(foreground[plane_known])
        else:
            w_bg, w_fg = fixed_weights
        weights = np.where(foreground, w_fg, w_bg) + _border_term(plane, w0, sigma)
        out[i] = np.where(plane_known, weights, 0.0)
    return out.reshape(labels.shape)


def border_weight(labels2d: ArrayLike, *, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """Compute only the border term ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))``.

    Parameters
    ----------
    labels2d : integer or bool array of shape (Y, X)
        Instance labels, 0 is background.
    w0, sigma : float
        Height and width (pixels) of the border term.

    Returns
    -------
    border : ndarray of float32, shape (Y, X)
        0 on cell pixels and everywhere if the plane has fewer than two cells.
    """
    labels2d = _as_labels(labels2d)
    if labels2d.ndim != 2:
        raise ValueError(f"`labels2d` must be 2D, got shape {labels2d.shape}")
    _check_border_params(w0, sigma)
    return _border_term(labels2d, w0, sigma).astype(np.float32)


def two_nearest_distances(plane: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Distances ``d1``, ``d2`` (px) from every pixel to the nearest and second-nearest cell.

    Only distances up to ``reach`` are exact: farther ones are ``inf``. Each
    cell's distance transform is computed in its bounding box padded by
    ``reach``, so this stays fast with thousands of cells.

    Parameters
    ----------
    plane : integer array of shape (Y, X)
        Instance labels (0 = background).
    reach : float
        Largest distance of interest.

    Returns
    -------
    (d1, d2) : pair of float64 arrays of shape (Y, X)
    """
    pad = math.ceil(reach)
    if plane.size and plane.max() > plane.size:  # sparse ids: keep find_objects small
        plane = np.unique(plane, return_inverse=True)[1].reshape(plane.shape)
    # running two smallest distances to distinct cells
    d1 = np.full(plane.shape, np.inf)
    d2 = np.full(plane.shape, np.inf)
    for label, box in enumerate(ndimage.find_objects(plane), start=1):
        if box is None:
            continue
        window = tuple(
            slice(max(s.start - pad, 0), min(s.stop + pad, n))
            for s, n in zip(box, plane.shape, strict=True)
        )
        dist = ndimage.distance_transform_edt(plane[window] != label)
        near1, near2 = d1[window], d2[window]  # views: updated in place
        np.minimum(near2, np.maximum(near1, dist), out=near2)
        np.minimum(near1, dist, out=near1)
    return d1, d2


def _border_term(plane: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """Border term (float64) of a validated 2D label plane."""
    # only d1, d2 <= cutoff matter
    cutoff = sigma * math.sqrt(2.0 * math.log(1.0 / _BORDER_REL_TOL))
    d1, d2 = two_nearest_distances(plane, cutoff)
    total = d1 + d2  # inf where fewer than two cells are within reach
    keep = (plane == 0) & (total <= cutoff)
    return np.where(keep, w0 * np.exp(-(total**2) / (2.0 * sigma**2)), 0.0)


def _balanced_weights(foreground: np.ndarray) -> tuple[float, float]:
    """Weights ``N / (K * N_c)`` of background and foreground from known pixels."""
    n = foreground.size
    n_fg = int(np.count_nonzero(foreground))
    n_bg = n - n_fg
    k = (n_bg > 0) + (n_fg > 0)
    w_bg = n / (k * n_bg) if n_bg else 0.0
    w_fg = n / (k * n_fg) if n_fg else 0.0
    return w_bg, w_fg


def _as_labels(labels: ArrayLike) -> np.ndarray:
    """Validate an instance label image and return it as an integer array."""
    labels = np.asarray(labels)
    if labels.ndim < 2:
        raise ValueError(f"`labels` must have at least 2 dimensions (Y, X), got {labels.ndim}")
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels) & (labels == np.round(labels))):
            raise ValueError("`labels` must hold integer values, got non-integer floats")
        if labels.size and np.abs(labels).max() > 2**53:  # floats are exact integers below
            raise ValueError(
                f"`labels` ids must be below 2**53 in a float array, got {np.abs(labels).max():g}"
            )
        labels = labels.astype(np.int64)
    elif not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`labels` must be an integer or bool array, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"`labels` must be non-negative, got minimum {labels.min()}")
    return labels


def _check_border_params(w0: float, sigma: float) -> None:
    if not (math.isfinite(w0) and w0 >= 0):
        raise ValueError(f"`w0` must be a finite number >= 0, got {w0!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"`sigma` must be a finite number > 0, got {sigma!r}")


def _check_class_weights(
    class_weights: str | Sequence[float] | None,
) -> tuple[float, float] | None:
    """Return fixed (background, foreground) weights, or None for ``"balanced"``."""
    if class_weights is None:
        return 1.0, 1.0
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(
                f"`class_weights` must be 'balanced', a (background, foreground) pair "
                f"or None, got {class_weights!r}"
            )
        return None
    values = np.asarray(class_weights, dtype=float)
    if values.shape != (2,) or not np.all(np.isfinite(values) & (values >= 0)):
        raise ValueError(
            f"`class_weights` must be two finite weights >= 0 (background, foreground), "
            f"got {class_weights!r}"
        )
    return float(values[0]), float(values[1])
