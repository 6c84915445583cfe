"""Training patches from a few (sparsely) annotated images.

Each annotated image becomes a :class:`Sample`: the normalized image, a
per-pixel class target (0 background, 1 cell, -1 unknown) and a per-pixel
loss weight (0 where unknown). Labels are instance ids; where two cells touch,
their boundary pixels become background, leaving a thin gap between them (as
in the paper's data, where membranes separate cells), and the weight map
makes those gaps count.

Patches are drawn around annotated pixels, read with mirrored borders like
the tiler, jointly augmented (flips, rotations, elastic deformation,
intensity), and cropped to the network's output for the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage as ndi
from skimage.transform import rescale

from napari_unet.core.augment import augment_sample
from napari_unet.core.preprocess import Normalization, check_finite
from napari_unet.core.tiling import reflect_indices
from napari_unet.core.train_config import Weighting
from napari_unet.core.weightmap import unet_weight_map

__all__ = [
    "UNKNOWN",
    "PatchSampler",
    "Sample",
    "Weighting",
    "as_instances",
    "prepare_sample",
    "rescale_annotation",
    "separate_touching",
    "training_weights",
]

UNKNOWN = -1


@dataclass
class Sample:
    """One annotated image, ready for patch sampling.

    Attributes
    ----------
    image : ndarray of float32, shape (C, M, N)
        Normalized image.
    target : ndarray of int8, shape (M, N)
        0 background, 1 cell, -1 unknown (outside the annotated region).
    weights : ndarray of float32, shape (M, N)
        Loss weight per pixel; 0 where unknown.
    labels : ndarray of int32, shape (M, N)
        Instance labels (after separating touching cells); 0 elsewhere.
    """

    image: np.ndarray
    target: np.ndarray
    weights: np.ndarray
    labels: np.ndarray

    @property
    def known(self) -> np.ndarray:
        """Pixels with a label (the annotated region)."""
        return self.target >= 0


def as_instances(labels: ArrayLike) -> np.ndarray:
    """Return int32 instance labels; a binary mask becomes its connected components."""
    labels = np.asarray(labels)
    if labels.dtype == bool or (labels.size and set(np.unique(labels)) <= {0, 1}):
        return ndi.label(labels > 0)[0].astype(np.int32)
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        else:
            raise ValueError(f"`labels` must hold integer instance ids, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("`labels` must not be negative (0 = background, 1.. = cells)")
    if labels.size and labels.max() > np.iinfo(np.int32).max:
        raise ValueError("`labels` ids must fit in int32")
    return labels.astype(np.int32)


def separate_touching(labels: np.ndarray) -> np.ndarray:
    """Set to 0 the pixels of a cell that touch (8-neighbourhood) a different cell.

    Examples
    --------
    >>> separate_touching(np.array([[1, 1, 2, 2]])).tolist()
    [[1, 0, 0, 2]]
    """
    big = np.iinfo(np.int32).max
    fg = labels > 0
    high = ndi.maximum_filter(labels, size=3, mode="nearest")
    low = ndi.minimum_filter(np.where(fg, labels, big), size=3, mode="nearest")
    touching = fg & ((high != labels) | (low != labels))
    return np.where(touching, 0, labels).astype(labels.dtype)


def training_weights(
    labels: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    weighting: Weighting = "border",
    w0: float = 10.0,
    sigma: float = 5.0,
    separate: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The instances and loss weights training uses for one annotated label plane.

    The one place that turns an annotation into weights: training
    (:func:`prepare_sample`) calls it, and so does
    :meth:`napari_unet.core.annotations.Annotation.targets`, which the Weight
    map widget and ``napari-unet weightmap`` show, so the map a user sees is
    the map training uses.

    Parameters
    ----------
    labels : array of shape (M, N)
        Instance labels (0 = background); a binary mask is split into its
        connected components.
    mask : bool array of shape (M, N), optional
        Annotated region (None = all); pixels outside get weight 0.
    weighting : {"unet", "border", "balanced", "none"}
        See :class:`~napari_unet.core.train_config.TrainConfig`.
    w0, sigma : float
        Border term parameters (paper: 10 and 5 px).
    separate : bool
        Make the boundary pixels between touching cells background first.

    Returns
    -------
    (instances, weights) : int32 and float32 arrays of shape (M, N)
        The (separated) instances, 0 outside ``mask``, and the weights.
    """
    instances = as_instances(labels)
    known = np.ones(instances.shape, bool) if mask is None else np.asarray(mask, bool)
    if known.shape != instances.shape:
        raise ValueError(f"`mask` shape {known.shape} differs from the labels' {instances.shape}")
    if separate:
        instances = separate_touching(instances)
    instances = np.where(known, instances, 0)
    if weighting in ("unet", "border"):
        balance = "balanced" if weighting == "unet" else None
        weights = unet_weight_map(instances, w0=w0, sigma=sigma, class_weights=balance, mask=known)
    elif weighting == "balanced":
        weights = unet_weight_map(instances, w0=0.0, sigma=sigma, mask=known)
    elif weighting == "none":
        weights = known.astype(np.float32)
    else:
        raise ValueError(
            f"`weighting` must be 'unet', 'border', 'balanced' or 'none', got {weighting!r}"
        )
    return instances, weights.astype(np.float32, copy=False)


