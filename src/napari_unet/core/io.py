"""Lazy image input and plane-by-plane output (TIFF and zarr).

Inputs are opened without loading them: an uncompressed, contiguous TIFF as
a numpy memmap, any other TIFF through tifffile's zarr store (pages read on
demand), a ``.zarr`` folder with zarr. Outputs are written one plane at a
time, so memory stays bounded by a plane whatever the size of the stack.
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import tifffile

__all__ = [
    "BIGTIFF_BYTES",
    "NUMPY_LIMIT_BYTES",
    "TIFF_SUFFIXES",
    "ZARR_SUFFIXES",
    "ImageReadError",
    "PlaneWriter",
    "allocate_zeros",
    "check_output_path",
    "max_label",
    "open_image",
    "partial_path",
    "read_array",
    "release_pages",
    "unique_path",
]

TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_SUFFIXES = (".zarr",)
#: Above this many bytes a TIFF output is written as BigTIFF.
BIGTIFF_BYTES = 2**31


class ImageReadError(ValueError):
    """An input image is missing, unreadable or in an unsupported format."""


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def open_image(path: str | os.PathLike[str]) -> Any:
    """Open a TIFF file or zarr array lazily.

    Parameters
    ----------
    path : path-like
        ``.tif``/``.tiff`` file or ``.zarr`` folder.

    Returns
    -------
    image : array-like
        numpy memmap or zarr array with ``shape``, ``dtype`` and numpy slicing.

    Raises
    ------
    ImageReadError
        If the file is missing, truncated, corrupt or not a TIFF/zarr.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"input not found: {path}")
    suffix = _suffix(path)
    if suffix in ZARR_SUFFIXES:
        import zarr

        try:
            array = zarr.open(str(path), mode="r")
        except Exception as err:  # zarr raises many error types
            raise ImageReadError(f"cannot read {path} as a zarr array: {err}") from None
        if not hasattr(array, "shape"):
            raise ImageReadError(f"{path} is a zarr group, not an array")
        return array
    if suffix not in TIFF_SUFFIXES:
        raise ImageReadError(f"unsupported input format {suffix!r} for {path} (use TIFF or zarr)")
    return _open_tiff(path)


@contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """Keep tifffile's warnings about a damaged file off stderr: the error says it."""
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _check_complete(tif: tifffile.TiffFile, series: Any, path: Path) -> None:
    """Raise if the series is shorter than its metadata says or runs past the file end."""
    size = tif.filehandle.size
    meta = tif.shaped_metadata
    if meta and "shape" in meta[0] and tuple(meta[0]["shape"]) != tuple(series.shape):
        raise ImageReadError(
            f"{path} is truncated or corrupt: it declares shape {tuple(meta[0]['shape'])} "
            f"but only {tuple(series.shape)} can be read"
        )
    if series.dataoffset is not None:
        ends = [series.dataoffset + series.nbytes]
    else:
        ends = [
            max(
                (o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)),
                default=0,
            )
            if page is not None
            else size + 1
            for page in series.pages
        ]
    if max(ends, default=0) > size:
        raise ImageReadError(f"{path} is truncated: its image data runs past the end of the file")


def _open_tiff(path: Path) -> Any:
    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype = series.shape, series.dtype
            contiguous = series.dataoffset is not None
            _check_complete(tif, series, path)
        if contiguous:
            return tifffile.memmap(path, mode="r")
        import zarr

        with _quiet_tifffile():
            store = tifffile.imread(path, aszarr=True)
        array = zarr.open_array(store, mode="r")
        if tuple(array.shape) != tuple(shape) or array.dtype != dtype:
            raise ValueError("zarr view does not match the TIFF series")
        # read one corner now so a truncated or undecodable file fails here
        array[(0,) * (array.ndim - 2) + (slice(0, 1), slice(0, 1))]
        return array
    except ImageReadError:
        raise
    except Exception as err:  # tifffile raises many error types on bad files
        raise ImageReadError(f"cannot read {path} as a TIFF image: {err}") from None


def read_array(image: Any, index: tuple[Any, ...] = (), name: str = "the input") -> np.ndarray:
    """Read ``image[index]`` into memory; a damaged file gives an :class:`ImageReadError`.

    Lazy inputs decode on read, so a corrupt compressed page only shows up here.
    """
    try:
        with _quiet_tifffile():
            return np.asarray(image[index])
    except Exception as err:  # decoders raise many types (zlib.error, TiffFileError, ...)
        where = f" (plane {index})" if index else ""
        raise ImageReadError(f"cannot read {name}{where}: {err}") from None


