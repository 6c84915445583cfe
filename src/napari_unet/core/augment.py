"""Data augmentation from the U-Net paper: elastic deformation, flips, rotations.

Ronneberger et al. (2015) deform training samples with "random displacement
vectors on a coarse 3 by 3 grid", drawn from a Gaussian with a standard
deviation of 10 pixels, and computed per-pixel displacements with bicubic
interpolation. :func:`elastic_deform` implements exactly that with torch;
:func:`augment_sample` adds flips, 90-degree rotations and mild intensity
changes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["augment_sample", "elastic_deform"]

_VALID_ORDERS = (0, 1, 3)
_TORCH_MODES = {1: "bilinear", 3: "bicubic"}


def elastic_deform(
    *arrays: np.ndarray,
    grid: int = 3,
    sigma: float = 10.0,
    orders: tuple[int, ...] | list[int] | None = None,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, ...]:
    """Warp arrays jointly with one random smooth displacement field.

    A displacement vector is drawn per node of a ``grid x grid`` lattice
    spanning the image (nodes on the corners, evenly spaced), each component
    ~ N(0, sigma**2) pixels, and upsampled to every pixel by bicubic
    interpolation. All arrays are resampled at the displaced positions with
    mirror boundary handling (``d c b | a b c d | c b a``).

    Parameters
    ----------
    *arrays : np.ndarray
        Arrays of shape (Y, X) or (..., Y, X), all with the same (Y, X).
        Bool, integer and floating dtypes are supported.
    grid : int
        Number of lattice nodes along each axis (>= 2).
    sigma : float
        Standard deviation of the node displacements, in pixels (>= 0).
        ``sigma == 0`` returns unchanged copies.
    orders : sequence of int, optional
        Interpolation order per array: 0 (nearest), 1 (linear) or 3 (cubic).
        Default: 3 for the first array if it is floating point (the image),
        1 for the other floating-point arrays (e.g. weight maps) and 0 for
        bool and integer arrays (labels: values are never invented).
    rng : np.random.Generator or int or None
        Random generator or seed.

    Returns
    -------
    tuple of np.ndarray
        C-contiguous warped arrays with the input shapes and dtypes.

    Notes
    -----
    Order 0 indexes the input with rounded integer coordinates, so any label
    id is kept exactly. Orders 1 and 3 are computed in float32 with
    ``torch.nn.functional.grid_sample``; integer and bool results are rounded
    and clipped to the dtype's range.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    orders = _check_arrays_and_orders(arrays, orders)
    if isinstance(grid, bool) or not isinstance(grid, int | np.integer) or grid < 2:
        raise ValueError(f"grid must be an integer >= 2, got {grid!r}")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    if sigma == 0:
        return tuple(np.array(a, order="C") for a in arrays)

    shape = arrays[0].shape[-2:]
    nodes = _node_displacements(int(grid), float(sigma), np.random.default_rng(rng))
    with torch.no_grad():
        cy, cx = _sampling_coordinates(nodes, shape)
        out: dict[int, np.ndarray] = {}
        if 0 in orders:
            flat = _nearest_flat_index(cy, cx, shape)
            for i, order in enumerate(orders):
                if order == 0:
                    out[i] = _take_nearest(arrays[i], flat)
        for order, mode in _TORCH_MODES.items():
            chosen = [i for i, o in enumerate(orders) if o == order]
            if chosen:
                warped = _grid_sample([arrays[i] for i in chosen], cy, cx, mode)
                for i, values in zip(chosen, warped, strict=True):
                    out[i] = _cast(values, arrays[i].dtype)
    return tuple(out[i] for i in range(len(arrays)))


