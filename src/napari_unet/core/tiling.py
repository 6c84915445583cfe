"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2): the one tile engine.

The output is cut into tiles (the *core* of each tile) that cover every
plane exactly once. Each input tile carries the network's context around its
core; where that context falls outside the image, the image is mirrored
(``reflect``). Tile origins are multiples of ``2 ** depth``, so max-pooling
sees the same grid in every tile: for a valid-padding network the tiled result
equals the prediction of the whole mirror-padded image in one pass.

The engine has three parts, as MONAI's splitter and merger: planning
(:func:`plan_tiles`, :func:`auto_tile_size`), running (:func:`run_tiles`:
batches read ahead in a thread, the out-of-memory fallback) and stitching
(a writer that puts each core where it belongs). It runs any
:class:`~napari_unet.core.predictor.Predictor`; :func:`iter_predict_tiled`
serves whole arrays (numpy, memmap, zarr, dask, read lazily tile by tile) and
:func:`~napari_unet.core.distributed.predict_dask` serves dask blocks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_unet.core.device import available_memory, is_out_of_memory, select_device
from napari_unet.core.model import UNet
from napari_unet.core.predictor import (
    Predictor,
    TestTimeAugmentation,
    as_predictor,
    halo,
    tile_for_core,
    tile_overhead,
)
from napari_unet.core.progress import run_to_end

__all__ = [
    "MAX_AUTO_CORE",
    "TestTimeAugmentation",
    "TilePlan",
    "TileProgress",
    "as_channels_first",
    "auto_batch_size",
    "auto_tile_size",
    "iter_predict_tiled",
    "plan_tiles",
    "predict_tiled",
    "read_tile",
    "reflect_indices",
    "run_tiles",
]

logger = logging.getLogger(__name__)

#: Largest output tile edge chosen automatically on the CPU / on a GPU.
MAX_AUTO_CORE = {"cpu": 1024, "gpu": 2048}

Region = tuple[int, slice, slice]


@dataclass(frozen=True)
class TileProgress:
    """Progress of a tiled prediction, yielded after every batch of tiles.

    Attributes
    ----------
    done, total : int
        Tiles finished and tiles in the whole job.
    plane, n_planes : int
        Flat index of the plane being processed and number of planes.
    regions : tuple of (plane, rows, cols)
        Output regions written by this batch (flat plane index, slices).
    message : str
        A notice for the user (e.g. an out-of-memory fallback), else "".
    """

    done: int
    total: int
    plane: int
    n_planes: int
    regions: tuple[Region, ...]
    message: str = ""


@dataclass(frozen=True)
class TilePlan:
    """Geometry of an overlap-tile run over planes of shape (M, N)."""

    core: tuple[int, int]
    tile: tuple[int, int]
    margin: int
    offset: int
    origins: tuple[tuple[int, int], ...]


# ---------------------------------------------------------------------------
# geometry


