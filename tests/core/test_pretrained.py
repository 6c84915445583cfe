"""The bundled nuclei model: safe loading, names everywhere, fine-tuning from it."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from skimage.filters import gaussian
from skimage.transform import rescale

from napari_unet.cli import main
from napari_unet.core import (
    ModelFileError,
    TrainConfig,
    UNet,
    load_model,
    load_pretrained,
    predict_dask,
    predict_tiled,
    pretrained_models,
    save_model,
    train,
)
from napari_unet.core.checkpoint import read_model_file, suggested_threshold
from napari_unet.core.metrics import instance_scores, seg_score
from napari_unet.core.postprocess import object_diameter, probabilities_to_labels
from napari_unet.core.pretrained import default_start, model_file
from napari_unet.core.segment import PlaneDone, iter_segment, object_zoom
from synthetic import touching_disks


def nuclei_image(seed: int = 0, shape=(192, 192), n: int = 14, radius=(7, 11), zoom=1):
    """Separate blurred bright disks on a dark noisy background, and their labels."""
    labels = np.zeros(shape, np.uint16)
    rng = np.random.default_rng(seed)
    from skimage.draw import disk

    for i in range(1, n + 1):
        for _ in range(50):  # place without touching
            r = int(rng.integers(*radius))
            c = rng.integers(r + 2, np.array(shape) - r - 2)
            rr, cc = disk(tuple(c), r + 2, shape=shape)
            if not labels[rr, cc].any():
                labels[disk(tuple(c), r, shape=shape)] = i
                break
    image = gaussian((labels > 0) * 120.0, 1.5) + 20 + rng.normal(0, 6, shape)
    if zoom != 1:
        image = rescale(image, zoom, order=1)
        labels = rescale(labels, zoom, order=0, preserve_range=True, anti_aliasing=False)
    return image.clip(0, 255).astype(np.uint8), labels.astype(np.uint16)


def segment(model, image, **kwargs):
    for event in iter_segment(model, image, device="cpu", **kwargs):
        if isinstance(event, PlaneDone):
            return event.labels
    raise AssertionError("no plane segmented")


@pytest.fixture(scope="module")
def bundled():
    return load_pretrained("nuclei")


def test_registry_lists_the_bundled_model():
    models = pretrained_models()
    assert "nuclei" in models and "fluorescence" in models["nuclei"]
    assert model_file("nuclei").is_file()


def test_bundled_file_is_small_half_precision_and_safe():
    path = model_file("nuclei")
    assert path.stat().st_size <= 10e6
    payload = read_model_file(path)  # torch.load(weights_only=True)
    floats = [v for v in payload["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    meta = payload["metadata"]
    assert meta["name"] == "nuclei"
    assert meta["pretraining"]["script"] == "benchmarks/train_pretrained.py"
    assert len(meta["pretraining"]["data_ids_sha256"]) == 64
    assert 8 < meta["diameter"] < 40


def test_bundled_model_segments_synthetic_nuclei_zero_shot(bundled):
    assert next(bundled.parameters()).dtype == torch.float32
    scores = []
    for seed in range(3):
        image, truth = nuclei_image(seed)
        labels = segment(bundled, image, threshold=suggested_threshold(bundled))
        scores.append((instance_scores(truth, labels)[0].f1, seg_score(truth, labels)))
    f1, seg = np.mean(scores, axis=0)
    assert f1 >= 0.9 and seg >= 0.7, scores


def test_diameter_segments_the_rescaled_image(bundled):
    """iter_segment(diameter=...) against resize -> predict -> resize back with scikit-image."""
    from skimage.transform import resize

    image = nuclei_image(3, shape=(150, 170), n=8)[0]
    diameter = 2 * bundled.metadata["diameter"]  # zoom 0.5
    events = list(iter_segment(bundled, image, device="cpu", diameter=diameter))
    done = events[-1]
    assert isinstance(done, PlaneDone)
    last = events[-2]  # the plane's probabilities at the image's size
    assert last.regions == ((slice(0, 150), slice(0, 170)),)
    assert last.probabilities.shape == (2, 150, 170)
    assert all(e.regions == () for e in events[:-2])  # tiles of the rescaled plane

    x = bundled.normalization(image)
    small = resize(x, (75, 85), order=1, anti_aliasing=True).astype(np.float32)
    prob = predict_tiled(bundled, small, device="cpu")
    prob = np.stack([resize(p, (150, 170), order=1) for p in prob])
    np.testing.assert_allclose(done.probabilities, prob, atol=0.15)
    reference = probabilities_to_labels(prob)
    assert ((done.labels > 0) == (reference > 0)).mean() > 0.98


def test_object_zoom_arithmetic_and_limits(bundled):
    trained = bundled.metadata["diameter"]
    assert object_zoom(bundled, None) == 1.0
    assert object_zoom(bundled, 2 * trained) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="too far"):
        object_zoom(bundled, trained * 100)
    with pytest.raises(ValueError, match="> 0"):
        object_zoom(bundled, 0)
    assert object_zoom(UNet(base_channels=2), 50) == 1.0  # a model that does not know its size


def test_names_resolve_in_python_and_dask(bundled, tmp_path):
    image = nuclei_image(1, shape=(100, 120))[0]
    x = bundled.normalization(image)
    expected = predict_tiled(bundled, x, device="cpu")
    np.testing.assert_allclose(predict_tiled(load_model("nuclei"), x, device="cpu"), expected)
    import dask.array as da

    lazy = predict_dask("nuclei", da.from_array(x[None], chunks=(1, 100, 120)), device="cpu")
    np.testing.assert_allclose(lazy.compute()[0], expected, atol=1e-5)


def test_an_existing_file_wins_over_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_model(tmp_path / "nuclei", UNet(base_channels=2), mine=True)
    assert load_model("nuclei").metadata["mine"] is True


def test_wrong_names_list_the_available_models(tmp_path, capsys):
    with pytest.raises(ModelFileError, match="available: nuclei"):
        load_pretrained("nucleus")
    with pytest.raises(ModelFileError, match="bundled models: nuclei"):
        load_model("nucleus")
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((32, 32), np.uint8))
    code = main(["predict", "nucleus", str(tmp_path / "in.tif"), str(tmp_path / "out.tif")])
    err = capsys.readouterr().err
    assert code == 2 and "bundled models: nuclei" in err


def test_cli_predict_accepts_the_name(bundled, tmp_path, capsys):
    image = nuclei_image(2)[0]
    tifffile.imwrite(tmp_path / "in.tif", image)
    out = tmp_path / "out.tif"
    code = main(["predict", "nuclei", str(tmp_path / "in.tif"), str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    expected = segment(bundled, image, threshold=suggested_threshold(bundled))
    np.testing.assert_array_equal(tifffile.imread(out), expected)


def test_default_start_follows_the_task():
    assert default_start("cells") == "nuclei"
    assert default_start("membranes") is None
    assert default_start("cells", in_channels=3) is None


def _tiny_task():
    truth = touching_disks((96, 96), n=10, seed=4)
    image = gaussian((truth > 0) * 150.0, 1) + 20
    return [image.astype(np.float32)], [truth]


def test_fine_tuning_changes_the_weights_and_records_its_start(bundled):
    images, labels = _tiny_task()
    config = TrainConfig(steps=3, batch_size=1, patch_size=188, validation="none")
    result = train(images, labels, model=bundled, config=config, device="cpu")
    before, after = bundled.state_dict(), result.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert result.model.metadata["training"]["start"] == "nuclei"
    assert result.model.metadata["diameter"] == pytest.approx(object_diameter(labels[0]))


def test_fine_tuning_never_returns_worse_than_its_start_on_validation(bundled):
    images, labels = _tiny_task()
    # a learning rate that wrecks the network: the start must be kept
    config = TrainConfig(
        steps=4, batch_size=1, patch_size=188, learning_rate=5.0, validate_every=2
    )
    result = train(images, labels, model=bundled, config=config, device="cpu")
    assert result.best_step == 0 and result.history[0]["step"] == 0
    start, kept = bundled.state_dict(), result.model.state_dict()
    assert all(torch.equal(start[k], kept[k]) for k in start)
    assert result.best_score == result.history[0]["score"]


@pytest.mark.parametrize(
    ("margin", "kept_step"),
    [(0.01, 4), (0.03, 0)],  # scores: start 0.80, then 0.815, 0.82, 0.81, 0.80
)
def test_a_checkpoint_replaces_the_start_only_by_the_margin(
    bundled, monkeypatch, margin, kept_step
):
    from napari_unet.core import training

    scores = iter([0.80, 0.815, 0.82, 0.81, 0.80])
    monkeypatch.setattr(
        training,
        "evaluate",
        lambda *a, **k: {"score": next(scores), "iou": 0.0, "f1": 0.0, "threshold": 0.5},
    )
    images, labels = _tiny_task()
    config = TrainConfig(
        steps=8, batch_size=1, patch_size=188, validate_every=2, start_margin=margin
    )
    result = train(images, labels, model=bundled, config=config, device="cpu")
    assert result.best_step == kept_step
    # once the start is beaten (0.815 > 0.80 + 0.01), a better checkpoint needs no margin
    assert result.best_score == {0: 0.80, 4: 0.82}[kept_step]


def test_cli_train_starts_from_the_bundled_model_for_cells(tmp_path, capsys):
    truth = touching_disks((96, 96), n=10, seed=4)
    image = (gaussian((truth > 0) * 150.0, 1) + 20).astype(np.uint8)
    membranes = np.ones((96, 96), np.uint8)
    membranes[::12], membranes[:, ::12] = 0, 0
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "inst.tif", truth)
    tifffile.imwrite(tmp_path / "mask.tif", (truth > 0).astype(np.uint8))
    tifffile.imwrite(tmp_path / "membranes.tif", membranes)
    short = ["--steps", "2", "--patch-size", "188", "--batch-size", "1", "--device", "cpu"]
    runs = {
        "inst.tif": ([], "from the bundled 'nuclei' model (task cells)", "nuclei"),
        "mask.tif": ([], "from the bundled 'nuclei' model (task cells)", "nuclei"),
        "membranes.tif": ([], "a new model (task membranes)", "scratch"),
    }
    for labels, (extra, says, start) in runs.items():
        out = tmp_path / f"{labels}.pt"
        argv = ["train", "--image", tmp_path / "img.tif", "--labels", tmp_path / labels]
        code = main([str(a) for a in [*argv, "--out", out, *short, *extra]])
        err = capsys.readouterr().err
        assert code == 0, err
        assert says in err
        assert load_model(out).metadata["training"]["start"] == start
    out = tmp_path / "scratch.pt"
    argv = ["train", "--image", tmp_path / "img.tif", "--labels", tmp_path / "inst.tif"]
    code = main([str(a) for a in [*argv, "--out", out, *short, "--from", "scratch"]])
    assert code == 0
    assert load_model(out).metadata["training"]["start"] == "scratch"


def test_half_precision_files_load_as_float32_and_predict_alike(tmp_path):
    torch.manual_seed(0)
    net = UNet(base_channels=4, norm="batch").eval()
    full = save_model(tmp_path / "full.pt", net)
    half = save_model(tmp_path / "half.pt", net, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_model(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = np.random.default_rng(0).random((200, 200), np.float32)
    a, b = predict_tiled(net, x, device="cpu"), predict_tiled(loaded, x, device="cpu")
    assert np.abs(a - b).max() < 1e-2
    assert (probabilities_to_labels(a) > 0).mean() == pytest.approx(
        (probabilities_to_labels(b) > 0).mean(), abs=0.01
    )


def test_fine_tuning_keeps_the_start_threshold_unless_given(bundled):
    import copy

    images, labels = _tiny_task()
    start = copy.deepcopy(bundled)
    start.metadata["threshold"] = 0.42  # not one of the thresholds training tries
    config = TrainConfig(steps=2, batch_size=1, patch_size=188, validate_every=1)
    result = train(images, labels, model=start, config=config, device="cpu")
    assert result.threshold == 0.42 and suggested_threshold(result.model) == 0.42
    assert all(h.get("threshold", 0.42) == 0.42 for h in result.history)
    given = TrainConfig(steps=2, batch_size=1, patch_size=188, threshold=0.65)
    assert train(images, labels, model=start, config=given, device="cpu").threshold == 0.65
