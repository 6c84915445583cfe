import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from napari_unet.core.checkpoint import ModelFileError, load_model, read_model_file, save_model
from napari_unet.core.model import UNet
from napari_unet.core.preprocess import Normalization
from napari_unet.core.tiling import predict_tiled


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    net = UNet(in_channels=2, n_classes=3, depth=3, base_channels=4, norm="batch", dropout=0.2)
    net.normalization = Normalization(2.0, 99.0)
    path = save_model(tmp_path / "m.pt", net, images=["a.tif"], steps=12)
    loaded = load_model(path)
    assert loaded.config == net.config
    assert loaded.normalization == Normalization(2.0, 99.0)
    assert loaded.metadata == {"images": ["a.tif"], "steps": 12}
    assert not loaded.training
    image = np.random.default_rng(0).random((2, 50, 60)).astype(np.float32)
    a = predict_tiled(net, image, device="cpu")
    b = predict_tiled(loaded, image, device="cpu")
    np.testing.assert_array_equal(a, b)
    info = read_model_file(path)
    assert info["napari_unet_version"] and info["format_version"] == 1


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    net = UNet(base_channels=2)
    path = save_model(tmp_path / "m.pt", net, note="first")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(path, net, note="second")
    assert load_model(path).metadata == {"note": "first"}  # the old file is intact
    assert os.listdir(tmp_path) == ["m.pt"]


def test_crafted_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-unet/model", "payload": Exploit()}, path)
    with pytest.raises(ModelFileError, match="would run code"):
        load_model(path)
    assert not marker.exists()


def test_plain_pickle_is_not_a_model(tmp_path):
    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps({"format": "napari-unet/model"}))
    with pytest.raises(ModelFileError, match="not a napari-unet model file"):
        load_model(path)


def test_truncated_file(tmp_path):
    path = save_model(tmp_path / "m.pt", UNet(base_channels=2))
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        load_model(cut)


def test_foreign_torch_files(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save(UNet(base_channels=2).state_dict(), foreign)
    with pytest.raises(ModelFileError, match="not a napari-unet model file"):
        load_model(foreign)
    bad = tmp_path / "bad.pt"
    good = read_model_file(save_model(tmp_path / "m.pt", UNet(base_channels=2)))
    good["config"]["base_channels"] = 4  # weights no longer fit
    torch.save(good, bad)
    with pytest.raises(ModelFileError, match="malformed"):
        load_model(bad)
    newer = tmp_path / "newer.pt"
    good["format_version"] = 99
    torch.save(good, newer)
    with pytest.raises(ModelFileError, match="version 99"):
        load_model(newer)


def test_missing_and_non_zip(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    assert not zipfile.is_zipfile(junk)
    with pytest.raises(ModelFileError):
        load_model(junk)


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        save_model(tmp_path / "m.pt", UNet(base_channels=2), bad=object())


def test_a_loaded_model_runs_on_the_cpu_without_a_copy(tmp_path, monkeypatch):
    from napari_unet.core import predictor
    from napari_unet.core.predictor import NetworkPredictor

    copies = []  # the networks the predictor copied to run them (on_device's copies)
    move_to = predictor.move_to
    monkeypatch.setattr(predictor, "move_to", lambda m, d: copies.append(m) or move_to(m, d))
    made = UNet(depth=2, base_channels=2).eval()
    model = load_model(save_model(tmp_path / "m.pt", made))
    assert all(
        p.is_contiguous(memory_format=torch.channels_last)
        for p in model.parameters()
        if p.dim() == 4
    )
    image = np.random.default_rng(0).random((70, 90), dtype=np.float32)
    np.testing.assert_allclose(
        predict_tiled(model, image, device="cpu"), predict_tiled(made, image, device="cpu")
    )
    assert len(copies) == 1  # only the model in torch's default layout was copied
    # a predictor asked for its geometry only copies nothing
    geometry = NetworkPredictor(made, torch.device("cpu"))
    assert geometry.tile_for_core(16) > 0 and geometry.bytes_per_pixel > 0
    assert len(copies) == 1
