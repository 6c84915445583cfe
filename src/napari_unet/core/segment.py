"""Whole-job segmentation: normalize, predict tiled, label, plane by plane.

This is the high-level prediction that the command line and the widgets run:
each plane is normalized with the settings stored in the model, predicted by
overlap-tile inference and turned into instance labels whose ids continue
from plane to plane (ids are unique in the whole stack; cells are not linked
across planes). Memory is bounded by one plane.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from skimage.segmentation import relabel_sequential

from napari_unet.core.background import InOrder
from napari_unet.core.checkpoint import suggested_diameter
from napari_unet.core.device import select_device
from napari_unet.core.io import read_array, release_pages
from napari_unet.core.linking import MinPlanes, PlaneLinker
from napari_unet.core.model import UNet
from napari_unet.core.postprocess import (
    FILL_GAPS,
    foreground_probability,
    probabilities_to_labels,
)
from napari_unet.core.predictor import (
    Predictor,
    TestTimeAugmentation,
    as_predictor,
    tile_for_core,
    tile_overhead,
)
from napari_unet.core.segment_config import SegmentConfig
from napari_unet.core.tiling import (
    as_channels_first,
    auto_batch_size,
    auto_tile_size,
    iter_predict_tiled,
    plan_tiles,
)

__all__ = [
    "ZOOM_RANGE",
    "PlaneDone",
    "SegmentProgress",
    "Window",
    "context_window",
    "count_batches",
    "iter_segment",
    "object_zoom",
    "resize",
    "resolve_tiling",
]

Window = tuple[slice, slice]


@dataclass(frozen=True)
class SegmentProgress:
    """Progress of :func:`iter_segment`, yielded after every batch of tiles.

    Attributes
    ----------
    done, total : int
        Batches of tiles finished and in the whole job (tiles on the CPU).
    plane, n_planes : int
        Position of the plane in the job and number of planes.
    index : tuple of int
        Index of the plane in the leading axes of the image (() for 2D).
    origin : (int, int)
        Plane coordinates of ``probabilities[:, 0, 0]``.
    probabilities : ndarray of float32, shape (n_classes, h, w)
        The buffer being filled for this plane (the region plus its context);
        the ``regions`` of it are final.
    regions : tuple of (slice, slice)
        Parts of ``probabilities`` written by this batch.
    message : str
        A notice for the user (e.g. an out-of-memory fallback), else "".
    """

    done: int
    total: int
    plane: int
    n_planes: int
    index: tuple[int, ...]
    origin: tuple[int, int]
    probabilities: np.ndarray
    regions: tuple[Window, ...]
    message: str = ""


@dataclass(frozen=True)
class PlaneDone:
    """One plane (or its region) segmented.

    Attributes
    ----------
    plane : int
        Position of the plane in the job (0-based).
    index : tuple of int
        Index of the plane in the leading axes of the image (() for 2D).
    n_planes : int
        Planes in the job.
    region : (slice, slice)
        The part of the plane that was segmented (the whole plane by default).
    labels : ndarray of uint32 (instances) or uint8 (mask), shape of ``region``
        Instance labels, ids offset to be unique across the job; or, for
        ``output="mask"``, the binary foreground mask (1 = foreground).
    probabilities : ndarray of float32, shape (n_classes, *shape of region)
    n_objects : int
        Cells found in this plane (0 for a mask).
    """

    plane: int
    index: tuple[int, ...]
    n_planes: int
    region: Window
    labels: np.ndarray
    probabilities: np.ndarray
    n_objects: int


def resolve_tiling(
    model: UNet,
    device: str | torch.device | None,
    tile_size: int | None = None,
    batch_size: int | None = None,
) -> tuple[torch.device, int, int]:
    """The device, input tile edge and tiles per batch a job will use.

    Raises
    ------
    ValueError
        If ``tile_size`` is smaller than the smallest tile the network can use
        (its context plus one output step): such tiles would be enlarged
        anyway, or, just above it, be mostly context and run for minutes.
    """
    dev = select_device(device)
    smallest = tile_for_core(model, model.step)
    if tile_size and int(tile_size) < smallest:
        raise ValueError(
            f"tile size {tile_size} is below the smallest tile this network can use "
            f"({smallest} px: {tile_overhead(model)} px of context + {model.step}); give at "
            f"least {smallest}, or 0 / none for automatic"
        )
    tile = int(tile_size) if tile_size else auto_tile_size(model, dev)
    batch = int(batch_size) if batch_size else auto_batch_size(model, dev, (tile, tile))
    return dev, tile, batch


def context_window(
    model: UNet, shape: tuple[int, int], region: Window, zoom: float = 1.0
) -> Window:
    """The part of a plane to predict so that ``region`` gets its full context.

    ``region`` is widened by the tiles' context on every side (clipped to the
    plane) and its start is aligned to ``2 ** depth``, so predictions inside
    ``region`` equal those of the whole plane. A plane rescaled by ``zoom``
    before prediction needs ``1 / zoom`` times the context.
    """
    context = math.ceil(tile_overhead(model) / min(zoom, 1.0))
    out = []
    for sl, n in zip(region, shape, strict=True):
        start = max(0, (sl.start - context) // model.step * model.step)
        out.append(slice(start, min(n, sl.stop + context)))
    return out[0], out[1]


def count_batches(
    model: UNet,
    shape: tuple[int, int],
    region: Window,
    tile_size: int,
    batch_size: int,
    zoom: float = 1.0,
) -> int:
    """Batches of tiles (progress events) :func:`iter_segment` runs per plane."""
    window = context_window(model, shape, region, zoom)
    size = (
        _zoomed(window[0].stop - window[0].start, zoom),
        _zoomed(window[1].stop - window[1].start, zoom),
    )
    plan = plan_tiles(model, size, tile_size)
    return math.ceil(len(plan.origins) / batch_size)


#: Rescaling for ``diameter`` is limited to these zooms.
ZOOM_RANGE = (0.1, 10.0)


def object_zoom(model: UNet, diameter: float | None) -> float:
    """Zoom that gives objects of ``diameter`` px the size ``model`` was trained on.

    1.0 when ``diameter`` is None or the model does not know its training size.
    """
    if diameter is None:
        return 1.0
    if not diameter > 0:
        raise ValueError(f"`diameter` must be > 0 pixels, got {diameter!r}")
    trained = suggested_diameter(model)
    if trained is None:
        return 1.0
    zoom = trained / diameter
    if not ZOOM_RANGE[0] <= zoom <= ZOOM_RANGE[1]:
        raise ValueError(
            f"`diameter` {diameter:g} px is too far from the {trained:.0f} px this model was "
            f"trained on (rescaling by {zoom:.3g} is outside {ZOOM_RANGE})"
        )
    return zoom


def _zoomed(n: int, zoom: float) -> int:
    return max(1, round(n * zoom))


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize the last two axes of a float32 (C, M, N) array (bilinear, antialiased)."""
    if tuple(image.shape[-2:]) == tuple(shape):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None]
    out = torch.nn.functional.interpolate(
        x, size=shape, mode="bilinear", align_corners=False, antialias=True
    )
    return out[0].numpy()