def prepare_sample(
    image: ArrayLike,
    labels: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    in_channels: int = 1,
    normalization: Normalization | None = None,
    weighting: Weighting = "border",
    w0: float = 10.0,
    sigma: float = 5.0,
    separate: bool = True,
) -> Sample:
    """Normalize an image and turn its annotation into a target and loss weights.

    Parameters
    ----------
    image : array of shape (M, N) or (C, M, N)
        Raw image (any real dtype).
    labels : array of shape (M, N)
        Instance labels, 0 = background; a binary mask is split into its
        connected components.
    mask : bool array of shape (M, N), optional
        Annotated region; pixels outside it are unknown (weight 0). None means
        the whole image is annotated.
    in_channels : int
        Channels the model expects.
    normalization : Normalization, optional
        Per-image percentile normalization (default settings if None).
    weighting : {"unet", "border", "balanced", "none"}
        ``"unet"``: class balance + the paper's border term; ``"border"``: the
        border term on uniform class weights; ``"balanced"``:
        class balance only; ``"none"``: 1 for every annotated pixel.
    w0, sigma : float
        Border term parameters (paper: 10 and 5 px).
    separate : bool
        Make the boundary pixels between touching cells background.
    """
    image = np.asarray(image)
    if image.ndim == 2 and in_channels == 1:
        image = image[None]
    if image.ndim != 3:
        raise ValueError(
            f"`image` must be one plane, (M, N) or (channels, M, N), got {image.ndim}D shape "
            f"{image.shape} (pass the planes of a stack one by one)"
        )
    if image.shape[0] != in_channels:
        raise ValueError(
            f"`image` has {image.shape[0]} channels (shape {image.shape}) but the model "
            f"takes {in_channels}"
        )
    check_finite(image)
    labels = np.asarray(labels)
    if labels.shape != image.shape[1:]:
        raise ValueError(
            f"`labels` shape {labels.shape} differs from the image's {image.shape[1:]}"
        )
    instances = as_instances(labels)
    known = np.ones(labels.shape, bool) if mask is None else np.asarray(mask, bool)
    if known.shape != labels.shape:
        raise ValueError(f"`mask` shape {known.shape} differs from the labels' {labels.shape}")
    if not known.any():
        raise ValueError("the annotated region is empty: nothing to learn from")
    if not (instances[known] > 0).any():
        raise ValueError("the annotation has no cells (all labels are 0): paint some cells")
    # the same function the Weight map widget and `napari-unet weightmap` show
    # (as_instances is idempotent: the ids stay those checked above)
    instances, weights = training_weights(
        instances, known, weighting=weighting, w0=w0, sigma=sigma, separate=separate
    )
    target = np.where(known, (instances > 0).astype(np.int8), np.int8(UNKNOWN)).astype(np.int8)
    norm = normalization or Normalization()
    return Sample(norm(image), target, weights, instances)