def release_pages(image: Any) -> None:
    """Drop the pages of a read-only memory-mapped input from this process (else a no-op).

    They are file-backed and reclaimable, but they count in RSS while mapped:
    without this, RSS grows to the size of the stack as planes are read.
    """
    buffer = getattr(image, "_mmap", None)  # numpy.memmap keeps its mmap.mmap here
    read_only = getattr(image, "mode", None) == "r"
    if buffer is not None and read_only and hasattr(mmap, "MADV_DONTNEED"):
        buffer.madvise(mmap.MADV_DONTNEED)


def check_output_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Validate an output path: known suffix, existing folder, not already there."""
    path = Path(path)
    if _suffix(path) not in TIFF_SUFFIXES + ZARR_SUFFIXES:
        raise ValueError(f"output {path} must end in .tif, .tiff or .zarr")
    if not path.parent.exists():
        raise ValueError(f"output folder does not exist: {path.parent}")
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"output {path} exists; pass overwrite=True (--overwrite) to replace it"
        )
    return path


def partial_path(path: str | os.PathLike[str]) -> Path:
    """Where an interrupted job keeps its partial output: ``labels.partial.tif``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def unique_path(
    folder: str | os.PathLike[str], prefix: str, suffix: str, *, directory: bool = False
) -> Path:
    """Create a new, uniquely named empty file (or folder) in ``folder`` and return it.

    Like :func:`tempfile.mkstemp` / :func:`tempfile.mkdtemp`, but created with
    the permissions the umask allows (``tempfile`` makes them private, 0600),
    so the finished output that is renamed from it is readable as usual.
    """
    while True:
        path = Path(folder) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            if directory:
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path