def _check_region(region: Window | None, shape: tuple[int, int]) -> Window:
    if region is None:
        return slice(0, shape[0]), slice(0, shape[1])
    out = tuple(slice(*sl.indices(n)[:2]) for sl, n in zip(region, shape, strict=True))
    if any(sl.stop <= sl.start for sl in out):
        raise ValueError(f"`region` {region} is empty for planes of shape {shape}")
    return out  # type: ignore[return-value]


def iter_segment(
    model: UNet,
    image: Any,
    *,
    planes: Iterable[tuple[int, ...]] | None = None,
    region: Window | None = None,
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
    diameter: float | None = SegmentConfig.diameter,
    output: Literal["instances", "mask"] = "instances",
    link: bool = SegmentConfig.link,
    link_iou: float = SegmentConfig.link_iou,
    link_bridge: int = SegmentConfig.link_bridge,
    link_min_planes: int = SegmentConfig.link_min_planes,
    precision: str = "auto",
) -> Generator[SegmentProgress | PlaneDone, None, int]:
    """Segment the planes of ``image``, yielding tile progress and finished planes.

    Parameters
    ----------
    model : UNet
        Network; its ``normalization`` is applied to every whole plane.
    image : array-like of shape (..., M, N) or (..., C, M, N)
        Lazy or in-memory image (see :func:`~napari_unet.core.iter_predict_tiled`).
    planes : iterable of tuple of int, optional
        Indices (into the leading axes) of the planes to segment; all if None.
    region : (slice, slice), optional
        Segment only this part of each plane (with its full context, so the
        result equals that part of a whole-plane segmentation).
    tile_size, batch_size, device, tta, precision
        Passed to :func:`~napari_unet.core.iter_predict_tiled`.
    threshold, min_size, split, expand, fill_gaps
        Passed to :func:`~napari_unet.core.probabilities_to_labels`; the
        defaults are :class:`~napari_unet.core.segment_config.SegmentConfig`'s
        (:meth:`SegmentConfig.segment_kwargs` resolves a model's own threshold
        and its task's output and gap filling).
    channel_axis : int, optional
        Channel axis for multi-channel models (default -3).
    first_label : int
        Id of the first cell; later cells count up from it.
    diameter : float, optional
        Typical object diameter (px) in ``image``. Each plane is rescaled so
        that objects have the size the model was trained on
        (:func:`~napari_unet.core.checkpoint.suggested_diameter`), predicted,
        and its probabilities are resized back; then the tile progress
        carries no regions, and one last progress event of the plane holds
        its resized probabilities. None (or a model that does not know its
        training size) predicts at the image's own scale.
    output : {"instances", "mask"}
        Instance labels, or the binary mask ``foreground > threshold`` (the
        output of a membranes model, :func:`~napari_unet.core.tasks.model_task`).
    link, link_iou, link_bridge, link_min_planes
        Link the instances of consecutive planes of the job by overlap
        (:class:`~napari_unet.core.linking.PlaneLinker`): an object keeps its
        id from plane to plane; ``n_objects`` of a plane counts the objects it
        starts. Only the previous planes' labels are held; with
        ``link_min_planes > 1`` objects in fewer planes are removed
        (:class:`~napari_unet.core.linking.MinPlanes`) and each plane is
        yielded ``link_min_planes - 1 + link_bridge`` planes late.

    Yields
    ------
    SegmentProgress or PlaneDone
        Progress after every batch of tiles, and each plane when it is finished.

    Returns
    -------
    next_label : int
        The id after the last cell written.
    """
    arr, lead, channels = as_channels_first(image, model.in_channels, channel_axis)
    shape = (int(arr.shape[-2]), int(arr.shape[-1]))
    todo = list(np.ndindex(*lead)) if planes is None else [tuple(p) for p in planes]
    for index in todo:
        if len(index) != len(lead) or any(
            not 0 <= i < n for i, n in zip(index, lead, strict=True)
        ):
            raise ValueError(f"plane index {index} is out of range for leading shape {lead}")
    if output not in ("instances", "mask"):
        raise ValueError(f"`output` must be 'instances' or 'mask', got {output!r}")
    if link and output == "mask":
        raise ValueError("linking needs instance labels: a membranes model writes a mask")
    linker = PlaneLinker(link_iou, link_bridge) if link else None
    keep = MinPlanes(linker, link_min_planes) if linker is not None else None
    target = _check_region(region, shape)
    zoom = object_zoom(model, diameter)
    dev, tile, batch = resolve_tiling(model, device, tile_size, batch_size)
    predictor: Predictor = as_predictor(model, dev, precision)  # on the device once
    if tta:
        predictor = TestTimeAugmentation(predictor)
    window = context_window(model, shape, target, zoom)
    local = tuple(
        slice(t.start - w.start, t.stop - w.start) for t, w in zip(target, window, strict=True)
    )
    origin = (window[0].start, window[1].start)
    whole = (
        slice(0, window[0].stop - window[0].start),
        slice(0, window[1].stop - window[1].start),
    )
    total = count_batches(model, shape, target, tile, batch, zoom) * len(todo)
    next_label, done = first_label, 0

    def prepare(index: tuple[int, ...]) -> np.ndarray:
        """The normalized context window of a plane, zoomed (in the reader thread)."""
        plane = read_array(arr, index)
        x = model.normalization(plane)[..., window[0], window[1]]
        del plane
        release_pages(arr)
        if zoom != 1.0:
            size = (int(x.shape[-2]), int(x.shape[-1]))
            x = resize(x.reshape(-1, *size), (_zoomed(size[0], zoom), _zoomed(size[1], zoom)))
            x = x if channels else x[0]
        return x

    def label(k: int, index: tuple[int, ...], prob: np.ndarray) -> tuple[Any, ...]:
        """The mask or the plane-local labels of the target region (in the post thread)."""
        kept = prob[(slice(None), *local)]
        if output == "mask":
            return k, index, (foreground_probability(kept) > threshold).astype(np.uint8), kept
        # label the region with its context, so that cells crossing its edge are
        # post-processed whole (size, gaps, splits) as in a whole-plane segmentation
        labels = probabilities_to_labels(
            prob,
            threshold=threshold,
            min_size=min_size,
            split=split,
            expand=expand,
            fill_gaps=fill_gaps,
        )[local]
        if prob.shape[1:] != kept.shape[1:]:
            labels = relabel_sequential(labels)[0]
        return k, index, labels, kept

    def finish(result: tuple[Any, ...]) -> Iterator[PlaneDone]:
        """Plane ids made global (or linked), in plane order."""
        nonlocal next_label
        k, index, labels, kept = result
        if output == "mask":
            yield PlaneDone(k, index, len(todo), target, labels, kept, 0)
        elif keep is not None and linker is not None:  # ids continue earlier planes' objects
            for (j, at, prob_of), final, n_new in keep.push(linker.link(labels), (k, index, kept)):
                final[final > 0] += np.uint32(first_label - 1)
                yield PlaneDone(j, at, len(todo), target, final, prob_of, n_new)
        else:
            n_objects = int(labels.max())
            labels[labels > 0] += np.uint32(next_label - 1)
            next_label += n_objects
            yield PlaneDone(k, index, len(todo), target, labels, kept, n_objects)

    # the next plane is read and the last one labelled while the network runs
    with InOrder[np.ndarray](1) as reader, InOrder[tuple[Any, ...]](1) as post:
        if todo:
            list(reader.submit(prepare, todo[0]))
        for k, index in enumerate(todo):
            [x] = reader.drain()
            if k + 1 < len(todo):
                list(reader.submit(prepare, todo[k + 1]))
            prob = np.zeros((model.n_classes, *x.shape[-2:]), np.float32)
            for event in iter_predict_tiled(
                predictor,
                x,
                tile_size=tile,
                batch_size=batch,
                device=dev,
                out=prob,
                channel_axis=-3 if channels else None,
            ):
                done += 1
                regions = tuple((rows, cols) for _, rows, cols in event.regions)
                yield SegmentProgress(
                    done,
                    max(total, done),
                    k,
                    len(todo),
                    index,
                    origin,
                    prob,
                    regions if zoom == 1.0 else (),
                    event.message,
                )
                for result in post.ready():
                    yield from finish(result)
            if zoom != 1.0:
                prob = resize(prob, (whole[0].stop, whole[1].stop))
                yield SegmentProgress(
                    done, max(total, done), k, len(todo), index, origin, prob, (whole,)
                )
            for result in post.submit(label, k, index, prob):
                yield from finish(result)
        for result in post.drain():
            yield from finish(result)
    if keep is not None:
        for (j, at, prob_of), final, n_new in keep.flush():
            final[final > 0] += np.uint32(first_label - 1)
            yield PlaneDone(j, at, len(todo), target, final, prob_of, n_new)
        next_label = first_label + keep.n_objects
    return next_label
