"""Block-wise, lazy prediction with dask, for stacks larger than memory and clusters.

:func:`predict_dask` turns an array of planes into a lazy dask array of
softmax probabilities, block by block with :func:`dask.array.map_overlap`.
Each block carries the network's context (its halo) on every side, so the
result equals :func:`~napari_unet.core.predict_tiled` to float tolerance:

* The image is mirror-padded first with numpy's ``reflect`` mode (no edge
  duplication), exactly like :func:`~napari_unet.core.tiling.reflect_indices`.
  Dask's own ``boundary="reflect"`` duplicates the edge pixel (numpy's
  ``symmetric``) and ``da.pad(mode="reflect")`` is wrong for pads wider than
  the image, so neither is used.
* Block edges are multiples of ``model.step`` (``2 ** depth``) in image
  coordinates, and tiles inside a block start at multiples of it too: the
  max-pooling grid is the one :func:`predict_tiled` uses.
* Each block runs the tile engine (:func:`~napari_unet.core.tiling.run_tiles`,
  with its out-of-memory fallback) over its own pixels only, so no pixel is
  computed twice.

The model travels to workers as a file path when given one, and each worker
process loads it once (cached on the path and the file's modification time).
"""

from __future__ import annotations

import copy
import functools
import os
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet.core.checkpoint import load_model
from napari_unet.core.device import select_device
from napari_unet.core.model import UNet
from napari_unet.core.precision import check_precision
from napari_unet.core.predictor import NetworkPredictor, halo, on_device, tile_overhead
from napari_unet.core.pretrained import model_file
from napari_unet.core.tiling import (
    as_channels_first,
    auto_tile_size,
    plan_tiles,
    read_tile,
    reflect_indices,
    run_tiles,
)

__all__ = ["block_depth", "predict_dask"]

#: Default edge of a block (rounded up to a multiple of ``model.step``).
DEFAULT_BLOCK = 1024

ModelSpec = UNet | str


# ---------------------------------------------------------------------------
# models on workers


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int) -> UNet:
    """Load a model file once per process (the mtime reloads a replaced file)."""
    del mtime_ns  # part of the cache key only
    return load_model(path)


_device_copies: weakref.WeakKeyDictionary[UNet, dict[str, UNet]] = weakref.WeakKeyDictionary()
_device_lock = threading.Lock()


def _network(spec: ModelSpec, device: str | torch.device) -> tuple[UNet, torch.device]:
    """The network for ``spec`` (a model or a path), in eval mode on ``device``."""
    dev = select_device(device)
    net = _load_cached(spec, os.stat(spec).st_mtime_ns) if isinstance(spec, str) else spec
    moved = on_device(net, dev)
    if moved is net:
        return net, dev
    # cache copies on other devices (a copy must not refer back to its key)
    with _device_lock:
        copies = _device_copies.setdefault(net, {})
        return copies.setdefault(str(dev), moved), dev


# ---------------------------------------------------------------------------
# geometry


def block_depth(model: UNet) -> int:
    """Halo (pixels on each side of a block) that :func:`predict_dask` needs.

    Tiles read ``halo(model)`` pixels before their core and
    ``tile_overhead(model) - halo(model)`` after it (the valid network's
    receptive field reaches further right than left, by the pooling phase);
    the larger of the two is used on both sides.
    """
    before = halo(model)
    return max(before, tile_overhead(model) - before)


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _edges(extent: int, block: int) -> tuple[int, ...]:
    full, rest = divmod(extent, block)
    return (block,) * full + ((rest,) if rest else ())


