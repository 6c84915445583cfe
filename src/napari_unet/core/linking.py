"""Link per-plane instances across Z or time by overlap (IoU) matching.

:class:`PlaneLinker` takes the instance labels of a stack one plane at a
time, in order, and gives each object of a plane the id of the object of the
previous plane it overlaps best: a one-to-one assignment (Hungarian,
:func:`scipy.optimize.linear_sum_assignment`) of the pairs whose
intersection over union is at least ``iou_threshold``. Unmatched objects get
new ids. With ``bridge=1`` an object missing from one plane keeps its id when
it reappears in the next. Only the previous planes' labels are held.

For a time-lapse this is tracking by overlap, frame to frame. It is not a
tracker: there are no divisions (a dividing cell keeps its id in one
daughter, the other gets a new one), no motion model (a cell that moves by
more than about its radius between frames is a new object), and no merging
of tracks after a gap longer than ``bridge`` planes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from napari_unet.core.segment_config import SegmentConfig

__all__ = [
    "IOU_THRESHOLD",
    "LinkResult",
    "MinPlanes",
    "PlaneLinker",
    "link_planes",
    "match_by_iou",
]

#: Default smallest IoU for two objects of neighbouring planes to be one object
#: (:class:`~napari_unet.core.segment_config.SegmentConfig`'s ``link_iou``): low
#: enough for the small caps of spheres (a 18 px cap over a 64 px section has IoU
#: 0.28), high enough that a neighbour touching an object is not it.
IOU_THRESHOLD = SegmentConfig.link_iou


def match_by_iou(
    previous: np.ndarray, current: np.ndarray, threshold: float = IOU_THRESHOLD
) -> list[tuple[int, int, float]]:
    """One-to-one matches of the objects of two label planes by IoU.

    Parameters
    ----------
    previous, current : integer ndarray of the same shape
        Instance labels (0 = background).
    threshold : float in (0, 1]
        Smallest IoU of a match.

    Returns
    -------
    matches : list of (previous id, current id, IoU)
        The assignment that maximises the summed IoU of the pairs at or above
        ``threshold``; each connected group of overlapping objects is solved
        on its own, so large planes stay cheap.

    Examples
    --------
    >>> a = np.array([[1, 1, 0, 2, 2]])
    >>> b = np.array([[0, 5, 5, 5, 0]])
    >>> match_by_iou(a, b, 0.2)
    [(1, 5, 0.25)]
    """
    _check_threshold(threshold)
    if previous.shape != current.shape:
        raise ValueError(f"planes differ in shape: {previous.shape} and {current.shape}")
    prev, cur = previous.ravel(), current.ravel()
    both = (prev > 0) & (cur > 0)
    if not both.any():
        return []
    pairs, inter = np.unique(np.stack([prev[both], cur[both]]), axis=1, return_counts=True)
    prev_ids, prev_area = np.unique(prev[prev > 0], return_counts=True)
    cur_ids, cur_area = np.unique(cur[cur > 0], return_counts=True)
    pa = prev_area[np.searchsorted(prev_ids, pairs[0])]
    ca = cur_area[np.searchsorted(cur_ids, pairs[1])]
    iou = inter / (pa + ca - inter)
    keep = iou >= threshold
    pairs, iou = pairs[:, keep], iou[keep]
    if not iou.size:
        return []
    # solve each connected group of candidate pairs on its own
    rows = np.unique(pairs[0], return_inverse=True)[1]
    cols = np.unique(pairs[1], return_inverse=True)[1]
    n_rows, n_cols = rows.max() + 1, cols.max() + 1
    graph = coo_matrix((np.ones(len(iou)), (rows, n_rows + cols)), (n_rows + n_cols,) * 2)
    _, group = connected_components(graph, directed=False)
    pair_group = group[rows]
    size = np.bincount(pair_group)
    alone = size[pair_group] == 1  # the only candidate of both objects: a match
    matches = [
        (int(a), int(b), float(v))
        for a, b, v in zip(pairs[0, alone], pairs[1, alone], iou[alone], strict=True)
    ]
    order = np.argsort(pair_group, kind="stable")
    starts = np.flatnonzero(np.diff(np.concatenate([[-1], pair_group[order]])))
    for sel in np.split(order, starts[1:]):
        if len(sel) == 1:
            continue
        r_ids, r = np.unique(pairs[0, sel], return_inverse=True)
        c_ids, c = np.unique(pairs[1, sel], return_inverse=True)
        score = np.zeros((len(r_ids), len(c_ids)))
        score[r, c] = iou[sel]
        for i, j in zip(*linear_sum_assignment(score, maximize=True), strict=True):
            if score[i, j] >= threshold:
                matches.append((int(r_ids[i]), int(c_ids[j]), float(score[i, j])))
    return sorted(matches)


def _check_threshold(threshold: float) -> None:
    if not 0 < threshold <= 1:
        raise ValueError(f"the IoU threshold must be in (0, 1], got {threshold!r}")


@dataclass
class LinkResult:
    """What :class:`PlaneLinker` found over a whole stack.

    Attributes
    ----------
    n_objects : int
        Linked objects (ids ``1 .. n_objects``).
    planes : dict of int to int
        Planes each object appears in.
    """

    n_objects: int = 0
    planes: dict[int, int] = field(default_factory=dict)

    def short(self, min_planes: int) -> np.ndarray:
        """Ids of the objects seen in fewer than ``min_planes`` planes."""
        return np.array(sorted(i for i, n in self.planes.items() if n < min_planes), np.uint32)


class PlaneLinker:
    """Give objects of consecutive planes that overlap one id (streaming).

    Parameters
    ----------
    iou_threshold : float in (0, 1]
        Smallest IoU of two objects of neighbouring planes to be linked.
    bridge : int
        Planes an object may be missing from and keep its id (0 or 1 usual).

    Examples
    --------
    >>> linker = PlaneLinker()
    >>> linker.link(np.array([[1, 1, 0, 0]])).tolist()
    [[1, 1, 0, 0]]
    >>> linker.link(np.array([[0, 7, 7, 0]])).tolist()  # IoU 1/3: the same object
    [[0, 1, 1, 0]]
    """

    def __init__(self, iou_threshold: float = IOU_THRESHOLD, bridge: int = 0) -> None:
        _check_threshold(iou_threshold)
        if int(bridge) != bridge or bridge < 0:
            raise ValueError(f"`bridge` must be an integer >= 0, got {bridge!r}")
        self.iou_threshold = iou_threshold
        self.bridge = int(bridge)
        self.result = LinkResult()
        # the last planes' linked labels, newest first
        self._recent: list[np.ndarray] = []

    def link(self, labels: np.ndarray) -> np.ndarray:
        """Linked ids (uint32) for the next plane's instance labels."""
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.dtype.kind not in "iub":
            raise ValueError(
                f"each plane must be a 2D integer label image, got {labels.ndim}D {labels.dtype}"
            )
        ids = np.unique(labels[labels > 0])
        lookup = np.zeros(int(ids.max()) + 1 if ids.size else 1, np.uint32)
        newer = np.zeros(0, np.uint32)  # ids of the planes between (not missing there)
        for previous in self._recent:
            if previous.shape != labels.shape:
                raise ValueError(f"planes differ in shape: {previous.shape} and {labels.shape}")
            # an older plane only for objects missing since, and still unlinked here
            free = np.where(np.isin(previous, newer), 0, previous)
            unlinked = np.where(lookup[labels] > 0, 0, labels)
            for old, new, _ in match_by_iou(free, unlinked, self.iou_threshold):
                lookup[new] = old
            newer = np.union1d(newer, np.unique(previous[previous > 0]))
        for new in ids:
            if lookup[new] == 0:
                self.result.n_objects += 1
                lookup[new] = self.result.n_objects
        linked = lookup[labels]
        for i in lookup[ids]:
            self.result.planes[int(i)] = self.result.planes.get(int(i), 0) + 1
        self._recent = [linked, *self._recent][: self.bridge + 1]
        return linked


