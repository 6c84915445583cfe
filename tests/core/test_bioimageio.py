"""bioimage.io packages: bioimageio.core's test, torchscript alone, round trip, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from napari_unet.cli import main
from napari_unet.core.bioimageio import (
    PackagedUNet,
    check_package,
    export_bioimageio,
    package_geometry,
)
from napari_unet.core.checkpoint import ModelFileError, load_model
from napari_unet.core.model import UNet
from napari_unet.core.preprocess import normalize
from napari_unet.core.tiling import predict_tiled

pytest.importorskip("bioimageio.core")


def _tiny(padding: str = "valid", seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(base_channels=2, padding=padding, norm="batch").eval()
    model.metadata = {"name": "tiny", "threshold": 0.4, "diameter": 12.5}
    return model


@pytest.fixture(scope="module")
def nuclei_package(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bioimageio") / "nuclei.zip"
    return export_bioimageio(load_model("nuclei"), path, authors=["napari-unet developers"])


@pytest.mark.slow
def test_exported_package_passes_the_bioimageio_core_model_test(nuclei_package):
    check = check_package(nuclei_package)
    assert check.passed, check.failures
    rdf = yaml.safe_load(zipfile.ZipFile(nuclei_package).read("rdf.yaml"))
    assert rdf["format_version"].startswith("0.5")
    assert set(rdf["weights"]) == {"torchscript", "pytorch_state_dict"}
    size = rdf["inputs"][0]["axes"][2]["size"]
    assert size == {"min": 208, "step": 16}
    assert rdf["inputs"][0]["preprocessing"][-2]["kwargs"]["max_percentile"] == 99.8
    assert rdf["outputs"][0]["axes"][2]["halo"] == 96


_TORCHSCRIPT_ONLY = """
import io, sys, zipfile
import numpy as np, torch
archive = zipfile.ZipFile(sys.argv[1])
net = torch.jit.load(io.BytesIO(archive.read("weights_torchscript.pt")))
raw = np.load(io.BytesIO(archive.read("test_input.npy")))
lo, hi = np.percentile(raw, [1.0, 99.8], axis=(-2, -1), keepdims=True)
with torch.no_grad():
    out = net(torch.from_numpy(((raw - lo) / (hi - lo + 1e-6)).astype(np.float32)))