def _mirror_pad(x: Any, axis: int, before: int, after: int) -> Any:
    """Mirror-pad dask array ``x`` along ``axis`` (numpy ``reflect``, any width)."""
    import dask.array as da

    n = x.shape[axis]
    index = reflect_indices(np.arange(-before, n + after), n)
    if n == 1:
        return da.repeat(x, len(index), axis=axis)
    pieces, start = [], 0
    while start < len(index):
        stop = start + 1
        step = int(index[stop] - index[start]) if stop < len(index) else 1
        while stop < len(index) and index[stop] - index[stop - 1] == step:
            stop += 1
        lo, hi = sorted((int(index[start]), int(index[stop - 1])))
        piece = x[(slice(None),) * (axis % x.ndim) + (slice(lo, hi + 1),)]
        pieces.append(piece if step == 1 else da.flip(piece, axis))
        start = stop
    return pieces[0] if len(pieces) == 1 else da.concatenate(pieces, axis=axis)


def _check_positive(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")


# ---------------------------------------------------------------------------
# one block


def _predict_block(
    block: np.ndarray,
    *,
    spec: ModelSpec,
    device: str,
    tile_size: int | tuple[int, int] | None,
    batch_size: int | None,
    context: int,
    y_edges: tuple[int, ...],
    x_edges: tuple[int, ...],
    precision: str = "auto",
    block_id: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Probabilities (1.., K, h, w) of one block given with ``context`` pixels around it.

    ``block`` has shape (1.., C, H, W); local row 0 is image row
    ``block_start - context`` and the data reach at least
    ``round_up(h, step) + context`` rows past the block start (mirrored past
    the image border). The tile engine runs over the block's own pixels;
    tile reads past the data are clipped to it, which changes only outputs
    past the block (their context is not needed by any kept pixel).
    """
    assert block_id is not None, "dask passes block_id"
    net, dev = _network(spec, device)
    predictor = NetworkPredictor(net, dev, precision)
    h, w = y_edges[block_id[-2]], x_edges[block_id[-1]]
    lead = block.shape[:-3]
    n_chan, rows_in, cols_in = (int(n) for n in block.shape[-3:])
    data = np.asarray(block).reshape(n_chan, rows_in, cols_in)
    out = np.empty((net.n_classes, h, w), np.float32)

    def read(_: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        rows = np.clip(rows + context, 0, rows_in - 1)
        cols = np.clip(cols + context, 0, cols_in - 1)
        return read_tile(data, (), rows, cols, True)

    def write(_: int, rows: slice, cols: slice, prob: np.ndarray) -> None:
        out[:, rows, cols] = prob

    tile = tile_size if tile_size is not None else auto_tile_size(predictor, dev)
    for _ in run_tiles(predictor, (h, w), 1, read, write, tile_size=tile, batch_size=batch_size):
        pass
    return out.reshape((*lead, *out.shape))


# ---------------------------------------------------------------------------
# public


def predict_dask(
    model: UNet | str | os.PathLike[str],
    array: Any,
    *,
    tile_size: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    channel_axis: int | None = None,
    block_size: int | None = None,
    precision: str = "auto",
) -> Any:
    """Lazy softmax probabilities of ``model`` over ``array``, block by block with dask.

    Parameters
    ----------
    model : UNet or path-like
        The network, a model file from :func:`~napari_unet.core.save_model` or
        a bundled model's name (``"nuclei"``, resolved to its file in the
        installed package). Give a path or name to run on a cluster: only
        the path travels, and each worker process loads the file once (it
        must be readable there). A
        UNet is copied (in eval mode) when the graph is built, so later
        changes to it do not affect the result.
    array : dask, zarr or numpy array of shape (..., M, N), or (..., C, M, N)
        Planes (leading axes), optionally channels (multi-channel models).
        Not normalized: apply :func:`~napari_unet.core.normalize` per plane
        first (e.g. with ``map_blocks``), as the CLI and widgets do.
    tile_size : int or (int, int), optional
        Largest input tile edge inside a block; chosen from the worker's free
        memory if None (and never larger than the block needs).
    batch_size : int, optional
        Tiles per forward pass; 1 on the CPU and as many as fit on a GPU if None.
    device : str or torch.device
        Where the network runs on each worker: ``"cpu"`` (default),
        ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"``. Checked by the
        worker when the block runs.
    channel_axis : int, optional
        Channel axis for multi-channel models if not -3.
    block_size : int, optional
        Edge of the spatial blocks (rounded up to a multiple of
        ``model.step`` and to at least the halo); 1024 if None. Each block
        holds one plane; channels are never split.
    precision : {"auto", "float32", "bfloat16", "float16"}
        The network's arithmetic on the workers
        (:func:`~napari_unet.core.device.inference_dtype`).

    Returns
    -------
    probabilities : dask.array.Array of float32, shape (..., n_classes, M, N)
        Planes first, then classes; chunked one plane and one spatial block
        per chunk. Nothing is computed until you ask (``compute``,
        ``to_zarr``, ``store``).

    Examples
    --------
    >>> import dask.array as da
    >>> net = UNet(base_channels=2)
    >>> prob = predict_dask(net, da.zeros((3, 100, 120), chunks=(1, 100, 120)))
    >>> prob.shape, prob.dtype.name
    ((3, 2, 100, 120), 'float32')
    """
    import dask.array as da

    spec: ModelSpec
    if isinstance(model, str | os.PathLike):
        path = str(model_file(model).resolve())
        if not Path(path).is_file():
            load_model(path)  # raises ModelFileError (not found)
        net = _load_cached(path, os.stat(path).st_mtime_ns)
        spec = path
    elif isinstance(model, UNet):
        net = copy.deepcopy(model).eval()
        spec = net
    else:
        raise TypeError(
            f"`model` must be a napari_unet UNet or a model file path, got {type(model).__name__}"
        )
    _check_positive("batch_size", batch_size)
    _check_positive("block_size", block_size)
    check_precision(precision)
    if device != "auto":
        try:
            torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"`device` must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
            ) from None

    arr, lead, channels = as_channels_first(array, net.in_channels, channel_axis)
    shape = (int(arr.shape[-2]), int(arr.shape[-1]))
    if min(shape) < 1:
        raise ValueError(f"`array` is empty, shape {tuple(array.shape)}")
    if tile_size is not None:
        tile_size = tuple(tile_size) if not np.isscalar(tile_size) else int(tile_size)  # type: ignore[arg-type]
        plan_tiles(net, shape, tile_size)  # validates

    step, depth = net.step, block_depth(net)
    block = max(_round_up(block_size or DEFAULT_BLOCK, step), _round_up(depth, step))
    y_edges, x_edges = _edges(shape[0], block), _edges(shape[1], block)
    n_chan = net.in_channels if channels else 1
    if not isinstance(arr, da.Array):  # numpy, memmap, zarr: read block by block
        chan = (n_chan,) if channels else ()
        arr = da.from_array(arr, chunks=(*(1,) * len(lead), *chan, y_edges, x_edges))
    x = arr if channels else arr[..., None, :, :]
    x = x.rechunk((*(1,) * len(lead), n_chan, y_edges, x_edges))

    # mirror-pad by `depth` before and by `depth` (plus the rest of a step)
    # after; the pads join the first and last blocks, so the block grid (and
    # the output chunks) stay those of the image
    after = [_round_up(n, step) - n + depth for n in shape]
    x = _mirror_pad(x, -2, depth, after[0])
    x = _mirror_pad(x, -1, depth, after[1])
    padded = []
    for edges, extra in zip((y_edges, x_edges), after, strict=True):
        grown = list(edges)
        grown[0] += depth
        grown[-1] += extra
        padded.append(tuple(grown))
    x = x.rechunk((*(1,) * len(lead), n_chan, *padded))

    ndim = x.ndim
    return da.map_overlap(
        _predict_block,
        x,
        depth={ndim - 2: depth, ndim - 1: depth},
        boundary="none",
        trim=False,
        allow_rechunk=False,
        chunks=(*(1,) * len(lead), (net.n_classes,), y_edges, x_edges),
        dtype=np.float32,
        meta=np.empty((0,) * ndim, np.float32),
        token="napari-unet-predict",
        spec=spec,
        device=str(device),
        tile_size=tile_size,
        batch_size=batch_size,
        context=depth,
        y_edges=y_edges,
        x_edges=x_edges,
        precision=precision,
    )
