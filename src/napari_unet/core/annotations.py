"""What is annotated in a partly painted image or stack, and its training targets.

An annotation (:class:`Annotation`) is an instance label image (same shape as
the image) plus where it is valid: whole planes marked "fully annotated"
and/or rectangles. Inside those, unpainted pixels are background; everywhere
else they are unknown. If nothing is marked, every plane with painted cells
counts as fully annotated.

:class:`Annotation` is the one place these rules live: training takes its
:meth:`~Annotation.crops`, and the Weight map widget and ``napari-unet
weightmap`` show its :meth:`~Annotation.targets`, which are the labels and loss
weights :func:`napari_unet.core.dataset.prepare_sample` trains on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from napari_unet.core.dataset import Weighting

__all__ = ["Annotation", "Crop", "PlaneTargets", "Rectangle", "training_crops"]


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


class PlaneTargets(NamedTuple):
    """The training targets of one plane of an :class:`Annotation`.

    Attributes
    ----------
    plane : int or None
        Plane index (None for a 2D image).
    labels : ndarray of int32, shape (M, N)
        Instances training learns: touching cells separated by a gap, 0
        outside the annotated region.
    weights : ndarray of float32, shape (M, N)
        Loss weight per pixel; 0 outside the annotated region.
    region : bool ndarray of shape (M, N), or None
        Annotated pixels (None = the whole plane).
    top : float
        Border-term height plus the largest class weight: a natural upper
        contrast limit to display ``weights``.
    """

    plane: int | None
    labels: np.ndarray
    weights: np.ndarray
    region: np.ndarray | None
    top: float

    @property
    def outside(self) -> bool:
        """Whether the plane has no annotated pixel (all its weights are 0)."""
        return self.region is not None and not self.region.any()

    @property
    def target(self) -> np.ndarray:
        """Per-pixel class as training sees it: 1 cell, 0 background, -1 unknown."""
        cells = (self.labels > 0).astype(np.int8)
        return cells if self.region is None else np.where(self.region, cells, np.int8(-1))


def _box(r: Rectangle, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """Rows and columns of ``r`` clipped to a plane of ``shape`` (possibly empty)."""
    rows, cols = shape[-2:]
    y0, y1 = sorted((r.y0, r.y1))
    x0, x1 = sorted((r.x0, r.x1))
    ys = slice(min(max(y0, 0), rows), min(max(y1, 0), rows))
    xs = slice(min(max(x0, 0), cols), min(max(x1, 0), cols))
    return ys, xs


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class Annotation:
    """Painted labels and where they are complete (marked planes, rectangles).

    Parameters
    ----------
    labels : array of shape (M, N) or (P, M, N)
        Instance labels painted by the user (0 = unpainted). Lazy arrays
        (dask, zarr, memmap) are read plane by plane.
    planes : sequence of int
        Fully annotated planes of a stack; for a 2D image, ``0`` means the
        image. Stored sorted, without duplicates.
    rectangles : sequence of Rectangle
        Annotated rectangles; on a stack each needs its ``plane`` (on a 2D
        image, ``plane`` 0 is taken as None).

    Notes
    -----
    Inside a marked plane or a rectangle, unpainted pixels are background;
    everywhere else labels are unknown (weight 0). When nothing is marked,
    every plane with painted cells counts as fully annotated.

    Examples
    --------
    Two cells, nothing marked: the whole image is annotated, and its targets
    are the labels and weights training uses.

    >>> labels = np.zeros((6, 8), np.uint8)
    >>> labels[1:3, 1:3], labels[3:5, 5:7] = 1, 2
    >>> ann = Annotation(labels)
    >>> ann.annotated_planes()
    [None]
    >>> t = ann.targets(None, w0=10, sigma=2)
    >>> t.weights.shape, t.weights.dtype.name, bool((t.weights > 0).all())
    ((6, 8), 'float32', True)

    On a stack, a rectangle makes only its pixels known:

    >>> stack = np.zeros((3, 6, 8), np.uint8)
    >>> stack[1, 1:3, 1:3] = 1
    >>> ann = Annotation(stack, rectangles=[Rectangle(1, 0, 4, 0, 4)])
    >>> ann.annotated_planes()
    [1]
    >>> int(ann.region(1).sum()), int((ann.targets(1).weights > 0).sum())
    (16, 16)
    >>> [c.source for c in ann.crops(stack.astype(np.float32))]
    ['rectangle Rectangle(plane=1, y0=0, y1=4, x0=0, x1=4)']
    """

    labels: Any
    planes: tuple[int, ...] = ()
    rectangles: tuple[Rectangle, ...] = ()

    def __post_init__(self) -> None:
        labels = self.labels
        if not hasattr(labels, "ndim") or not hasattr(labels, "shape"):
            labels = np.asarray(labels)
            object.__setattr__(self, "labels", labels)
        if labels.ndim not in (2, 3):
            raise ValueError(
                f"`labels` must be 2D (M, N) or a stack of planes (P, M, N), got "
                f"{labels.ndim}D shape {tuple(labels.shape)}"
            )
        n = self.n_planes
        planes = []
        for p in self.planes:
            if isinstance(p, bool) or not isinstance(p, int | np.integer):
                raise ValueError(f"`planes` must hold plane indices (int), got {p!r}")
            if not 0 <= p < n:
                where = "a 2D image (use 0 for the image)" if n == 1 else f"{n} planes"
                raise ValueError(f"plane {int(p)} in `planes` is out of range for {where}")
            planes.append(int(p))
        object.__setattr__(self, "planes", tuple(sorted(set(planes))))
        rectangles = []
        for r in self.rectangles:
            if not isinstance(r, Rectangle):
                raise ValueError(f"`rectangles` must hold Rectangle objects, got {r!r}")
            if not self.is_stack:
                if r.plane not in (None, 0):
                    raise ValueError(f"{r} is on plane {r.plane} but the labels are 2D")
                r = dataclasses.replace(r, plane=None)
            elif r.plane is None:
                raise ValueError(f"{r} has no plane: rectangles on a stack need a plane index")
            elif not 0 <= r.plane < n:
                raise ValueError(f"{r} is on plane {r.plane}, out of range for {n} planes")
            rectangles.append(r)
        object.__setattr__(self, "rectangles", tuple(rectangles))

    # ------------------------------------------------------------------ planes

    @property
    def is_stack(self) -> bool:
        """Whether the labels are a (P, M, N) stack."""
        return bool(self.labels.ndim == 3)

    @property
    def n_planes(self) -> int:
        """Number of planes (1 for a 2D image)."""
        return int(self.labels.shape[0]) if self.is_stack else 1

    @property
    def marked(self) -> bool:
        """Whether any plane or rectangle is marked annotated."""
        return bool(self.planes or self.rectangles)

    def _key(self, plane: int | None) -> int | None:
        """Validated plane index: an int for a stack, None for a 2D image."""
        if not self.is_stack:
            if plane not in (None, 0):
                raise ValueError(f"the labels are 2D: `plane` must be None, got {plane!r}")
            return None
        if plane is None or isinstance(plane, bool) or not isinstance(plane, int | np.integer):
            raise ValueError(f"`plane` must be a plane index of the stack, got {plane!r}")
        if not 0 <= plane < self.n_planes:
            raise ValueError(f"plane {plane} is out of range for {self.n_planes} planes")
        return int(plane)

    def _plane_of(self, array: Any, plane: int | None) -> np.ndarray:
        return np.asarray(array if plane is None else array[plane])

    def annotated_planes(self) -> list[int | None]:
        """The planes that hold training data, in order.

        Returns
        -------
        planes : list of int, or ``[None]`` / ``[]`` for a 2D image
            Marked planes and planes of rectangles; when nothing is marked,
            every plane with painted cells (each plane is read to find them).
        """
        if not self.is_stack:
            if self.marked or np.asarray(self.labels).any():
                return [None]
            return []
        if self.marked:
            found = set(self.planes) | {r.plane for r in self.rectangles if r.plane is not None}
            return [*sorted(found)]
        return [p for p in range(self.n_planes) if np.asarray(self.labels[p]).any()]

    def region(self, plane: int | None) -> np.ndarray | None:
        """Annotated pixels of one plane.

        Parameters
        ----------
        plane : int or None
            Plane index (None for a 2D image).

        Returns
        -------
        mask : bool ndarray of shape (M, N), or None
            None when the whole plane is annotated: it is marked, or nothing
            at all is marked. Otherwise the union of the plane's rectangles
            (all False if it has none).
        """
        key = self._key(plane)
        if not self.marked or (0 if key is None else key) in self.planes:
            return None
        mask = np.zeros(tuple(self.labels.shape[-2:]), dtype=bool)
        for r in self.rectangles:
            if r.plane == key:
                mask[_box(r, mask.shape)] = True
        return mask

    # ------------------------------------------------------------------ training

    def crops(self, image: Any, channel_axis: int | None = None) -> list[Crop]:
        """Training examples: each annotated plane and each rectangle with cells.

        Parameters
        ----------
        image : array of shape (M, N) or (P, M, N); with channels (C, M, N) / (P, C, M, N)
            The image the labels annotate (lazy arrays are read plane by plane).
        channel_axis : int, optional
            Channel axis of ``image`` (channels are moved first in the crops).

        Returns
        -------
        crops : list of Crop
            Marked planes (or, if nothing is marked, planes with cells) first,
            then rectangles; annotations without any cell are skipped. Each
            crop's ``mask`` is all True (the whole crop is annotated).
        """
        if channel_axis is not None:
            image = np.moveaxis(np.asarray(image), channel_axis, -3)
        if tuple(image.shape[-2:]) != tuple(self.labels.shape[-2:]):
            raise ValueError(
                f"`labels` must have the image's last two dimensions; got labels "
                f"{tuple(self.labels.shape)}, image {tuple(image.shape)}"
            )
        if self.is_stack and image.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"image has {image.shape[0]} planes but labels have {self.labels.shape[0]}"
            )
        whole: list[int | None]
        if not self.marked:
            whole = self.annotated_planes()  # every plane with cells
        elif self.is_stack:
            whole = list(self.planes)
        else:
            whole = [None] if self.planes else []
        crops = []
        for p in whole:
            lab = self._plane_of(self.labels, p)
            if lab.any():
                crops.append(
                    Crop(self._plane_of(image, p), lab, np.ones(lab.shape, bool), f"plane {p}")
                )
        for r in self.rectangles:
            lab = self._plane_of(self.labels, r.plane)
            ys, xs = _box(r, lab.shape)
            box = lab[ys, xs]
            if not box.size or not box.any():
                continue
            img = self._plane_of(image, r.plane)[..., ys, xs]
            crops.append(Crop(img, box, np.ones(box.shape, bool), f"rectangle {r}"))
        return crops

    def targets(
        self,
        plane: int | None,
        *,
        weighting: Weighting = "border",
        w0: float = 10.0,
        sigma: float = 5.0,
        separate: bool = True,
    ) -> PlaneTargets:
        """The training labels and loss weights of one plane.

        The map a user sees is the map training uses: this calls
        :func:`~napari_unet.core.dataset.training_weights`, the function
        :func:`~napari_unet.core.dataset.prepare_sample` trains with, on the
        plane's labels and :meth:`region` (labels outside are unknown:
        weight 0).

        Parameters
        ----------
        plane : int or None
            Plane index (None for a 2D image).
        weighting : {"border", "unet", "balanced", "none"}
            See :class:`~napari_unet.core.train_config.TrainConfig`.
        w0, sigma : float
            Border term height and width (pixels).
        separate : bool
            Make the boundary pixels between touching cells background first.

        Returns
        -------
        PlaneTargets

        Notes
        -----
        Training computes each rectangle on its own crop: the weights agree
        with this plane-wide map except near a rectangle's edge where a cell
        touches one outside it, and, with class balance, on planes with
        several rectangles (balanced per crop in training).
        """
        from napari_unet.core.dataset import training_weights

        key = self._key(plane)
        # a copy: the user may keep painting while this runs in a thread
        lab = np.array(self._plane_of(self.labels, key))
        region = self.region(key)
        labels, weights = training_weights(
            lab, region, weighting=weighting, w0=w0, sigma=sigma, separate=separate
        )
        known = np.ones(lab.shape, bool) if region is None else region
        fg = (labels != 0) & known
        bg = (labels == 0) & known
        # cells carry exactly their class weight; the far background carries its own
        class_max = max(
            float(weights[fg].max(initial=0.0)), float(weights[bg].min(initial=0.0)), 1.0
        )
        border = w0 if weighting in ("unet", "border") else 0.0
        return PlaneTargets(key, labels, weights, region, float(border + class_max))

    def iter_targets(
        self,
        planes: Sequence[int | None] | None = None,
        *,
        weighting: Weighting = "border",
        w0: float = 10.0,
        sigma: float = 5.0,
        separate: bool = True,
    ) -> Iterator[PlaneTargets]:
        """Yield :meth:`targets` plane by plane.

        Parameters
        ----------
        planes : sequence of int or None, optional
            Planes to compute; None means :meth:`annotated_planes` (found
            lazily, so a thread worker can run the search too).
        weighting, w0, sigma, separate
            As in :meth:`targets`.

        Yields
        ------
        PlaneTargets
        """
        if planes is None:
            planes = self.annotated_planes()
        for plane in planes:
            yield self.targets(plane, weighting=weighting, w0=w0, sigma=sigma, separate=separate)


def training_crops(
    image: Any,
    labels: Any,
    *,
    planes: Sequence[int] = (),
    rectangles: Sequence[Rectangle] = (),
    channel_axis: int | None = None,
) -> list[Crop]:
    """Collect training examples from marked planes and rectangles.

    Same as ``Annotation(labels, planes, rectangles).crops(image, channel_axis)``
    (see :class:`Annotation`).

    Parameters
    ----------
    image : array of shape (M, N) or (P, M, N); with channels (C, M, N) / (P, C, M, N)
        The image (lazy arrays are read plane by plane).
    labels : array of shape (M, N) or (P, M, N)
        Instance labels painted by the user (0 = unpainted).
    planes : sequence of int
        Fully annotated planes (for 2D, 0 means the image).
    rectangles : sequence of Rectangle
        Annotated rectangles.
    channel_axis : int, optional
        Channel axis of ``image`` (channels are moved first in the crops).

    Returns
    -------
    crops : list of Crop
        Empty annotations (no cell inside) are skipped.
    """
    return Annotation(labels, tuple(planes), tuple(rectangles)).crops(image, channel_axis)
