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
    path = tmp_path / f"out{suffix}"
    writer = PlaneWriter(path, (3, 4, 5), np.uint8)
    writer.write(np.ones((4, 5)))
    writer.close(keep=True)
    result = np.asarray(open_image(path)[:])
    assert result.shape == (3, 4, 5) and result[0].all() and not result[1:].any()
    other = tmp_path / f"failed{suffix}"
    with pytest.raises(RuntimeError), PlaneWriter(other, (3, 4, 5), np.uint8) as w:
        w.write(np.ones((4, 5)))
        raise RuntimeError("crash")
    assert not other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


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
