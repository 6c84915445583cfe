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

    import tifffile

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    path = tmp_path / "out.tif"
    writer = PlaneWriter(path, (2, 4, 5), np.uint8)
    writer.write(np.zeros((4, 5)))
    writer.write(np.zeros((4, 5)))
    monkeypatch.setattr(tifffile.TiffWriter, "close", full)
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