def rescale_annotation(
    image: ArrayLike, labels: ArrayLike, mask: ArrayLike | None, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Resize an annotated image by ``scale`` (image linear, labels and mask nearest).

    Parameters
    ----------
    image : array of shape (M, N) or (C, M, N)
    labels : array of shape (M, N)
    mask : bool array of shape (M, N) or None
    scale : float
        Zoom factor (< 1 shrinks cells, > 1 grows them).
    """
    img, lab = np.asarray(image), np.asarray(labels)
    known = None if mask is None else np.asarray(mask, bool)
    if scale == 1.0:
        return img, lab, known
    axis = 0 if img.ndim == 3 else None
    img = rescale(
        img.astype(np.float32), scale, order=1, anti_aliasing=scale < 1, channel_axis=axis
    )
    lab = rescale(lab, scale, order=0, anti_aliasing=False, preserve_range=True)
    if known is not None:
        known = rescale(known, scale, order=0, anti_aliasing=False)
    return img, lab.astype(np.int64), known


class PatchSampler:
    """Draw augmented training batches from samples.

    Parameters
    ----------
    samples : list of Sample
    input_size : int
        Patch edge the network sees (a valid input size).
    output_size : int
        Edge of the network's output for that input (the target crop).
    rng : numpy Generator or int
    augment : bool
        Flips, 90-degree rotations, elastic deformation and intensity changes.
    elastic_sigma : float
        Standard deviation (px) of the elastic grid displacements.
    weights : sequence of float, optional
        Relative weight of each sample; a sample is drawn with probability
        proportional to its annotated area times its weight.
    """

    def __init__(
        self,
        samples: list[Sample],
        input_size: int,
        output_size: int,
        *,
        rng: np.random.Generator | int | None = None,
        augment: bool = True,
        elastic_sigma: float = 10.0,
        weights: Sequence[float] | None = None,
    ) -> None:
        if not samples:
            raise ValueError("no training samples")
        self.samples = samples
        self.input_size = input_size
        self.output_size = output_size
        self.rng = np.random.default_rng(rng)
        self.augment = augment
        self.elastic_sigma = elastic_sigma
        # sample images in proportion to their (weighted) annotated area
        self._known = [np.flatnonzero(s.known) for s in samples]
        sizes = np.array([len(k) for k in self._known], float)
        if weights is not None:
            sizes *= np.asarray(weights, float)
        self._p = sizes / sizes.sum()

    def _window(self, sample: Sample, known: np.ndarray) -> tuple[np.ndarray, ...]:
        h, w = sample.target.shape
        cy, cx = np.unravel_index(known[self.rng.integers(len(known))], (h, w))
        # the patch's output window contains the chosen annotated pixel
        jitter = self.rng.integers(0, self.output_size, size=2)
        y0 = cy - jitter[0] - (self.input_size - self.output_size) // 2
        x0 = cx - jitter[1] - (self.input_size - self.output_size) // 2
        rows = np.arange(y0, y0 + self.input_size)
        cols = np.arange(x0, x0 + self.input_size)
        inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
        rr, cc = np.ix_(reflect_indices(rows, h), reflect_indices(cols, w))
        image = sample.image[:, rr, cc]
        target = np.where(inside, sample.target[rr, cc], UNKNOWN).astype(np.int8)
        weights = np.where(inside, sample.weights[rr, cc], 0).astype(np.float32)
        return image, target, weights

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(x, y, w)``: images (B, C, P, P), int64 targets and weights (B, O, O)."""
        xs, ys, ws = [], [], []
        crop = (self.input_size - self.output_size) // 2
        out = slice(crop, crop + self.output_size)
        for _ in range(size):
            k = self.rng.choice(len(self.samples), p=self._p)
            image, target, weights = self._window(self.samples[k], self._known[k])
            if self.augment:
                image, target, moved = augment_sample(
                    image, target, weights, rng=self.rng, sigma=self.elastic_sigma
                )
                assert moved is not None  # weights in, weights out
                weights = moved
            xs.append(image)
            ys.append(target[out, out])
            ws.append(np.where(target[out, out] >= 0, weights[out, out], 0))
        y = np.stack(ys).astype(np.int64)
        return np.stack(xs).astype(np.float32), np.maximum(y, 0), np.stack(ws).astype(np.float32)
