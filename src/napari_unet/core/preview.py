"""Live preview while training: segment a small window with the current weights.

The GUI thread says what to preview (:meth:`LivePreview.set_image`,
:meth:`LivePreview.set_window`: a plane and the part of it on screen, capped
at :data:`PREVIEW_MAX_SIZE` px a side); :func:`~napari_unet.core.iter_train`
polls :meth:`LivePreview.poll` between optimisation steps, in the training
thread, and yields the :class:`PreviewUpdate` it returns. The window is
segmented as the Predict widget's "visible field of view" would be (the
plane's normalization, the window's full context, the same labelling, so a
preview shows exactly what predicting the view with these weights gives), in
eval mode without gradients; training continues in train mode afterwards.

:class:`PreviewSchedule` keeps the previews from slowing training down: at
most one every :data:`PREVIEW_INTERVAL` seconds (sooner when the window
moved), and never more than :data:`PREVIEW_BUDGET` of the wall time. A slow
preview waits longer before the next one: previews get rarer, training does
not get slower.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from skimage.segmentation import relabel_sequential

from napari_unet.core.large_plane import plane_sample
from napari_unet.core.model import UNet
from napari_unet.core.postprocess import foreground_probability, probabilities_to_labels
from napari_unet.core.segment import context_window
from napari_unet.core.segment_config import SegmentConfig
from napari_unet.core.tiling import as_channels_first, predict_tiled

__all__ = [
    "PREVIEW_BUDGET",
    "PREVIEW_INTERVAL",
    "PREVIEW_MAX_SIZE",
    "LivePreview",
    "PreviewSchedule",
    "PreviewUpdate",
    "PreviewWindow",
    "cap_window",
    "predict_window",
]

#: Largest preview window edge (px); a larger view is previewed around its centre.
PREVIEW_MAX_SIZE = 512
#: Shortest time (s) between the end of a preview and the start of the next one.
PREVIEW_INTERVAL = 3.0
#: Largest share of the wall time spent in previews (the rest trains).
PREVIEW_BUDGET = 0.10

Window = tuple[slice, slice]


@dataclass(frozen=True)
class PreviewWindow:
    """What to preview: a plane (index into the leading axes) and a window of it."""

    index: tuple[int, ...]
    rows: slice
    cols: slice


@dataclass(frozen=True)
class PreviewUpdate:
    """A preview, yielded by :func:`~napari_unet.core.iter_train` between steps.

    Attributes
    ----------
    step : int
        The optimisation step whose weights made it.
    index : tuple of int
        Plane (index into the image's leading axes; () for a 2D image).
    region : (slice, slice)
        Rows and columns of the plane that ``labels`` covers.
    labels : ndarray of shape (h, w)
        Instance labels (ids from 1), or the binary mask of a membranes model,
        as :func:`~napari_unet.core.segment.iter_segment` makes them.
    foreground : ndarray of float32, shape (h, w)
        Foreground probability.
    seconds : float
        How long the preview took.
    """

    step: int
    index: tuple[int, ...]
    region: Window
    labels: np.ndarray
    foreground: np.ndarray
    seconds: float


def cap_window(
    rows: slice, cols: slice, shape: tuple[int, int], max_size: int = PREVIEW_MAX_SIZE
) -> Window:
    """Clip a window to a plane of ``shape`` and cap each side at its central ``max_size`` px.

    Examples
    --------
    >>> cap_window(slice(-10, 2000), slice(5, 50), (1000, 1000), 512)
    (slice(244, 756, None), slice(5, 50, None))
    """
    out = []
    for sl, n in zip((rows, cols), shape, strict=True):
        lo, hi = max(0, int(sl.start)), min(n, int(sl.stop))
        if hi - lo > max_size:
            lo = (lo + hi - max_size) // 2
            hi = lo + max_size
        out.append(slice(lo, hi))
    return out[0], out[1]


class PreviewSchedule:
    """When the next preview is due: not too often, and within a share of the wall time.

    After a preview of ``d`` seconds the next one waits at least
    ``max(interval, d * (1 - budget) / budget)`` seconds (``d * (1 - budget) /
    budget`` alone when the window moved), so previews never take more than
    ``budget`` of the time. The first preview is due at once.

    Parameters
    ----------
    interval : float
        Shortest wait (s) between previews of the same window.
    budget : float
        Largest share (0-1] of the wall time spent in previews.
    clock : callable
        Seconds (monotonic); tests pass a fake one.

    Examples
    --------
    >>> now = [0.0]
    >>> s = PreviewSchedule(interval=3.0, budget=0.1, clock=lambda: now[0])
    >>> s.due(), s.record(0.0, 1.0)  # a 1 s preview: the next waits 9 s
    (True, None)
    >>> now[0] = 9.5; s.due(), s.due(moved=True)
    (False, False)
    >>> now[0] = 10.0; s.due()
    True
    """

    def __init__(
        self,
        interval: float = PREVIEW_INTERVAL,
        budget: float = PREVIEW_BUDGET,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if interval < 0:
            raise ValueError(f"`interval` must be >= 0 seconds, got {interval!r}")
        if not 0 < budget <= 1:
            raise ValueError(f"`budget` must be in (0, 1], got {budget!r}")
        self.interval = float(interval)
        self.budget = float(budget)
        self.clock = clock
        self.count = 0
        self.spent = 0.0
        self._last_end: float | None = None
        self._last_seconds = 0.0

    def reset(self) -> None:
        """Forget the previews so far (a new run): the next one is due at once."""
        self.count, self.spent = 0, 0.0
        self._last_end, self._last_seconds = None, 0.0

    def wait(self, *, moved: bool = False) -> float:
        """Seconds the next preview waits after the end of the last one."""
        fair = self._last_seconds * (1 - self.budget) / self.budget
        return fair if moved else max(self.interval, fair)

    def due(self, *, moved: bool = False) -> bool:
        """Whether a preview may start now (``moved``: the window changed since the last)."""
        if self._last_end is None:
            return True
        return self.clock() - self._last_end >= self.wait(moved=moved)

    def record(self, start: float, end: float) -> None:
        """Note a preview that ran from ``start`` to ``end`` (clock seconds)."""
        self._last_end = end
        self._last_seconds = max(0.0, end - start)
        self.spent += self._last_seconds
        self.count += 1


def predict_window(
    net: UNet,
    image: Any,
    index: tuple[int, ...],
    region: Window,
    *,
    channel_axis: int | None = None,
    device: torch.device | str = "cpu",
    limits: tuple[np.ndarray, np.ndarray] | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Segment ``region`` of one plane as the Predict widget's "visible field of view".

    The plane is normalized with ``net.normalization`` (``limits`` of the whole
    plane, or of an even sample of a huge one), the region is predicted with
    its full context (mirrored only at the plane's borders), and labelled with
    that context, as :func:`~napari_unet.core.segment.iter_segment` does with
    ``region``: the labels and probabilities equal that of a whole-plane
    prediction inside the region.

    Parameters
    ----------
    net : UNet
        Applied as it is now (eval mode, no gradients; its mode is restored).
    image : array-like of shape (..., M, N) or (..., C, M, N)
    index : tuple of int
        The plane in the leading axes.
    region : (slice, slice)
        Rows and columns of the plane (clipped, non-empty).
    channel_axis : int, optional
        Channel axis of a multi-channel image if not -3.
    device : torch.device or str
    limits : pair of arrays, optional
        :meth:`~napari_unet.core.Normalization.limits` of the plane (computed if None).
    options : dict, optional
        Post-processing (:meth:`SegmentConfig.segment_kwargs`: ``threshold``,
        ``min_size``, ``split``, ``expand``, ``fill_gaps``, ``output``);
        ``SegmentConfig().segment_kwargs(net)`` if None.

    Returns
    -------
    labels : ndarray of shape (h, w)
    foreground : ndarray of float32, shape (h, w)
    """
    arr, lead, channels = as_channels_first(image, net.in_channels, channel_axis)
    shape = (int(arr.shape[-2]), int(arr.shape[-1]))
    if len(index) != len(lead):
        raise ValueError(f"plane index {index} does not fit the leading shape {lead}")
    if limits is None:
        limits = net.normalization.limits(plane_sample(arr, index, channels))
    opts = SegmentConfig().segment_kwargs(net) if options is None else options
    window = context_window(net, shape, region)
    chan = (slice(None),) if channels else ()
    x = net.normalization.apply(np.asarray(arr[(*index, *chan, *window)]), limits)
    prob = predict_tiled(net, x, device=device, channel_axis=-3 if channels else None)
    local = tuple(
        slice(r.start - w.start, r.stop - w.start) for r, w in zip(region, window, strict=True)
    )
    foreground = foreground_probability(prob[(slice(None), *local)])
    if opts.get("output", "instances") == "mask":
        return (foreground > opts["threshold"]).astype(np.uint8), foreground
    labels = probabilities_to_labels(
        prob,
        threshold=opts["threshold"],
        min_size=opts["min_size"],
        split=opts["split"],
        expand=opts["expand"],
        fill_gaps=opts["fill_gaps"],
    )[local]
    if prob.shape[1:] != labels.shape:  # cells cut at the region's edge: ids from 1 again
        labels = relabel_sequential(labels)[0]
    return labels, foreground


class LivePreview:
    """The window to preview while training, set from another thread, and its schedule.

    The GUI thread sets the image (:meth:`set_image`) and the window on screen
    (:meth:`set_window`, capped at ``max_size``) whenever the view changes;
    the training thread calls :meth:`poll` between steps. All methods are
    thread-safe.

    Parameters
    ----------
    image : array-like of shape (..., M, N) or (..., C, M, N), optional
        The image to preview (numpy, zarr, dask: only the window and its
        context are read, and the plane's normalization statistics once).
    channel_axis : int, optional
        Channel axis of a multi-channel image if not -3 (``-1`` for RGB).
    max_size : int
        Largest window edge (px).
    schedule : PreviewSchedule, optional
        When previews run; the defaults (:data:`PREVIEW_INTERVAL`,
        :data:`PREVIEW_BUDGET`) if None.

    Attributes
    ----------
    enabled : bool
        False: :meth:`poll` previews nothing (the window is kept).
    schedule : PreviewSchedule
    """

    def __init__(
        self,
        image: Any = None,
        *,
        channel_axis: int | None = None,
        max_size: int = PREVIEW_MAX_SIZE,
        schedule: PreviewSchedule | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"`max_size` must be >= 1 px, got {max_size!r}")
        self.max_size = int(max_size)
        self.schedule = schedule or PreviewSchedule()
        self.enabled = True
        self._lock = threading.Lock()
        self._image: Any = None
        self._channel_axis: int | None = None
        self._window: PreviewWindow | None = None
        self._shown: PreviewWindow | None = None  # the window of the last preview
        self._limits: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        if image is not None:
            self.set_image(image, channel_axis)

    def set_image(self, image: Any, channel_axis: int | None = None) -> None:
        """Preview ``image`` (None: nothing); the window and the schedule start afresh."""
        with self._lock:
            self._image, self._channel_axis = image, channel_axis
            self._window = self._shown = None
            self._limits = {}
            self.schedule.reset()

    def set_window(self, index: tuple[int, ...], rows: slice, cols: slice) -> PreviewWindow | None:
        """Preview ``rows`` x ``cols`` of plane ``index`` (clipped and capped); returns it.

        None (and nothing previewed) when there is no image or the window is
        empty after clipping.
        """
        with self._lock:
            image = self._image
        if image is None:
            return None
        shape = tuple(int(n) for n in image.shape)
        axis = self._channel_axis
        if axis is not None and axis % len(shape) >= len(shape) - 2:  # channels last (RGB)
            shape = shape[:-1]
        rows, cols = cap_window(rows, cols, (shape[-2], shape[-1]), self.max_size)
        window = None
        if rows.stop > rows.start and cols.stop > cols.start:
            window = PreviewWindow(tuple(int(i) for i in index), rows, cols)
        with self._lock:
            if image is self._image:
                self._window = window
        return window

    def clear_window(self) -> None:
        """Preview nothing until a window is set again (e.g. the view is 3D)."""
        with self._lock:
            self._window = None

    @property
    def window(self) -> PreviewWindow | None:
        """The window previewed next (None: none)."""
        with self._lock:
            return self._window

    def due(self) -> bool:
        """Whether :meth:`poll` would preview now."""
        with self._lock:
            ready = self._image is not None and self._window is not None
            moved = self._window != self._shown
        return self.enabled and ready and self.schedule.due(moved=moved)

    def poll(
        self,
        net: UNet,
        *,
        step: int,
        device: torch.device | str = "cpu",
        options: dict[str, Any] | None = None,
    ) -> PreviewUpdate | None:
        """Preview the window with ``net``'s current weights if one is due, else None.

        Parameters
        ----------
        net : UNet
            The network being trained (left in the mode it was in).
        step : int
            Its optimisation step (recorded in the update).
        device : torch.device or str
            Where ``net`` lives.
        options : dict, optional
            Post-processing, as for :func:`predict_window`.
        """
        if not self.due():
            return None
        with self._lock:
            image, axis, window = self._image, self._channel_axis, self._window
            limits = self._limits.get(window.index) if window is not None else None
        if image is None or window is None:
            return None
        clock = self.schedule.clock
        began = clock()
        if limits is None:
            arr, _, channels = as_channels_first(image, net.in_channels, axis)
            limits = net.normalization.limits(plane_sample(arr, window.index, channels))
        labels, foreground = predict_window(
            net,
            image,
            window.index,
            (window.rows, window.cols),
            channel_axis=axis,
            device=device,
            limits=limits,
            options=options,
        )
        ended = clock()
        self.schedule.record(began, ended)
        with self._lock:
            if image is self._image:
                self._limits[window.index] = limits
                self._shown = window
        return PreviewUpdate(
            step, window.index, (window.rows, window.cols), labels, foreground, ended - began
        )
