"""Training crops from a partly annotated image or stack.

An annotation is an instance label image (same shape as the image) plus
where it is valid: whole planes marked "fully annotated" and/or rectangles.
Inside those, unpainted pixels are background; everywhere else they are
unknown. If nothing is marked, every plane with painted cells counts as fully
annotated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Rectangle:
    """An annotated rectangle: rows ``y0:y1`` and columns ``x0:x1`` of a plane.

    ``plane`` is the index along the first axis of a (P, M, N) stack, or None
    for a 2D image.
    """

    plane: int | None
    y0: int
    y1: int
    x0: int
    x1: int


@dataclass(frozen=True)
class Crop:
    """One training example: image crop, label crop and annotated-region mask."""

    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    source: str


def painted_planes(labels: Any) -> list[int]:
    """Planes (first axis of a (P, M, N) array) that contain painted cells."""
    return [p for p in range(labels.shape[0]) if np.asarray(labels[p]).any()]


def training_crops(
    image: Any,
    labels: Any,
    *,
    planes: Sequence[int] = (),
    rectangles: Sequence[Rectangle] = (),
    channel_axis: int | None = None,
) -> list[Crop]:
    """Collect training examples from marked planes and rectangles.

    Parameters
    ----------
    image : array of shape (M, N) or (P, M, N); with channels (C, M, N) / (P, C, M, N)
        The image (lazy arrays are read plane by plane).
    labels : array of shape (M, N) or (P, M, N)
        Instance labels painted by the user (0 = unpainted).
    planes : sequence of int
        Fully annotated planes of a stack (ignored for 2D).
    rectangles : sequence of Rectangle
        Annotated rectangles.
    channel_axis : int, optional
        Channel axis of ``image`` (channels are moved first in the crops).

    Returns
    -------
    crops : list of Crop
        Empty annotations (no cell inside) are skipped.
    """
    if channel_axis is not None:
        image = np.moveaxis(np.asarray(image), channel_axis, -3)
    stack = labels.ndim == 3
    if labels.ndim not in (2, 3) or tuple(image.shape[-2:]) != tuple(labels.shape[-2:]):
        raise ValueError(
            f"`labels` must be 2D or 3D with the image's last two dimensions; got "
            f"labels {labels.shape}, image {image.shape}"
        )
    if stack and image.shape[0] != labels.shape[0]:
        raise ValueError(f"image has {image.shape[0]} planes but labels have {labels.shape[0]}")
    if not planes and not rectangles:
        planes = painted_planes(labels) if stack else ([0] if np.asarray(labels).any() else [])
    crops = []

    def plane_of(arr: Any, p: int | None) -> np.ndarray:
        return np.asarray(arr[p] if stack and p is not None else arr)

    for p in sorted(set(planes)) if stack else ([None] if planes else []):
        lab = plane_of(labels, p)
        if lab.any():
            crops.append(Crop(plane_of(image, p), lab, np.ones(lab.shape, bool), f"plane {p}"))
    for r in rectangles:
        if stack and r.plane is None:
            raise ValueError("rectangles on a stack need a plane index")
        lab = plane_of(labels, r.plane)
        y0, y1 = sorted((max(r.y0, 0), min(r.y1, lab.shape[0])))
        x0, x1 = sorted((max(r.x0, 0), min(r.x1, lab.shape[1])))
        if y1 - y0 < 1 or x1 - x0 < 1 or not lab[y0:y1, x0:x1].any():
            continue
        img = plane_of(image, r.plane)[..., y0:y1, x0:x1]
        crops.append(
            Crop(img, lab[y0:y1, x0:x1], np.ones((y1 - y0, x1 - x0), bool), f"rectangle {r}")
        )
    return crops


def region_mask(
    shape: tuple[int, int],
    plane: int | None,
    marked_planes: Sequence[int],
    rectangles: Sequence[Rectangle],
) -> np.ndarray | None:
    """Annotated pixels of one plane, following the training's rules.

    Parameters
    ----------
    shape : (rows, columns)
        Plane shape.
    plane : int or None
        Plane index (None for a 2D image, whose "plane" is 0 in ``marked_planes``).
    marked_planes : sequence of int
        Planes marked fully annotated.
    rectangles : sequence of Rectangle
        Annotated rectangles (any plane).

    Returns
    -------
    mask : bool ndarray of ``shape``, or None
        None when the whole plane is annotated: it is marked, or nothing at all
        is marked (then planes with cells count as annotated). Otherwise the
        union of the plane's rectangles (all False if it has none).
    """
    if not marked_planes and not rectangles:
        return None
    if (0 if plane is None else plane) in set(marked_planes):
        return None
    mask = np.zeros(shape, dtype=bool)
    for r in rectangles:
        if r.plane == plane:
            mask[max(r.y0, 0) : max(r.y1, 0), max(r.x0, 0) : max(r.x1, 0)] = True
    return mask