def plan_tiles(
    model: UNet | Predictor, shape: tuple[int, int], tile_size: int | Sequence[int]
) -> TilePlan:
    """Plan tiles of input size at most ``tile_size`` over a plane of ``shape``.

    Parameters
    ----------
    model : UNet or Predictor
        Its geometry (step, halo, tile for a core) decides the tiles.
    shape : (int, int)
        Plane shape (M, N).
    tile_size : int or (int, int)
        Largest input tile edge (what the network sees); rounded down to a
        valid size, and never below the smallest useful tile. Tiles are made
        as even as possible, so they may be smaller than this.
    """
    sizes: tuple[Any, ...] = (
        (tile_size, tile_size) if np.isscalar(tile_size) else tuple(tile_size)  # type: ignore[arg-type]
    )
    if len(sizes) != 2 or any(int(s) != s or s < 1 for s in sizes):
        raise ValueError(f"`tile_size` must be a positive int or a pair, got {tile_size!r}")
    step, extra = model.step, tile_overhead(model)
    cores = []
    for size, extent in zip(sizes, shape, strict=True):
        largest = max(step, (int(size) - extra) // step * step)
        # as few tiles as the size allows, then as small as they can be for that
        # count: the last tile is not mostly padding (2048 px with cores of at
        # most 992 px take 3 cores of 688, not 3 of 992)
        n_tiles = -(-extent // largest)
        cores.append(-(-extent // (n_tiles * step)) * step)
    margin = halo(model)
    tiles = [tile_for_core(model, c) for c in cores]
    out_size = model.output_size(tiles[0])
    assert out_size is not None
    offset = margin - (tiles[0] - out_size) // 2
    origins = tuple(
        (y, x) for y in range(0, shape[0], cores[0]) for x in range(0, shape[1], cores[1])
    )
    return TilePlan(tuple(cores), tuple(tiles), margin, offset, origins)  # type: ignore[arg-type]


def auto_tile_size(
    model: UNet | Predictor, device: torch.device, *, memory: int | None = None
) -> int:
    """Input tile edge that fits the memory of ``device`` (a valid size)."""
    memory = available_memory(device) if memory is None else memory
    budget = 0.5 * memory if device.type == "cuda" else min(0.25 * memory, 4 * 1024**3)
    fit = int(math.sqrt(budget / as_predictor(model).bytes_per_pixel))
    cap = MAX_AUTO_CORE["cpu" if device.type == "cpu" else "gpu"] + tile_overhead(model)
    return max(tile_for_core(model, model.step), min(fit, cap))


def auto_batch_size(model: UNet | Predictor, device: torch.device, tile: tuple[int, int]) -> int:
    """Tiles per batch: 1 on the CPU; as many as half the free VRAM holds (<= 16) on a GPU."""
    if device.type == "cpu":
        return 1
    per_tile = as_predictor(model).bytes_per_pixel * tile[0] * tile[1]
    return int(np.clip(0.5 * available_memory(device) // per_tile, 1, 16))


def reflect_indices(index: np.ndarray, n: int) -> np.ndarray:
    """Map indices outside ``[0, n)`` into it by mirroring (numpy's ``reflect`` mode).

    Examples
    --------
    >>> reflect_indices(np.arange(-3, 8), 5).tolist()
    [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]
    """
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


# ---------------------------------------------------------------------------
# input handling


def as_channels_first(
    image: Any, in_channels: int, channel_axis: int | None = None
) -> tuple[Any, tuple[int, ...], bool]:
    """Return ``(array, leading_shape, has_channel_axis)`` with channels at axis -3.

    Raises a ValueError if the image does not match the model's channels.
    """
    if isinstance(image, torch.Tensor):
        raise TypeError("`image` must be a numpy-like array, got a torch tensor: pass .numpy()")
    if not (hasattr(image, "shape") and hasattr(image, "dtype")):
        raise TypeError(
            f"`image` must be an array (numpy, memmap, zarr, dask), got {type(image).__name__}"
        )
    shape = tuple(image.shape)
    if len(shape) < 2 or 0 in shape:
        raise ValueError(
            f"`image` must have at least 2 dimensions (Y, X), none empty, got shape {shape}"
        )
    dtype = np.dtype(image.dtype)
    if dtype != np.bool_ and (not np.issubdtype(dtype, np.number) or dtype.kind == "c"):
        raise ValueError(f"`image` must be a real numeric array, got dtype {dtype}")
    if channel_axis is None and in_channels == 1:
        return image, shape[:-2], False
    axis = -3 if channel_axis is None else channel_axis
    if len(shape) < 3 or not -len(shape) <= axis < len(shape):
        raise ValueError(
            f"the model expects {in_channels} channels on axis {axis}, but the image has "
            f"shape {shape}"
        )
    if axis % len(shape) != len(shape) - 3:
        if isinstance(image, np.ndarray):
            image = np.moveaxis(image, axis, -3)
        else:
            import dask.array as da

            image = da.moveaxis(da.asarray(image), axis, -3)
    if image.shape[-3] != in_channels:
        raise ValueError(
            f"the image has {image.shape[-3]} channel(s) on axis {axis} (shape {shape}), "
            f"but the model expects {in_channels}"
        )
    return image, tuple(image.shape[:-3]), True


def read_tile(
    image: Any, lead: tuple[int, ...], rows: np.ndarray, cols: np.ndarray, channels: bool
) -> np.ndarray:
    """Read rows x cols (reflected indices) of one plane as float32 (C, h, w)."""
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    chan = (slice(None),) if channels else ()
    slab = np.asarray(image[(*lead, *chan, slice(r0, r1), slice(c0, c1))])
    with np.errstate(over="ignore"):  # too large for float32: inf, refused below
        slab = slab.astype(np.float32, copy=False)
    if not channels:
        slab = slab[None]
    if r1 - r0 != len(rows) or (rows[0] != r0 or not np.all(np.diff(rows) == 1)):
        slab = slab[:, rows - r0]
    if c1 - c0 != len(cols) or (cols[0] != c0 or not np.all(np.diff(cols) == 1)):
        slab = slab[:, :, cols - c0]
    if not np.isfinite(slab).all():
        raise ValueError(
            "`image` contains NaN or infinite values (or values too large for float32)"
        )
    return slab


#: Reads the input of a tile: (plane, rows, cols) -> float32 (C, h, w). Rows and
#: columns are plane coordinates and may lie outside the plane (the reader mirrors).
Reader = Callable[[int, np.ndarray, np.ndarray], np.ndarray]
#: Writes a tile's probabilities (n_classes, h, w) at (plane, rows, cols).
Writer = Callable[[int, slice, slice, np.ndarray], None]


def _read_batch(read: Reader, plan: TilePlan, jobs: Sequence[tuple[int, int, int]]) -> np.ndarray:
    tiles = []
    for p, y, x in jobs:
        rows = np.arange(y - plan.margin, y - plan.margin + plan.tile[0])
        cols = np.arange(x - plan.margin, x - plan.margin + plan.tile[1])
        tiles.append(read(p, rows, cols))
    return np.stack(tiles)


class _OutOfMemory(Exception):
    def __init__(self, plane: int) -> None:
        self.plane = plane


def _run_batches(
    predictor: Predictor,
    plan: TilePlan,
    shape: tuple[int, int],
    jobs: list[tuple[int, int, int]],
    batch_size: int,
    read: Reader,
    write: Writer,
    pool: ThreadPoolExecutor,
) -> Iterator[tuple[Region, ...]]:
    """Run ``jobs`` (plane, y, x) in batches (the next one read ahead); yield what each wrote."""
    batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    if not batches:
        return
    pending: Future[np.ndarray] = pool.submit(_read_batch, read, plan, batches[0])
    for k, batch in enumerate(batches):
        tiles = pending.result()
        if k + 1 < len(batches):
            pending = pool.submit(_read_batch, read, plan, batches[k + 1])
        try:
            probs = predictor(tiles)
        except RuntimeError as err:
            if predictor.device.type != "cpu" and is_out_of_memory(err):
                if predictor.device.type == "cuda":
                    torch.cuda.empty_cache()
                raise _OutOfMemory(batch[0][0]) from err
            raise
        regions = []
        o = plan.offset
        for (p, y, x), prob in zip(batch, probs, strict=True):
            h, w = min(plan.core[0], shape[0] - y), min(plan.core[1], shape[1] - x)
            rows, cols = slice(y, y + h), slice(x, x + w)
            write(p, rows, cols, prob[:, o : o + h, o : o + w])
            regions.append((p, rows, cols))
        yield tuple(regions)


def run_tiles(
    predictor: Predictor,
    shape: tuple[int, int],
    n_planes: int,
    read: Reader,
    write: Writer,
    *,
    tile_size: int | Sequence[int],
    batch_size: int | None = None,
) -> Generator[TileProgress, None, None]:
    """The tile engine: plan, run (with the out-of-memory fallback) and stitch.

    Parameters
    ----------
    predictor : Predictor
        What turns a batch of tiles into probabilities, and its geometry.
    shape : (int, int)
        Plane shape (M, N); planes are numbered ``0 .. n_planes - 1``.
    n_planes : int
        Planes to predict.
    read, write : callable
        :data:`Reader` of a tile's input (it handles rows and columns outside
        the plane) and :data:`Writer` of a tile's core probabilities.
    tile_size : int or (int, int)
        Largest input tile edge (see :func:`plan_tiles`).
    batch_size : int, optional
        Tiles per forward pass; from the device's memory if None.

    Yields
    ------
    TileProgress
        After every batch of tiles.

    Notes
    -----
    On an out-of-memory error of an accelerator the batch size is halved,
    then the tile size, then the job moves to the CPU; each step is logged
    and reported in :attr:`TileProgress.message`, and the current plane is
    redone.
    """
    plan = plan_tiles(predictor, shape, tile_size)
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
    batch = (
        int(batch_size) if batch_size else auto_batch_size(predictor, predictor.device, plan.tile)
    )
    first, message = 0, ""
    with ThreadPoolExecutor(1) as pool:
        while first < n_planes:
            per_plane = len(plan.origins)
            jobs = [(p, y, x) for p in range(first, n_planes) for y, x in plan.origins]
            done = first * per_plane
            try:
                for regions in _run_batches(
                    predictor, plan, shape, jobs, batch, read, write, pool
                ):
                    done += len(regions)
                    last = regions[-1][0]
                    yield TileProgress(
                        done, n_planes * per_plane, last, n_planes, regions, message
                    )
                    message = ""
                first = n_planes
            except _OutOfMemory as oom:
                first = oom.plane
                if batch > 1:
                    batch //= 2
                    message = f"out of GPU memory: retrying with {batch} tiles per batch"
                elif max(plan.core) > predictor.step:
                    smaller = max(predictor.step, max(plan.core) // 2) + tile_overhead(predictor)
                    plan = plan_tiles(predictor, shape, smaller)
                    message = f"out of GPU memory: retrying with tiles of {plan.tile}"
                else:
                    predictor = predictor.to(torch.device("cpu"))
                    message = "out of GPU memory even for the smallest tile: continuing on the CPU"
                logger.warning(message)


def _prepare_out(out: Any, shape: tuple[int, ...]) -> Any:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if tuple(out.shape) != shape:
        raise ValueError(f"`out` must have shape {shape}, got {tuple(out.shape)}")
    if np.dtype(out.dtype).kind != "f":
        raise ValueError(f"`out` must have a float dtype for probabilities, got {out.dtype}")
    return out


def iter_predict_tiled(
    model: UNet | Predictor,
    image: Any,
    *,
    tile_size: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = "auto",
    out: Any = None,
    channel_axis: int | None = None,
    tta: bool = False,
    precision: str = "auto",
) -> Generator[TileProgress, None, Any]:
    """Predict softmax probabilities tile by tile, yielding progress after every batch.

    Parameters
    ----------
    model : UNet or Predictor
        The network (valid or same padding), or any :class:`~napari_unet.core.predictor.Predictor`.
        It is applied as is: the image is only cast to float32, not
        normalized (see :func:`~napari_unet.core.normalize`).
    image : array-like of shape (..., M, N), or (..., C, M, N) for C > 1 channels
        Any array supporting numpy slicing (numpy, memmap, zarr, dask); read
        lazily, tile by tile. Leading axes are planes.
    tile_size : int or (int, int), optional
        Largest input tile edge; chosen from free memory if None.
    batch_size : int, optional
        Tiles per forward pass; 1 on the CPU and as many as fit on a GPU if None.
    device : str or torch.device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"mps"``.
    out : array-like of shape (..., n_classes, M, N), optional
        Writable destination (numpy, memmap, zarr); float32 numpy if None.
    channel_axis : int, optional
        Axis of the channels if the model has several and they are not at -3.
    tta : bool
        Test-time augmentation: average over the 8 flips/rotations of every
        tile (:class:`~napari_unet.core.predictor.TestTimeAugmentation`; 8
        times the compute).
    precision : {"auto", "float32", "bfloat16", "float16"}
        Arithmetic of the network (autocast) when ``model`` is a UNet:
        ``"auto"`` is bfloat16 on CUDA and float32 elsewhere
        (:func:`~napari_unet.core.device.inference_dtype`). In float32 the
        result equals one pass over the whole mirror-padded image; in a reduced
        precision it equals that pass in the same precision up to rounding.

    Yields
    ------
    TileProgress
        After every batch of tiles.

    Returns
    -------
    out : array-like of shape (..., n_classes, M, N)
        Softmax probabilities.

    Notes
    -----
    Runs :func:`run_tiles` (with its out-of-memory fallback) over the planes,
    mirroring the image at its borders.
    """
    dev = select_device(device)
    predictor: Predictor = as_predictor(model, dev, precision)
    if tta:
        predictor = TestTimeAugmentation(predictor)
    arr, lead, channels = as_channels_first(image, predictor.in_channels, channel_axis)
    shape = (int(arr.shape[-2]), int(arr.shape[-1]))
    if min(shape) < 1:
        raise ValueError(f"`image` is empty, shape {tuple(image.shape)}")
    out = _prepare_out(out, (*lead, predictor.n_classes, *shape))
    planes = list(np.ndindex(*lead))

    def read(p: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        rows, cols = reflect_indices(rows, shape[0]), reflect_indices(cols, shape[1])
        return read_tile(arr, planes[p], rows, cols, channels)

    def write(p: int, rows: slice, cols: slice, prob: np.ndarray) -> None:
        out[(*planes[p], slice(None), rows, cols)] = prob

    tile = tile_size if tile_size is not None else auto_tile_size(predictor, dev)
    yield from run_tiles(
        predictor, shape, len(planes), read, write, tile_size=tile, batch_size=batch_size
    )
    return out


def predict_tiled(
    model: UNet | Predictor,
    image: Any,
    *,
    tile_size: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = "auto",
    out: Any = None,
    channel_axis: int | None = None,
    tta: bool = False,
    precision: str = "auto",
) -> Any:
    """Softmax probabilities of ``model`` over ``image`` by overlap-tile inference.

    Blocking version of :func:`iter_predict_tiled` (same parameters).

    Returns
    -------
    out : array-like of shape (n_classes, M, N), or (..., n_classes, M, N) for a stack

    Examples
    --------
    >>> net = UNet(base_channels=2)
    >>> predict_tiled(net, np.zeros((50, 70)), device="cpu").shape
    (2, 50, 70)
    """
    return run_to_end(
        iter_predict_tiled(
            model,
            image,
            tile_size=tile_size,
            batch_size=batch_size,
            device=device,
            out=out,
            channel_axis=channel_axis,
            tta=tta,
            precision=precision,
        )
    )
