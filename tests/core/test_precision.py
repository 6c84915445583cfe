"""Inference precision: the choices, float32 exact, reduced precision tiled == whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.cli import main
from napari_unet.core.device import inference_dtype, precision_name
from napari_unet.core.distributed import predict_dask
from napari_unet.core.model import UNet, valid_input_size
from napari_unet.core.precision import PRECISIONS, check_precision
from napari_unet.core.predictor import NetworkPredictor, halo
from napari_unet.core.tiling import predict_tiled

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def net() -> UNet:
    torch.manual_seed(3)
    return UNet(base_channels=4, norm="batch").eval()


def whole_pass(net: UNet, image: np.ndarray, dtype: torch.dtype | None) -> np.ndarray:
    """One pass over the whole mirror-padded image with ``dtype`` autocast (np.pad)."""
    h, w = image.shape
    m = halo(net)
    ph, pw = valid_input_size(h + 2 * m), valid_input_size(w + 2 * m)
    padded = np.pad(image, [(m, ph - h - m), (m, pw - w - m)], mode="reflect")
    x = torch.from_numpy(padded)[None, None]
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        logits = net(x)
    return torch.softmax(logits.float(), dim=1).numpy()[0, :, :h, :w]


def test_the_choices_and_what_auto_means_here():
    assert PRECISIONS == ("auto", "float32", "bfloat16", "float16")
    assert inference_dtype("auto", CPU) is None  # float32 on CPUs without native bfloat16
    assert inference_dtype("float32", CPU) is None
    assert inference_dtype("bfloat16", CPU) is torch.bfloat16
    assert inference_dtype("float16", CPU) is torch.float16
    assert [precision_name(inference_dtype(p, CPU)) for p in PRECISIONS[1:]] == [
        "float32",
        "bfloat16",
        "float16",
    ]
    with pytest.raises(ValueError, match="must be one of auto, float32"):
        check_precision("fp8")
    with pytest.raises(ValueError, match="must be one of"):
        NetworkPredictor(UNet(base_channels=2), CPU, "half")


def test_auto_is_bfloat16_where_the_cpu_computes_it(net, monkeypatch):
    from napari_unet.core import device

    image = np.random.default_rng(0).random((150, 170), dtype=np.float32)
    float32 = predict_tiled(net, image, tile_size=204, device="cpu", precision="float32")
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert inference_dtype("auto", CPU) is torch.bfloat16
    auto = predict_tiled(net, image, tile_size=204, device="cpu")
    bf16 = predict_tiled(net, image, tile_size=204, device="cpu", precision="bfloat16")
    np.testing.assert_array_equal(auto, bf16)
    assert np.abs(auto - float32).max() > 1e-4


def test_float32_stays_exact(net):
    image = np.random.default_rng(0).random((150, 170), dtype=np.float32)
    for precision in ("auto", "float32"):
        tiled = predict_tiled(net, image, tile_size=204, device="cpu", precision=precision)
        np.testing.assert_allclose(tiled, whole_pass(net, image, None), atol=2e-5)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_reduced_precision_tiled_equals_whole_image_in_that_precision(net, precision):
    image = np.random.default_rng(1).random((150, 170), dtype=np.float32)
    dtype = inference_dtype(precision, CPU)
    tiled = predict_tiled(net, image, tile_size=204, device="cpu", precision=precision)
    whole = whole_pass(net, image, dtype)
    exact = whole_pass(net, image, None)
    # stated tolerance: the rounding of 16-bit arithmetic, not a seam
    np.testing.assert_allclose(tiled, whole, atol=0.02)
    assert np.abs(tiled - whole).mean() < 2e-3
    # and it really ran in reduced precision: it is not the float32 result
    assert np.abs(tiled - exact).max() > 1e-4


def test_predict_dask_passes_the_precision_to_the_workers(net):
    image = np.random.default_rng(2).random((2, 150, 170), dtype=np.float32)
    lazy = predict_dask(net, image, block_size=64, tile_size=204, precision="bfloat16")
    ref = predict_tiled(net, image, tile_size=204, device="cpu", precision="bfloat16")
    out = lazy.compute(scheduler="synchronous")
    np.testing.assert_allclose(out, ref, atol=0.02)
    assert np.abs(out - predict_tiled(net, image, device="cpu")).max() > 1e-4
    with pytest.raises(ValueError, match="must be one of"):
        predict_dask(net, image, precision="int8")


def test_cli_precision_choice(tmp_path, capsys):
    import tifffile

    from napari_unet.core.checkpoint import save_model

    save_model(tmp_path / "m.pt", UNet(base_channels=2).eval())
    tifffile.imwrite(tmp_path / "img.tif", np.random.default_rng(0).random((60, 70)))
    outs = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / f"{precision}.tif"
        args = ["predict", str(tmp_path / "m.pt"), str(tmp_path / "img.tif"), str(out)]
        args += ["--precision", precision, "--device", "cpu", "--probabilities"]
        args += [str(tmp_path / f"{precision}_prob.tif")]
        assert main(args) == 0
        outs[precision] = tifffile.imread(tmp_path / f"{precision}_prob.tif")
    assert 0 < np.abs(outs["float32"] - outs["bfloat16"]).max() < 0.05
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "m.pt", "a.tif", "b.tif", "--precision", "int8"])
    assert exit_.value.code == 2 and "invalid choice: 'int8'" in capsys.readouterr().err