np.save(sys.argv[2], out.numpy())
assert not any(m.startswith("napari_unet") for m in sys.modules), "imported napari_unet"
"""


@pytest.mark.slow
def test_torchscript_alone_reproduces_the_tiled_prediction(nuclei_package, tmp_path):
    out = tmp_path / "out.npy"
    subprocess.run(
        [sys.executable, "-c", _TORCHSCRIPT_ONLY, str(nuclei_package), str(out)],
        check=True,
        cwd=tmp_path,
    )
    archive = zipfile.ZipFile(nuclei_package)
    raw = np.load(archive.open("test_input.npy"))
    assert raw.shape == (1, 1, 256, 256)
    tiled = predict_tiled(load_model("nuclei"), normalize(raw[0, 0]), device="cpu")
    torchscript = np.load(out)[0]
    np.testing.assert_allclose(torchscript, tiled, atol=2e-5)
    np.testing.assert_allclose(np.load(archive.open("test_output.npy"))[0], tiled, atol=2e-5)
    assert (tiled[1] > 0.5).mean() > 0.05  # a real image with cells, not blank


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_packaged_unet_equals_tiled_prediction_for_any_size(padding):
    model = _tiny(padding)
    packaged = PackagedUNet(**model.config.to_dict()).eval()
    packaged.net.load_state_dict(model.state_dict())
    rng = np.random.default_rng(0)
    for shape in [(208, 208), (224, 304)]:
        image = rng.random(shape, dtype=np.float32)
        with torch.no_grad():
            out = packaged(torch.from_numpy(image)[None, None])[0].numpy()
        np.testing.assert_allclose(out, predict_tiled(model, image, device="cpu"), atol=1e-5)


def test_geometry_leaves_one_step_after_the_halo():
    for padding in ("valid", "same"):
        geometry = package_geometry(_tiny(padding))
        assert geometry["halo"] % geometry["step"] == 0
        assert geometry["min"] - 2 * geometry["halo"] == geometry["step"]


def test_round_trip_gives_identical_predictions(tmp_path):
    model = _tiny()
    rng = np.random.default_rng(1)
    sample = (rng.random((260, 230)) * 200).astype(np.uint8)
    path = export_bioimageio(model, tmp_path / "tiny.zip", sample=sample, name="tiny model")
    back = load_model(path)
    assert back.config == model.config
    assert back.normalization == model.normalization
    assert back.metadata == model.metadata
    image = normalize(rng.random((100, 130)))
    np.testing.assert_array_equal(
        predict_tiled(back, image, device="cpu"), predict_tiled(model, image, device="cpu")
    )
    raw = np.load(zipfile.ZipFile(path).open("test_input.npy"))
    assert raw.shape == (1, 1, 256, 224)  # the sample's centre, multiples of 16


def _rewrite(source: Path, target: Path, change) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            data = old.read(name)
            if name == "rdf.yaml":
                data = change(data)
            new.writestr(name, data)
    return target


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory) -> Path:
    return export_bioimageio(_tiny(), tmp_path_factory.mktemp("tiny") / "tiny.zip")


def test_a_foreign_package_is_refused_with_a_clear_message(tiny_package, tmp_path):
    def foreign(data: bytes) -> bytes:
        rdf = yaml.safe_load(data)
        rdf["weights"]["pytorch_state_dict"]["architecture"].update(
            callable="ResUNet", import_from="other_tool.models"
        )
        return yaml.safe_dump(rdf).encode()

    path = _rewrite(tiny_package, tmp_path / "foreign.zip", foreign)
    with pytest.raises(ModelFileError, match=r"did not export \(other_tool.models.ResUNet\)"):
        load_model(path)

    def torchscript_only(data: bytes) -> bytes:
        rdf = yaml.safe_load(data)
        del rdf["weights"]["pytorch_state_dict"]
        rdf["weights"]["torchscript"].pop("parent")
        return yaml.safe_dump(rdf).encode()

    path = _rewrite(tiny_package, tmp_path / "torchscript.zip", torchscript_only)
    with pytest.raises(ModelFileError, match="napari-unet did not export"):
        load_model(path)


def test_broken_packages_get_a_clear_error(tiny_package, tmp_path):
    cut = tmp_path / "cut.zip"
    cut.write_bytes(tiny_package.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="not a napari-unet model file"):
        load_model(cut)
    garbage = _rewrite(tiny_package, tmp_path / "garbage.zip", lambda _: b"type: model\n")
    with pytest.raises(ModelFileError, match="not a valid bioimage\\.io model package"):
        load_model(garbage)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("notes.txt", "not a model")
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model(other)


def test_a_package_without_its_settings_is_damaged(tiny_package, tmp_path):
    path = tmp_path / "no_settings.zip"
    with zipfile.ZipFile(tiny_package) as old, zipfile.ZipFile(path, "w") as new:
        for name in old.namelist():
            if name != "napari_unet.json":
                new.writestr(name, old.read(name))
    with pytest.raises(ModelFileError, match="damaged napari-unet package"):
        load_model(path)


def test_a_sample_too_small_or_with_wrong_channels_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 208 x 208"):
        export_bioimageio(_tiny(), tmp_path / "x.zip", sample=np.zeros((200, 400)))
    with pytest.raises(ValueError, match=r"shape \(1, Y, X\) or \(Y, X\)"):
        export_bioimageio(_tiny(), tmp_path / "x.zip", sample=np.zeros((3, 300, 300)))
    assert not (tmp_path / "x.zip").exists()


def test_cli_export_writes_a_package_and_refuses_bad_outputs(tmp_path, capsys):
    model = _tiny()
    from napari_unet.core.checkpoint import save_model

    save_model(tmp_path / "tiny.pt", model)
    out = tmp_path / "tiny.zip"
    assert main(["export", str(tmp_path / "tiny.pt"), str(out), "--no-check"]) == 0
    settings = json.loads(zipfile.ZipFile(out).read("napari_unet.json"))
    assert settings["metadata"]["threshold"] == 0.4
    rdf = yaml.safe_load(zipfile.ZipFile(out).read("rdf.yaml"))
    assert rdf["name"] == "napari-unet tiny"
    assert main(["export", str(tmp_path / "tiny.pt"), str(out), "--no-check"]) == 2
    assert "exists (--overwrite" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "tiny.pt"), str(tmp_path / "tiny.pt.tif")]) == 2
    assert "must be a .zip" in capsys.readouterr().err
