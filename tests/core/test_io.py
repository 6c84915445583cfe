import numpy as np
import pytest
import tifffile
import zarr

from napari_unet.core.io import ImageReadError, PlaneWriter, open_image


def test_open_tiff_lazily(tmp_path):
    data = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    tifffile.imwrite(tmp_path / "raw.tif", data, photometric="minisblack")
    tifffile.imwrite(tmp_path / "zlib.tif", data, compression="zlib", photometric="minisblack")
    raw = open_image(tmp_path / "raw.tif")
    assert isinstance(raw, np.memmap)
    packed = open_image(tmp_path / "zlib.tif")
    assert not isinstance(packed, np.ndarray)  # zarr view over the pages
    for image in (raw, packed):
        assert image.shape == data.shape and image.dtype == data.dtype
        np.testing.assert_array_equal(image[1, 5:9, 3:7], data[1, 5:9, 3:7])


def test_open_zarr(tmp_path):
    z = zarr.open(str(tmp_path / "a.zarr"), mode="w", shape=(4, 5), dtype="u1")
    z[:] = 7
    assert open_image(tmp_path / "a.zarr")[2, 3] == 7


@pytest.mark.parametrize("content", [b"", b"II*\x00garbage", b"not a tiff at all"])
def test_corrupt_tiff(tmp_path, content):
    path = tmp_path / "bad.tif"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match="cannot read"):
        open_image(path)