class PlaneWriter:
    """Write an array of shape (P..., *plane_shape) plane by plane, in order.

    A plane is written whole (:meth:`write`) or block by block
    (:meth:`write_block`, then :meth:`next_plane`), so a plane larger than
    memory can be written. TIFF outputs get one contiguous uncompressed
    series (BigTIFF when large) that tifffile and napari read back with the
    full shape, laid out when the writer opens and filled in place; zarr
    outputs get one chunk per plane (tiled for large planes). The output is written under a unique
    temporary name in the destination folder and moved into place only when
    complete, so ``path`` never holds a half-written result, an existing
    ``path`` (``overwrite=True``) stays untouched until the new one is whole,
    and two jobs writing the same ``path`` cannot garble it (the last to finish
    wins; without ``overwrite`` the later one fails and keeps its result at
    :func:`partial_path`). :meth:`close` with ``keep=True`` keeps a partial
    result at :func:`partial_path`. If finishing the file fails (a full disk),
    the temporary file is removed and an ``OSError`` says so.

    Parameters
    ----------
    path : path-like
        Destination (``.tif``, ``.tiff`` or ``.zarr``).
    shape : tuple of int
        Full output shape; the leading ``len(shape) - plane_ndim`` axes are planes.
    dtype : dtype
    plane_ndim : int
        Dimensions of one plane (2 for labels, 3 for class probabilities).
    overwrite : bool
        Replace an existing output.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: tuple[int, ...],
        dtype: Any,
        *,
        plane_ndim: int = 2,
        overwrite: bool = False,
    ) -> None:
        self.path = check_output_path(path, overwrite=overwrite)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.plane_shape = self.shape[len(self.shape) - plane_ndim :]
        self.n_planes = int(np.prod(self.shape[: len(self.shape) - plane_ndim]))
        self.written = 0
        self.overwrite = overwrite
        self._closed = False
        self._zarr: Any = None  # the zarr output, or None for TIFF
        zarr_output = _suffix(self.path) in ZARR_SUFFIXES
        self._tmp = unique_path(
            self.path.parent,
            f".{self.path.name}.",
            f".tmp{self.path.suffix}",
            directory=zarr_output,
        )
        if zarr_output:
            import zarr

            chunks = (1,) * (len(self.shape) - plane_ndim) + tuple(
                min(s, 2048) if i >= plane_ndim - 2 else s for i, s in enumerate(self.plane_shape)
            )
            self._zarr = zarr.open_array(
                str(self._tmp), mode="w", shape=self.shape, chunks=chunks, dtype=self.dtype
            )
            self._fd = -1
        else:
            # header and page directories now; the (sparse) data are filled in place
            nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
            placed = tifffile.imwrite(
                self._tmp,
                shape=self.shape,
                dtype=self.dtype,
                photometric="minisblack",
                bigtiff=nbytes > BIGTIFF_BYTES,
                returnoffset=True,
            )
            assert placed is not None  # (data offset, bytes) of a contiguous series
            self._offset = int(placed[0])
            self._fd = os.open(self._tmp, os.O_WRONLY)
            self._zarr = None

    def write(self, plane: np.ndarray) -> None:
        """Write the next plane whole."""
        plane = np.asarray(plane, dtype=self.dtype)
        if plane.shape != self.plane_shape:
            raise ValueError(f"plane must have shape {self.plane_shape}, got {plane.shape}")
        self.write_block(slice(None), slice(None), plane)
        self.next_plane()

    def write_block(self, rows: slice, cols: slice, block: np.ndarray) -> None:
        """Write rows x cols of the current plane (all its leading axes, e.g. classes)."""
        if self.written >= self.n_planes:
            raise ValueError(f"all {self.n_planes} planes were already written")
        height, width = self.plane_shape[-2:]
        r0, r1, _ = rows.indices(height)
        c0, c1, _ = cols.indices(width)
        block = np.asarray(block, dtype=self.dtype)
        expected = (*self.plane_shape[:-2], r1 - r0, c1 - c0)
        if block.shape != expected:
            raise ValueError(f"block must have shape {expected}, got {block.shape}")
        lead = self.shape[: len(self.shape) - len(self.plane_shape)]
        index = tuple(int(i) for i in np.unravel_index(self.written, lead))
        if self._zarr is not None:
            extra = [slice(None)] * (len(self.plane_shape) - 2)
            key: tuple[Any, ...] = (*index, *extra, slice(r0, r1), slice(c0, c1))
            self._zarr[key] = block
            return
        plane_start = self.written * int(np.prod(self.plane_shape))
        rows_of = block.reshape(-1, r1 - r0, c1 - c0)
        try:
            for k, part in enumerate(rows_of):
                start = plane_start + k * height * width + r0 * width
                if c0 == 0 and c1 == width:  # whole rows: one contiguous run
                    self._pwrite(part, start)
                    continue
                for r, row in enumerate(part):
                    self._pwrite(row, start + r * width + c0)
        except OSError as err:
            self.close(keep=False)
            raise OSError(
                f"could not write {self.path} ({err}); the partial file was removed"
            ) from err

    def _pwrite(self, data: np.ndarray, element: int) -> None:
        view = np.ascontiguousarray(data).data.cast("B")
        position = self._offset + element * self.dtype.itemsize
        while view.nbytes:
            done = os.pwrite(self._fd, view, position)
            view, position = view[done:], position + done

    def next_plane(self) -> None:
        """Mark the current plane written (after its blocks)."""
        if self.written >= self.n_planes:
            raise ValueError(f"all {self.n_planes} planes were already written")
        self.written += 1

    def close(self, *, keep: bool | None = None) -> Path | None:
        """Finish the output and move it into place, or delete it.

        Parameters
        ----------
        keep : bool, optional
            Keep a partial result (planes not written are zeros) at
            :func:`partial_path`. By default the output is kept only if every
            plane was written.

        Returns
        -------
        path : Path or None
            Where the result is: ``path`` when complete, :func:`partial_path`
            when partial, None when deleted.

        Raises
        ------
        OSError
            If the file cannot be finished (e.g. the disk is full); the
            temporary file is removed first.
        FileExistsError
            If another job created ``path`` meanwhile and ``overwrite`` is off
            (this result is kept at :func:`partial_path`).
        """
        if self._closed:
            return None
        self._closed = True
        complete = self.written == self.n_planes
        keep = complete if keep is None else keep
        try:
            if self._fd >= 0:  # planes not written are zeros (sparse) already
                fd, self._fd = self._fd, -1
                try:
                    if keep:
                        os.fsync(fd)  # may raise on a full disk
                finally:
                    os.close(fd)
        except OSError as err:
            _remove(self._tmp)
            raise OSError(
                f"could not finish writing {self.path} ({err}); the partial file was removed"
            ) from err
        except BaseException:
            _remove(self._tmp)
            raise
        if not keep:
            _remove(self._tmp)
            return None
        if not complete:
            _publish(self._tmp, partial_path(self.path), overwrite=True)
            return partial_path(self.path)
        try:
            _publish(self._tmp, self.path, overwrite=self.overwrite)
        except FileExistsError:
            _publish(self._tmp, partial_path(self.path), overwrite=True)
            raise FileExistsError(
                f"{self.path} was created by another job while this one ran; this result is "
                f"in {partial_path(self.path)}"
            ) from None
        return self.path

    def __enter__(self) -> PlaneWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(keep=None if exc_type is None else False)


def _publish(tmp: Path, path: Path, *, overwrite: bool) -> None:
    """Move a finished temporary output to ``path`` atomically (a reader sees old or new)."""
    if tmp.is_dir():
        if path.exists() and overwrite:  # a folder cannot replace another in one step
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, trash / path.name)
            os.rename(tmp, path)
            _remove(trash)
        elif path.exists():
            raise FileExistsError(path)
        else:
            os.rename(tmp, path)
    elif overwrite:
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path)  # fails if path exists: never replaces another job's output
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links (FAT, some network shares)
            if path.exists():
                raise FileExistsError(path) from None
            os.replace(tmp, path)
            return
        tmp.unlink()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# --------------------------------------------------------------------------- in-memory outputs

#: :func:`allocate_zeros` gives a numpy array up to this many bytes, a temporary zarr
#: array above (napari's new Labels layers and prediction outputs of big stacks).
NUMPY_LIMIT_BYTES = 1 << 30


def allocate_zeros(
    shape: tuple[int, ...], dtype: Any, *, name: str = "labels", limit: int | None = None
) -> Any:
    """A writable zero array: numpy up to ``limit`` bytes, else zarr in a temporary folder.

    A numpy array (``np.zeros``) commits memory only for the pages written to;
    a zarr array is chunked one plane tile (at most 1024 x 1024) at a time, so
    only written chunks use memory or disk.

    Parameters
    ----------
    shape : tuple of int
        Array shape; the last two axes are the plane (rows, columns).
    dtype : numpy dtype
        Element type.
    name : str
        Name of the zarr folder (only used for big arrays).
    limit : int, optional
        Largest numpy array in bytes; None: :data:`NUMPY_LIMIT_BYTES`.

    Returns
    -------
    array : numpy.ndarray or zarr.Array
        Zero-filled. A zarr array lives in a temporary folder that is removed
        when the array is garbage-collected or the interpreter exits: save
        what it holds to keep it.

    Examples
    --------
    >>> allocate_zeros((2, 3), np.uint8).tolist()
    [[0, 0, 0], [0, 0, 0]]
    >>> type(allocate_zeros((2, 3), np.uint8, limit=0)).__name__
    'Array'
    """
    import math
    import weakref

    dtype = np.dtype(dtype)
    limit = NUMPY_LIMIT_BYTES if limit is None else limit
    if math.prod(shape) * dtype.itemsize <= limit:
        return np.zeros(shape, dtype)
    import zarr

    folder = tempfile.mkdtemp(prefix="napari-unet-")
    chunks = (1,) * (len(shape) - 2) + tuple(min(s, 1024) for s in shape[-2:])
    array = zarr.open_array(
        str(Path(folder) / f"{name}.zarr"),
        mode="w",
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=0,
    )
    try:
        weakref.finalize(array, shutil.rmtree, folder, ignore_errors=True)
    except TypeError:  # not weak-referenceable: clean up at exit only
        import atexit

        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    logging.getLogger(__name__).info("new %s array %s of %s in %s", name, shape, dtype, folder)
    return array


def max_label(data: Any) -> int:
    """Largest value of a labels array: numpy at once, zarr/dask/memmap plane by plane.

    Parameters
    ----------
    data : array-like
        Labels of shape (..., M, N); an empty array gives 0.

    Returns
    -------
    int

    Examples
    --------
    >>> max_label(np.array([[0, 3], [7, 1]]))
    7
    """
    if isinstance(data, np.ndarray):
        return int(data.max()) if data.size else 0
    if any(s == 0 for s in data.shape):
        return 0
    if len(data.shape) < 3:
        return int(np.asarray(data).max())
    return max(int(np.asarray(data[i]).max()) for i in np.ndindex(*data.shape[:-2]))
