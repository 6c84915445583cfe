import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_unet.cli import main
from napari_unet.core.axes import arrange, file_axes
from napari_unet.core.checkpoint import load_model, save_model
from napari_unet.core.model import UNet
from synthetic import image_of, touching_disks


@pytest.fixture(scope="module")
def gray_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "gray.pt"
    return save_model(path, UNet(base_channels=2, depth=2).eval())


def rgb_of(gray):
    return np.stack([gray // 2, gray, 255 - gray], axis=-1).astype(np.uint8)  # (Y, X, 3)


def test_file_axes_from_tiff_and_zarr(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((32, 32, 3), np.uint8))
    tifffile.imwrite(
        tmp_path / "hyper.tif",
        np.zeros((4, 2, 32, 32), np.uint16),
        imagej=True,
        metadata={"axes": "ZCYX"},
    )
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((6, 32, 32), np.uint8))
    assert file_axes(tmp_path / "rgb.tif") == "YXS"
    assert file_axes(tmp_path / "hyper.tif") == "ZCYX"
    assert file_axes(tmp_path / "stack.tif") is None  # planes only: nothing to arrange
    z = zarr.open(str(tmp_path / "a.zarr"), mode="w", shape=(2, 32, 32), dtype="u1")
    z.attrs["_ARRAY_DIMENSIONS"] = ["c", "y", "x"]
    assert file_axes(tmp_path / "a.zarr") == "CYX"


def test_arrange_moves_and_picks_channels_lazily(tmp_path):
    image = np.arange(2 * 3 * 16 * 16).reshape(2, 16, 16, 3)  # Z, Y, X, C
    out = arrange(image, "ZYXC", in_channels=3)
    assert out.shape == (2, 3, 16, 16) and np.shares_memory(out, image)
    np.testing.assert_array_equal(out[1, 2], image[1, :, :, 2])
    one = arrange(image, "ZYXC", channels=[2])
    assert one.shape == (2, 16, 16)
    np.testing.assert_array_equal(one, image[..., 2])
    two = arrange(image, "ZYXC", in_channels=2, channels=[2, 0])
    np.testing.assert_array_equal(two[:, 0], image[..., 2])
    z = zarr.open(str(tmp_path / "z.zarr"), mode="w", shape=image.shape, dtype=image.dtype)
    z[:] = image
    lazy = arrange(z, "ZYXC", channels=[1])
    assert type(lazy).__module__.startswith("dask")  # nothing read yet
    np.testing.assert_array_equal(np.asarray(lazy), image[..., 1])


@pytest.mark.parametrize(
    ("axes", "kwargs", "message"),
    [
        ("ZYX", {}, "do not fit"),
        ("ZYXX", {}, "distinct"),
        ("CYXS", {}, "more than one channel"),
        ("ZYXC", {}, "has 3 channels .* takes 1: pick one with --channels N \\(0-2\\)"),
        ("ZYXC", {"channels": [3]}, "channels 0-2"),
        ("ZYXC", {"in_channels": 2}, "pick 2 with --channels"),
        ("ZQYX", {"channels": [0]}, "no channel axis"),
        (None, {}, "too short for Y and X"),
    ],
)
def test_arrange_errors_say_what_is_wrong(axes, kwargs, message):
    with pytest.raises(ValueError, match=message):
        arrange(np.zeros((2, 16, 16, 3)), axes, **kwargs)


def test_rgb_tiff_predict_needs_a_channel_and_uses_it(tmp_path, gray_model, capsys):
    gray = image_of(touching_disks((64, 64)))
    tifffile.imwrite(tmp_path / "rgb.tif", rgb_of(gray))
    tifffile.imwrite(tmp_path / "green.tif", gray)
    out = tmp_path / "out.tif"
    code = main(["predict", str(gray_model), str(tmp_path / "rgb.tif"), str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "3 channels (axes YXS)" in err and "--channels N" in err
    assert not out.exists()
    argv = ["predict", str(gray_model), str(tmp_path / "rgb.tif"), str(out), "--channels", "1"]
    assert main([*argv, "--device", "cpu"]) == 0
    reference = tmp_path / "ref.tif"
    assert main(["predict", str(gray_model), str(tmp_path / "green.tif"), str(reference)]) == 0
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(reference))


def test_channel_last_array_without_axes_is_not_read_as_strips(tmp_path, gray_model, capsys):
    gray = image_of(touching_disks((64, 64)))
    tifffile.imwrite(tmp_path / "yxc.tif", rgb_of(gray), photometric="minisblack")  # no RGB tag
    out = tmp_path / "out.tif"
    code = main(["predict", str(gray_model), str(tmp_path / "yxc.tif"), str(out)])
    assert code == 2 and "too short for Y and X" in capsys.readouterr().err
    argv = ["--channel-axis", "-1", "--channels", "1", "--device", "cpu"]
    assert main(["predict", str(gray_model), str(tmp_path / "yxc.tif"), str(out), *argv]) == 0
    assert tifffile.imread(out).shape == (64, 64)


def test_multichannel_hyperstack_predicts_with_a_multichannel_model(tmp_path):
    torch.manual_seed(0)
    model = save_model(tmp_path / "two.pt", UNet(in_channels=2, base_channels=2, depth=2).eval())
    stack = np.random.default_rng(0).integers(0, 255, (3, 2, 48, 48), np.uint16)  # Z, C
    tifffile.imwrite(tmp_path / "zcyx.tif", stack, imagej=True, metadata={"axes": "ZCYX"})
    out = tmp_path / "out.tif"
    assert main(["predict", str(model), str(tmp_path / "zcyx.tif"), str(out)]) == 0
    assert tifffile.imread(out).shape == (3, 48, 48)


def test_train_on_an_rgb_tiff_trains_on_its_channels(tmp_path, capsys):
    truth = touching_disks((96, 96))
    tifffile.imwrite(tmp_path / "rgb.tif", rgb_of(image_of(truth)))
    tifffile.imwrite(tmp_path / "lab.tif", truth)
    argv = ["train", "--image", str(tmp_path / "rgb.tif"), "--labels", str(tmp_path / "lab.tif")]
    short = ["--steps", "1", "--patch-size", "188", "--device", "cpu"]
    assert main([*argv, *short, "--out", str(tmp_path / "rgb.pt")]) == 0
    assert "the images have 3 channels" in capsys.readouterr().err
    assert load_model(tmp_path / "rgb.pt").in_channels == 3  # not 96 strips of 3 px
    assert main([*argv, *short, "--out", str(tmp_path / "g.pt"), "--channels", "1"]) == 0
    assert "from the bundled 'nuclei' model" in capsys.readouterr().err