def test_truncated_compressed_tiff(tmp_path):
    path = tmp_path / "t.tif"
    tifffile.imwrite(
        path, np.random.default_rng(0).integers(0, 255, (2, 64, 64), np.uint8), compression="zlib"
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError):
        image = open_image(path)
        np.asarray(image[:])  # decoding a missing page must fail loudly too


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        open_image(tmp_path / "nope.tif")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(ImageReadError, match="unsupported"):
        open_image(tmp_path / "a.png")


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_plane_writer_round_trip(tmp_path, suffix):
    data = np.random.default_rng(0).integers(0, 9, (2, 3, 10, 12)).astype(np.uint32)
    path = tmp_path / f"out{suffix}"
    with PlaneWriter(path, data.shape, np.uint32) as writer:
        for index in np.ndindex(2, 3):
            assert not path.exists()  # written under a temporary name until complete
            writer.write(data[index])
    np.testing.assert_array_equal(np.asarray(open_image(path)[:]), data)
    with pytest.raises(FileExistsError):
        PlaneWriter(path, data.shape, np.uint32)


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_plane_writer_partial_and_failed(tmp_path, suffix):
    from napari_unet.core.io import partial_path

    path = tmp_path / f"out{suffix}"
    writer = PlaneWriter(path, (3, 4, 5), np.uint8)
    writer.write(np.ones((4, 5)))
    assert writer.close(keep=True) == partial_path(path) == tmp_path / f"out.partial{suffix}"
    assert not path.exists()  # a partial result never takes the output's name
    result = np.asarray(open_image(partial_path(path))[:])
    assert result.shape == (3, 4, 5) and result[0].all() and not result[1:].any()
    other = tmp_path / f"failed{suffix}"
    with pytest.raises(RuntimeError), PlaneWriter(other, (3, 4, 5), np.uint8) as w:
        w.write(np.ones((4, 5)))
        raise RuntimeError("crash")
    assert not other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [partial_path(path).name]


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_overwrite_keeps_the_old_output_until_the_new_one_is_complete(tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    old = np.full((2, 4, 5), 7, np.uint8)
    with PlaneWriter(path, old.shape, np.uint8) as w:
        for plane in old:
            w.write(plane)
    writer = PlaneWriter(path, old.shape, np.uint8, overwrite=True)
    writer.write(np.ones((4, 5)))  # then interrupted (Ctrl-C): keep the partial result
    writer.close(keep=True)
    np.testing.assert_array_equal(np.asarray(open_image(path)[:]), old)  # untouched
    with PlaneWriter(path, old.shape, np.uint8, overwrite=True) as w:
        for plane in old + 1:
            w.write(plane)
    np.testing.assert_array_equal(np.asarray(open_image(path)[:]), old + 1)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {path.name, f"out.partial{suffix}"}  # no temporary files left


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_two_writers_of_one_output_never_garble_it(tmp_path, suffix):
    from napari_unet.core.io import partial_path

    path = tmp_path / f"out{suffix}"
    first = PlaneWriter(path, (2, 4, 5), np.uint8)
    second = PlaneWriter(path, (2, 4, 5), np.uint8)  # started before the first finished
    for _ in range(2):
        first.write(np.full((4, 5), 1))
        second.write(np.full((4, 5), 2))
    assert first.close() == path
    with pytest.raises(FileExistsError, match="another job"):
        second.close()  # the loser fails cleanly and keeps its result aside
    assert (np.asarray(open_image(path)[:]) == 1).all()
    assert (np.asarray(open_image(partial_path(path))[:]) == 2).all()
    third = PlaneWriter(path, (2, 4, 5), np.uint8, overwrite=True)
    for _ in range(2):
        third.write(np.full((4, 5), 3))
    assert third.close() == path  # with overwrite the last one wins, whole
    assert (np.asarray(open_image(path)[:]) == 3).all()


def test_disk_full_removes_the_partial_file(tmp_path, monkeypatch):
    import errno
    import os

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    path = tmp_path / "out.tif"
    writer = PlaneWriter(path, (2, 4, 5), np.uint8)
    writer.write(np.zeros((4, 5)))
    writer.write(np.zeros((4, 5)))
    monkeypatch.setattr(os, "fsync", full)  # the data reach the disk when finishing
    with pytest.raises(OSError, match=r"No space left.*partial file was removed"):
        writer.close()
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_outputs_get_the_permissions_of_the_umask(tmp_path):
    import os

    path = tmp_path / "out.tif"
    old = os.umask(0o022)
    try:
        with PlaneWriter(path, (4, 5), np.uint8) as w:
            w.write(np.zeros((4, 5)))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_plane_writer_checks(tmp_path):
    with pytest.raises(ValueError, match=r"\.tif"):
        PlaneWriter(tmp_path / "x.png", (4, 5), np.uint8)
    with pytest.raises(ValueError, match="folder"):
        PlaneWriter(tmp_path / "no" / "x.tif", (4, 5), np.uint8)
    with PlaneWriter(tmp_path / "x.tif", (4, 5), np.uint8) as w:
        with pytest.raises(ValueError, match="shape"):
            w.write(np.zeros((5, 4)))
        w.write(np.zeros((4, 5)))
        with pytest.raises(ValueError, match="already"):
            w.write(np.zeros((4, 5)))


def test_outputs_are_published_where_hard_links_are_not_supported(tmp_path, monkeypatch):
    import errno
    import os

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")  # FAT, some network shares

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "out.tif"
    late = PlaneWriter(path, (4, 5), np.uint8)  # started before the first one finished
    with PlaneWriter(path, (4, 5), np.uint8) as w:
        w.write(np.ones((4, 5)))
    assert (np.asarray(open_image(path)[:]) == 1).all()
    late.write(np.zeros((4, 5)))
    with pytest.raises(FileExistsError, match="another job"):
        late.close()  # the first result is still never replaced
    assert (np.asarray(open_image(path)[:]) == 1).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.partial.tif", "out.tif"]


def test_allocate_zeros_numpy_then_temporary_zarr(monkeypatch):
    import gc
    from pathlib import Path

    from napari_unet.core import io

    small = io.allocate_zeros((2, 8, 8), np.uint32)
    assert isinstance(small, np.ndarray) and small.dtype == np.uint32 and not small.any()

    big = io.allocate_zeros((3, 20, 2000), np.uint16, name="masks", limit=1000)
    assert isinstance(big, zarr.Array) and big.shape == (3, 20, 2000)
    assert big.dtype == np.uint16 and big.chunks == (1, 20, 1024)  # one plane tile a chunk
    big[1, 3, 4] = 7
    assert big[1, 3, 4] == 7 and int(np.asarray(big[:]).sum()) == 7
    folder = Path(str(big.store.root)).parent
    assert folder.is_dir()
    del big
    gc.collect()
    assert not folder.exists()  # the temporary folder goes with the array

    monkeypatch.setattr(io, "NUMPY_LIMIT_BYTES", 0)  # the module limit is read at call time
    assert isinstance(io.allocate_zeros((4, 4), np.uint8), zarr.Array)


def test_max_label_numpy_and_plane_by_plane():
    from napari_unet.core.io import allocate_zeros, max_label

    assert max_label(np.zeros((0, 5), np.uint32)) == 0
    assert max_label(np.array([[0, 4], [9, 1]], np.uint16)) == 9
    lazy = allocate_zeros((3, 2, 5, 6), np.uint32, limit=0)
    assert max_label(lazy) == 0
    lazy[2, 1, 4, 5] = 12
    lazy[0, 0, 0, 0] = 3
    assert max_label(lazy) == 12
    flat = allocate_zeros((5, 6), np.uint32, limit=0)
    flat[1, 1] = 5
    assert max_label(flat) == 5


def test_disk_full_while_writing_removes_the_partial_file(tmp_path, monkeypatch):
    import errno
    import os

    def full(fd, data, position):
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = PlaneWriter(tmp_path / "out.tif", (2, 4, 5), np.uint8)
    writer.write(np.zeros((4, 5)))
    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError, match=r"No space left.*partial file was removed"):
        writer.write(np.zeros((4, 5)))
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_plane_writer_blocks_in_any_order(tmp_path, suffix):
    """A plane written block by block (any order, any block size) equals the whole."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2**31, (3, 37, 53), dtype=np.uint32)
    prob = rng.random((3, 2, 37, 53), dtype=np.float32)
    with (
        PlaneWriter(tmp_path / f"l{suffix}", labels.shape, np.uint32) as lw,
        PlaneWriter(tmp_path / f"p{suffix}", prob.shape, np.float32, plane_ndim=3) as pw,
    ):
        with pytest.raises(ValueError, match="block must have shape"):
            lw.write_block(slice(0, 2), slice(0, 2), np.zeros((3, 3)))
        for p in range(3):
            blocks = [
                (slice(y, y + 16), slice(x, x + 20))
                for y in range(0, 37, 16)
                for x in range(0, 53, 20)
            ]
            for k in rng.permutation(len(blocks)):
                rows, cols = blocks[k]
                lw.write_block(rows, cols, labels[p][rows, cols])
                pw.write_block(rows, cols, prob[p][:, rows, cols])
            lw.next_plane()
            pw.next_plane()
        with pytest.raises(ValueError, match="already written"):
            lw.write_block(slice(0, 2), slice(0, 2), np.zeros((2, 2)))
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / f"l{suffix}")[:]), labels)
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / f"p{suffix}")[:]), prob)