def augment_sample(
    image: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    rng: np.random.Generator | int | None = None,
    elastic: bool = True,
    grid: int = 3,
    sigma: float = 10.0,
    flips: bool = True,
    rot90: bool = True,
    intensity: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Randomly augment an (image, labels, weights) training sample jointly.

    Applied in this order: flips (each spatial axis with p = 0.5), a rotation
    by k * 90 degrees (k in 0..3 for square images, k in {0, 2} otherwise, so
    the shape is kept), the elastic deformation of :func:`elastic_deform`
    (image cubic, labels nearest, weights linear), then an intensity change
    of the image only: with ``lo, hi`` its min and max and ``t`` the image
    rescaled to [0, 1], ``image = (lo + (hi - lo) * t**gamma) * scale +
    offset * (hi - lo)`` with gamma ~ U(0.8, 1.25), scale ~ U(0.9, 1.1) and
    offset ~ U(-0.1, 0.1).

    Parameters
    ----------
    image : np.ndarray
        Floating-point image, (Y, X) or (C, Y, X), typically normalized.
    labels : np.ndarray
        Label image (Y, X); any value (e.g. -1 for "unknown") is preserved.
    weights : np.ndarray, optional
        Per-pixel loss weights (Y, X).
    rng : np.random.Generator or int or None
        Random generator or seed.
    elastic, flips, rot90, intensity : bool
        Enable each transform.
    grid, sigma
        Elastic deformation parameters, see :func:`elastic_deform`.

    Returns
    -------
    tuple
        ``(image, labels, weights)`` as new C-contiguous arrays with the input
        shapes and dtypes; ``weights`` is None if None was given.
    """
    image = np.asarray(image)
    if image.ndim < 2 or not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"image must be a floating-point (..., Y, X) array, got {image.dtype} {image.shape}"
        )
    arrays = [image, np.asarray(labels)]
    orders = [3, 0]
    if weights is not None:
        arrays.append(np.asarray(weights))
        orders.append(1)
    for name, array in zip(("labels", "weights"), arrays[1:], strict=False):
        if array.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"{name} must match the image's (Y, X) = {image.shape[-2:]}, got {array.shape}"
            )
    rng = np.random.default_rng(rng)

    if flips:
        for axis in (-1, -2):
            if rng.random() < 0.5:
                arrays = [np.flip(a, axis) for a in arrays]
    if rot90:
        square = image.shape[-1] == image.shape[-2]
        k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
        arrays = [np.rot90(a, k, axes=(-2, -1)) for a in arrays]
    if elastic:
        arrays = list(elastic_deform(*arrays, grid=grid, sigma=sigma, orders=orders, rng=rng))
    if intensity:
        arrays[0] = _random_intensity(arrays[0], rng)

    arrays = [np.array(a, order="C") for a in arrays]
    return arrays[0], arrays[1], arrays[2] if weights is not None else None


def _check_arrays_and_orders(
    arrays: tuple[np.ndarray, ...], orders: tuple[int, ...] | list[int] | None
) -> tuple[int, ...]:
    """Validate arrays (shapes, dtypes) and return one interpolation order per array."""
    if not arrays:
        raise ValueError("arrays must contain at least one array, got none")
    for i, a in enumerate(arrays):
        if a.ndim < 2 or 0 in a.shape:
            raise ValueError(
                f"arrays[{i}] must have at least 2 dimensions (..., Y, X), none empty, got "
                f"shape {a.shape}"
            )
        if a.shape[-2:] != arrays[0].shape[-2:]:
            raise ValueError(
                f"arrays[{i}] has spatial shape {a.shape[-2:]}, expected "
                f"{arrays[0].shape[-2:]} (the last two dims of arrays[0])"
            )
        if a.dtype.kind not in "biuf":
            raise ValueError(f"arrays[{i}] has unsupported dtype {a.dtype}")
        with np.errstate(over="ignore"):  # too large for float32 becomes inf: refused
            finite = a.dtype.kind != "f" or np.isfinite(a.astype(np.float32, copy=False)).all()
        if not finite:
            raise ValueError(f"arrays[{i}] holds NaN, infinite or float32-overflowing values")
    if orders is None:
        return tuple(
            (3 if i == 0 else 1) if a.dtype.kind == "f" else 0 for i, a in enumerate(arrays)
        )
    orders = tuple(orders)
    if len(orders) != len(arrays):
        raise ValueError(
            f"orders must have one entry per array ({len(arrays)}), got {len(orders)}: {orders}"
        )
    for i, order in enumerate(orders):
        if order not in _VALID_ORDERS:
            raise ValueError(f"orders[{i}] must be 0, 1 or 3, got {order!r}")
    return orders


def _node_displacements(grid: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Draw the (2, grid, grid) node displacements (dy, dx) in pixels."""
    return rng.normal(0.0, sigma, size=(2, grid, grid))


def _sampling_coordinates(
    nodes: np.ndarray, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upsample node displacements bicubically; return float32 (Y, X) source y and x.

    Bicubic interpolation is separable, so the (2, Y, X) field is ``Wy @ nodes @ Wx.T``
    with the 1-D weight matrices of :func:`_bicubic_weights` (much faster than
    ``F.interpolate`` on the full image, same result).
    """
    grid = nodes.shape[-1]
    wy = _bicubic_weights(grid, shape[0])
    wx = _bicubic_weights(grid, shape[1])
    field = wy @ torch.from_numpy(nodes.astype(np.float32)) @ wx.T
    cy = field[0] + torch.arange(shape[0], dtype=torch.float32)[:, None]
    cx = field[1] + torch.arange(shape[1], dtype=torch.float32)[None, :]
    return cy, cx


def _bicubic_weights(grid: int, size: int) -> torch.Tensor:
    """(size, grid) weights of bicubic ``align_corners=True`` upsampling from grid to size."""
    # Upsampling an identity image along its rows only; columns stay exact.
    eye = torch.eye(grid)[None, None]
    return F.interpolate(eye, size=(size, grid), mode="bicubic", align_corners=True)[0, 0]


def _reflect(coords: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror coordinates into [0, size - 1] about the edge pixel centers."""
    if size == 1:
        return torch.zeros_like(coords)
    period = 2 * (size - 1)
    coords = torch.remainder(coords.abs(), period)
    return torch.where(coords > size - 1, period - coords, coords)


def _nearest_flat_index(cy: torch.Tensor, cx: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """Flat (Y*X,) indices of the nearest source pixels, mirrored at the borders."""
    iy = torch.round(_reflect(cy, shape[0])).long()
    ix = torch.round(_reflect(cx, shape[1])).long()
    return (iy * shape[1] + ix).reshape(-1).numpy()


def _take_nearest(array: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Sample ``array`` (..., Y, X) at flat pixel indices, exactly for any dtype."""
    spatial = array.shape[-2] * array.shape[-1]
    return np.take(array.reshape(-1, spatial), flat, axis=1).reshape(array.shape)


def _grid_sample(
    arrays: list[np.ndarray], cy: torch.Tensor, cx: torch.Tensor, mode: str
) -> list[np.ndarray]:
    """Warp arrays in one batched float32 ``grid_sample`` call with mirror padding."""
    height, width = cy.shape
    # align_corners=True maps -1 and 1 to the centers of the edge pixels.
    gy = cy * (2.0 / max(height - 1, 1)) - 1.0
    gx = cx * (2.0 / max(width - 1, 1)) - 1.0
    stacked = np.concatenate([a.reshape(-1, height, width) for a in arrays]).astype(
        np.float32, copy=False
    )
    warped = F.grid_sample(
        torch.from_numpy(stacked)[None],
        torch.stack([gx, gy], dim=-1)[None],
        mode=mode,
        padding_mode="reflection",
        align_corners=True,
    )[0].numpy()
    splits = np.cumsum([a.size // (height * width) for a in arrays])[:-1]
    return [w.reshape(a.shape) for w, a in zip(np.split(warped, splits), arrays, strict=True)]


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast float32 results to ``dtype``, rounding and clipping for bool/integer dtypes."""
    if dtype.kind == "f":
        return np.ascontiguousarray(values, dtype=dtype)
    lo, hi = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    return np.clip(np.rint(values), lo, hi).astype(dtype)


def _random_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gamma, scale and offset relative to the image's intensity range."""
    gamma = rng.uniform(0.8, 1.25)
    scale = rng.uniform(0.9, 1.1)
    offset = rng.uniform(-0.1, 0.1)
    lo, hi = float(image.min()), float(image.max())
    span = hi - lo
    out = lo + span * ((image - lo) / span) ** gamma if span > 0 else image
    return (out * scale + offset * span).astype(image.dtype, copy=False)