class MinPlanes:
    """Drop the linked objects seen in fewer than ``min_planes`` planes (streaming).

    Planes are released ``min_planes - 1 + bridge`` planes late, when every
    object in them is known to be long enough or to have ended; the kept
    objects get dense ids ``1, 2, ...`` in the order they are released. With
    ``bridge=0`` the rule is exact; with a bridge, an object still going on
    when its first plane is released is kept.

    Parameters
    ----------
    linker : PlaneLinker
        The linker whose output is pushed (its counts decide).
    min_planes : int
        Fewest planes an object must appear in.

    Examples
    --------
    >>> linker = PlaneLinker()
    >>> keep = MinPlanes(linker, 2)
    >>> a, b = np.array([[1, 0, 2]]), np.array([[1, 0, 0]])
    >>> keep.push(linker.link(a), "plane 0")  # held back one plane
    []
    >>> [(item, lab.tolist(), new) for item, lab, new in keep.push(linker.link(b), "plane 1")]
    [('plane 0', [[1, 0, 0]], 1)]
    >>> [(item, lab.tolist(), new) for item, lab, new in keep.flush()]
    [('plane 1', [[1, 0, 0]], 0)]
    """

    def __init__(self, linker: PlaneLinker, min_planes: int) -> None:
        if int(min_planes) != min_planes or min_planes < 1:
            raise ValueError(f"`min_planes` must be an integer >= 1, got {min_planes!r}")
        self.linker, self.min_planes = linker, int(min_planes)
        self.delay = 0 if min_planes == 1 else self.min_planes - 1 + linker.bridge
        self._held: list[tuple[Any, np.ndarray]] = []
        self._dense = np.zeros(1, np.uint32)  # linked id -> kept id (0: not decided or dropped)
        self._decided: set[int] = set()
        self.n_objects = 0

    def push(self, linked: np.ndarray, item: Any = None) -> list[tuple[Any, np.ndarray, int]]:
        """Add the next linked plane; return the planes now final: (item, labels, new ids)."""
        self._held.append((item, linked))
        released = []
        while len(self._held) > self.delay:
            released.append(self._release(*self._held.pop(0), ended=False))
        return released

    def flush(self) -> list[tuple[Any, np.ndarray, int]]:
        """The planes still held, at the end of the stack."""
        released = [self._release(item, linked, ended=True) for item, linked in self._held]
        self._held = []
        return released

    def _release(self, item: Any, linked: np.ndarray, ended: bool) -> tuple[Any, np.ndarray, int]:
        counts = self.linker.result.planes
        recent = self._held[-(self.linker.bridge + 1) :] if not ended else []
        alive = set().union(*(np.unique(lab[lab > 0]).tolist() for _, lab in recent))
        top = int(linked.max()) if linked.size else 0
        if top >= len(self._dense):
            self._dense = np.concatenate(
                [self._dense, np.zeros(top + 1 - len(self._dense), np.uint32)]
            )
        started = self.n_objects
        for i in np.unique(linked[linked > 0]).tolist():
            if i in self._decided:
                continue
            self._decided.add(i)
            if counts.get(i, 0) >= self.min_planes or i in alive:
                self.n_objects += 1
                self._dense[i] = self.n_objects
        return item, self._dense[linked], self.n_objects - started


def link_planes(
    planes: Iterable[np.ndarray], iou_threshold: float = IOU_THRESHOLD, bridge: int = 0
) -> Iterator[np.ndarray]:
    """Linked labels of each plane of ``planes`` in turn (see :class:`PlaneLinker`)."""
    linker = PlaneLinker(iou_threshold, bridge)
    for plane in planes:
        yield linker.link(plane)
