from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from scipy import ndimage as ndi

from napari_unet.cli import main
from napari_unet.core.checkpoint import save_model
from napari_unet.core.dataset import as_instances, prepare_sample, separate_touching
from napari_unet.core.model import UNet
from napari_unet.core.postprocess import FILL_GAPS, probabilities_to_labels
from napari_unet.core.tiling import predict_tiled
from napari_unet.core.weightmap import unet_weight_map


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    net = UNet(base_channels=2)
    with torch.no_grad():  # bias the head so some pixels are foreground
        net.head.bias[:] = torch.tensor([0.0, 0.05])
    return save_model(tmp_path / "model.pt", net)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_predict_2d_matches_library(tmp_path, model_file, capsys):
    image = np.random.default_rng(0).integers(0, 255, (70, 90), np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", image, compression="zlib")
    out, prob = tmp_path / "labels.tif", tmp_path / "prob.tif"
    code, err = run(
        [
            "predict",
            model_file,
            tmp_path / "img.tif",
            out,
            "--probabilities",
            prob,
            "--tile-size",
            204,
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    assert "predict" in err and "cells in 1 plane" in err
    from napari_unet.core.checkpoint import load_model

    net = load_model(model_file)
    expected = predict_tiled(net, net.normalization(image), device="cpu")
    np.testing.assert_allclose(tifffile.imread(prob), expected, atol=2e-5)
    labels = tifffile.imread(out)
    assert labels.dtype == np.uint32 and labels.shape == image.shape
    np.testing.assert_array_equal(labels, probabilities_to_labels(expected, fill_gaps=FILL_GAPS))


def test_predict_uses_the_model_threshold(tmp_path, model_file, capsys):
    from napari_unet.core.checkpoint import load_model

    image = np.random.default_rng(1).integers(0, 255, (70, 90), np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", image)
    prob_file = tmp_path / "prob.tif"
    argv = ["predict", model_file, tmp_path / "img.tif", tmp_path / "l.tif"]
    assert run([*argv, "--probabilities", prob_file], capsys)[0] == 0
    prob = tifffile.imread(prob_file)
    net = load_model(model_file)
    net.metadata["threshold"] = own = float(np.quantile(prob[1], 0.7))  # not 0.5
    save_model(tmp_path / "own.pt", net)
    for extra, threshold in (([], own), (["--threshold", 0.5], 0.5)):
        out = tmp_path / f"labels{threshold}.tif"
        code, err = run(
            ["predict", tmp_path / "own.pt", tmp_path / "img.tif", out, *extra], capsys
        )
        assert code == 0, err
        expected = probabilities_to_labels(prob, threshold=threshold, fill_gaps=FILL_GAPS)
        np.testing.assert_array_equal(tifffile.imread(out), expected)
    assert (probabilities_to_labels(prob, threshold=own) > 0).sum() < (
        probabilities_to_labels(prob) > 0
    ).sum()


def test_predict_stack_to_zarr_unique_ids(tmp_path, model_file, capsys):
    stack = np.random.default_rng(1).integers(0, 4000, (3, 40, 50), np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    out = tmp_path / "labels.zarr"
    code, err = run(
        ["predict", model_file, tmp_path / "stack.tif", out, "--device", "cpu", "--min-size", 1],
        capsys,
    )
    assert code == 0, err
    labels = zarr.open(str(out), mode="r")[:]
    assert labels.shape == (3, 40, 50)
    ids = [set(np.unique(p)) - {0} for p in labels]
    assert all(ids) and not (ids[0] & ids[1]) and not (ids[1] & ids[2])


def test_predict_bad_inputs(tmp_path, model_file, capsys):
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((30, 30), np.uint8))
    (tmp_path / "exists.tif").write_bytes(b"x")
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, np.full((30, 30), np.nan, np.float32))
    rgb_model = save_model(tmp_path / "rgb.pt", UNet(in_channels=3, base_channels=2))
    line = tmp_path / "line.tif"
    tifffile.imwrite(line, np.zeros(30, np.uint8))
    cases = [
        ([model_file, tmp_path / "missing.tif", tmp_path / "o.tif"], "not found"),
        ([model_file, image, tmp_path / "exists.tif"], "exists"),
        ([image, image, tmp_path / "o.tif"], "not a napari-unet model"),
        ([model_file, nan, tmp_path / "o.tif"], "NaN"),
        ([rgb_model, image, tmp_path / "o.tif"], "expects 3 channels"),
        ([model_file, line, tmp_path / "o.tif"], "2 dimensions"),
        ([model_file, image, tmp_path / "o.png"], ".tif"),
        ([model_file, image, tmp_path / "o.tif", "--tile-size", "17"], "smallest tile"),
    ]
    for argv, message in cases:
        code, err = run(["predict", *argv, "--device", "cpu"], capsys)
        assert code == 2, (argv, err)
        assert message in err, (message, err)
        assert err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "o.tif").exists()
    assert (tmp_path / "exists.tif").read_bytes() == b"x"  # nothing lost


def test_predict_overwrite(tmp_path, model_file, capsys):
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((30, 30), np.uint8))
    out = tmp_path / "o.tif"
    out.write_bytes(b"old")
    code, err = run(["predict", model_file, image, out, "--overwrite", "--device", "cpu"], capsys)
    assert code == 0, err
    assert tifffile.imread(out).shape == (30, 30)


def test_weightmap(tmp_path, disks, capsys):
    tifffile.imwrite(tmp_path / "labels.tif", disks)
    out = tmp_path / "w.tif"
    code, err = run(["weightmap", tmp_path / "labels.tif", out, "--w0", 5, "--sigma", 3], capsys)
    assert code == 0, err
    # the map training uses with these settings (touching cells separated, border term)
    sample = prepare_sample(disks.astype(np.float32), disks, w0=5, sigma=3)
    written = tifffile.imread(out)
    np.testing.assert_allclose(written, sample.weights)
    assert not np.allclose(written, unet_weight_map(disks, w0=5, sigma=3))  # the old map
    code, err = run(["weightmap", tmp_path / "labels.tif", out], capsys)
    assert code == 2 and "exists" in err
    argv = ["weightmap", tmp_path / "labels.tif", out, "--weighting", "unet", "--overwrite"]
    assert run(argv, capsys)[0] == 0
    separated = separate_touching(as_instances(disks))
    np.testing.assert_allclose(tifffile.imread(out), unet_weight_map(separated), rtol=1e-6)


def test_weightmap_of_a_stack_is_the_training_map(tmp_path, disks, capsys):
    stack = np.stack([disks, np.zeros_like(disks), disks[::-1]])
    tifffile.imwrite(tmp_path / "labels.tif", stack, photometric="minisblack")
    out = tmp_path / "w.tif"
    argv = ["weightmap", tmp_path / "labels.tif", out, "--weighting", "unet"]
    code, err = run(argv, capsys)
    assert code == 0, err
    written = tifffile.imread(out)
    assert written.shape == stack.shape
    for plane in (0, 2):  # every plane with cells: what training uses for it
        sample = prepare_sample(stack[plane].astype(np.float32), stack[plane], weighting="unet")
        np.testing.assert_allclose(written[plane], sample.weights, rtol=1e-6)
    np.testing.assert_allclose(written[1], 1.0)  # no cell: all background


def test_train_then_predict_round_trip(tmp_path, disks, capsys):
    from napari_unet.core.checkpoint import load_model

    rng = np.random.default_rng(0)
    for i in range(2):
        image = ((disks > 0) * 120 + rng.normal(30, 10, disks.shape)).clip(0, 255)
        tifffile.imwrite(tmp_path / f"img{i}.tif", image.astype(np.uint8))
        tifffile.imwrite(tmp_path / f"mask{i}.tif", disks)
    model = tmp_path / "model.pt"
    argv = [
        "train",
        "--image",
        tmp_path / "img0.tif",
        "--labels",
        tmp_path / "mask0.tif",
        "--image",
        tmp_path / "img1.tif",
        "--labels",
        tmp_path / "mask1.tif",
        "--out",
        model,
        "--steps",
        4,
        "--base-channels",
        4,
        "--depth",
        3,
        "--patch-size",
        92,
        "--batch-size",
        1,
        "--validate-every",
        2,
        "--device",
        "cpu",
    ]
    code, err = run(argv, capsys)
    assert code == 0, err
    assert "trained 4 steps" in err and "validation score" in err
    net = load_model(model)
    assert net.config.base_channels == 4 and net.metadata["training"]["n_images"] == 2
    code, err = run(argv, capsys)
    assert code == 2 and "exists" in err  # never silently replaced
    code, err = run(
        ["predict", model, tmp_path / "img0.tif", tmp_path / "pred.tif", "--device", "cpu"], capsys
    )
    assert code == 0, err
    assert tifffile.imread(tmp_path / "pred.tif").shape == disks.shape
    short = ["--steps", 2, "--patch-size", 92, "--batch-size", 1, "--device", "cpu"]
    # fine-tune from the saved model
    code, err = run([*argv[:-8], "--out", tmp_path / "tuned.pt", "--from", model, *short], capsys)
    assert code == 0, err
    assert load_model(tmp_path / "tuned.pt").config == net.config
    assert net.config.norm == "batch"  # the default for new models
    # the paper's architecture (no normalization) with scale augmentation
    code, err = run(
        [*argv[:-8], "--out", tmp_path / "paper.pt", "--norm", "none", "--scale-augment", *short],
        capsys,
    )
    assert code == 0, err
    paper = load_model(tmp_path / "paper.pt")
    assert paper.config.norm is None
    assert list(paper.metadata["training"]["config"]["scales"]) == [0.5, 0.71, 1.0, 1.41]


def test_train_bad_inputs(tmp_path, disks, capsys):
    tifffile.imwrite(tmp_path / "img.tif", disks.astype(np.uint8))
    tifffile.imwrite(tmp_path / "mask.tif", disks)
    tifffile.imwrite(tmp_path / "small.tif", disks[:50])
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros_like(disks))
    (tmp_path / "broken.tif").write_bytes(b"II*\x00broken")
    four = np.stack([np.stack([disks, disks])] * 2)  # (2, 2, M, N): same shape as the image
    tifffile.imwrite(tmp_path / "img4.tif", four.astype(np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab4.tif", four, photometric="minisblack")
    img, out = tmp_path / "img.tif", tmp_path / "m.pt"
    cases = [
        (["--image", img, "--labels", tmp_path / "small.tif"], "planes are (50, 96)"),
        (
            ["--image", tmp_path / "img4.tif", "--labels", tmp_path / "lab4.tif"],
            "a stack of them (3D), got 4D",
        ),
        (["--image", img, "--labels", tmp_path / "empty.tif"], "no labelled cells"),
        (["--image", tmp_path / "broken.tif", "--labels", tmp_path / "mask.tif"], "cannot read"),
        (["--image", img, "--image", img, "--labels", tmp_path / "mask.tif"], "pair in order"),
        (["--image", img, "--labels", tmp_path / "mask.tif", "--from", img], "not a napari-unet"),
    ]
    for argv, message in cases:
        code, err = run(["train", *argv, "--out", out, "--steps", 1], capsys)
        assert code == 2, (argv, err)
        assert message in err and err.count("\n") == 1, (message, err)
    code, err = run(
        ["train", "--image", img, "--labels", tmp_path / "mask.tif", "--out", tmp_path / "m.tif"],
        capsys,
    )
    assert code == 2 and ".pt" in err
    assert not out.exists()


def test_demo_headless(tmp_path, capsys):
    out = tmp_path / "demo"
    code, err = run(["demo", "--out", out, "--steps", 2, "--device", "cpu"], capsys)
    assert code == 0, err
    zero_shot, tuned = (line for line in err.splitlines() if "unseen right half" in line)
    assert "zero-shot (bundled model)" in zero_shot and "F1@0.5" in zero_shot
    assert "fine-tuned (2 steps)" in tuned and "SEG" in tuned
    assert tifffile.imread(out / "demo_labels.tif").shape == (520, 696)
    from napari_unet.core.checkpoint import load_model

    assert load_model(out / "demo_model.pt").metadata["demo"] is True
    code, err = run(["demo", "--out", out, "--steps", 1, "--device", "cpu"], capsys)
    assert code == 2 and "exists" in err


def test_train_defaults_to_a_time_budget_and_shows_it(tmp_path, disks, capsys):
    from napari_unet.core.checkpoint import load_model

    tifffile.imwrite(tmp_path / "img.tif", ((disks > 0) * 120 + 30).astype(np.uint8))
    tifffile.imwrite(tmp_path / "mask.tif", disks)
    pairs = ["--image", tmp_path / "img.tif", "--labels", tmp_path / "mask.tif"]
    small = ["--base-channels", 4, "--depth", 3, "--patch-size", 92, "--device", "cpu"]
    out = tmp_path / "m.pt"
    code, err = run(["train", *pairs, "--out", out, *small, "--minutes", 0.05], capsys)
    assert code == 0, err
    assert "(time)" in err  # the budget ended it, not the 10,000-step cap
    config = load_model(out).metadata["training"]["config"]
    assert config["steps"] == 10_000 and config["minutes"] == 0.05
    bar = err.replace("\r", "\n")
    assert "train 100%" in bar and "step " in bar and "/10000" not in bar
    # --minutes 0: no time limit, the steps end it
    code, err = run(
        ["train", *pairs, "--out", out, *small, "--minutes", 0, "--steps", 2, "--overwrite"],
        capsys,
    )
    assert code == 0 and "trained 2 steps" in err and "(steps)" in err
    assert load_model(out).metadata["training"]["config"]["minutes"] is None


def test_sigterm_stops_train_keeping_the_best_model_and_exits_130(tmp_path, disks):
    import signal
    import subprocess
    import sys

    from napari_unet.core.checkpoint import load_model

    tifffile.imwrite(tmp_path / "img.tif", ((disks > 0) * 120 + 30).astype(np.uint8))
    tifffile.imwrite(tmp_path / "mask.tif", disks)
    out = tmp_path / "m.pt"
    argv = ["train", "--image", tmp_path / "img.tif", "--labels", tmp_path / "mask.tif"]
    small = ["--from", "scratch", "--patch-size", 92, "--depth", 3, "--base-channels", 4]
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_unet.cli", *map(str, [*argv, *small, "--out", out])],
        stderr=subprocess.PIPE,
    )
    seen = b""
    while b"step " not in seen:  # training runs: the progress bar shows a step
        chunk = proc.stderr.read1(4096)
        assert chunk, seen.decode()
        seen += chunk
    proc.send_signal(signal.SIGTERM)  # what a cluster scheduler sends
    rest = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 130, rest
    assert "SIGTERM: stopping after this step" in rest and "(stopped)" in rest
    assert load_model(out).metadata["best_step"] >= 1


def test_train_refuses_an_unwritable_output_folder(tmp_path, disks, capsys, monkeypatch):
    import os

    tifffile.imwrite(tmp_path / "img.tif", disks.astype(np.uint8))
    tifffile.imwrite(tmp_path / "mask.tif", disks)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    real = os.access  # root may write anywhere: answer as for an ordinary user
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == locked else real(p, m))
    argv = ["train", "--image", tmp_path / "img.tif", "--labels", tmp_path / "mask.tif"]
    code, err = run([*argv, "--out", locked / "m.pt"], capsys)
    assert code == 2 and "cannot write to the output folder" in err


def test_train_help_states_the_config_defaults():
    """The train options' help is built from TrainConfig (and the task presets)."""
    import dataclasses

    from napari_unet.cli import build_parser
    from napari_unet.core.train_config import PRESETS, TrainConfig

    parser = build_parser()
    train = next(
        a
        for a in parser._subparsers._group_actions[0].choices.values()
        if a.prog.endswith("train")
    )
    helps = {a.dest: a.help for a in train._actions}
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name in (
        "minutes",
        "steps",
        "base_channels",
        "depth",
        "batch_size",
        "patch_size",
        "w0",
        "sigma",
        "validate_every",
        "weighting",
        "norm",
    ):
        stated = helps[name].rsplit("(default: ", 1)[1]
        assert stated.startswith(str(defaults[name])), (name, helps[name])
        for task, preset in PRESETS.items():
            if name in preset:
                assert f"{task}: {preset[name]}" in stated, (name, helps[name])


@pytest.fixture
def disk_stack(tmp_path):
    """A Z-stack of discs that shift by 1 px per plane, as a TIFF, and the threshold U-Net."""
    from synthetic import image_of, threshold_unet, touching_disks

    base = touching_disks((90, 110), n=9, radius=(7, 11), seed=5)
    planes = [image_of(np.roll(base, z, axis=1), seed=z) for z in range(5)]
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack(planes))
    return path, save_model(tmp_path / "threshold.pt", threshold_unet())


def test_predict_link_z_gives_each_cell_one_id(tmp_path, disk_stack, capsys):
    stack, model = disk_stack
    out_plain, out_linked = tmp_path / "plain.tif", tmp_path / "linked.tif"
    args = ["--device", "cpu", "--min-size", 30]
    assert run(["predict", model, stack, out_plain, *args], capsys)[0] == 0
    code, err = run(["predict", model, stack, out_linked, *args, "--link", "z"], capsys)
    assert code == 0, err
    plain, linked = tifffile.imread(out_plain), tifffile.imread(out_linked)
    assert np.array_equal(plain > 0, linked > 0)
    per_plane = len(np.unique(plain[0][plain[0] > 0]))
    assert len(np.unique(plain[plain > 0])) == 5 * per_plane  # unique per plane
    assert len(np.unique(linked[linked > 0])) == per_plane  # one id through the stack
    for z in range(1, 5):  # the cell under a pixel keeps its id as it moves
        assert (
            linked[z][:, 1:][linked[z - 1][:, :-1] > 0]
            == linked[z - 1][:, :-1][linked[z - 1][:, :-1] > 0]
        ).mean() > 0.95
    assert f"{per_plane} cells in 5 plane(s)" in err


def test_predict_link_bad_inputs(tmp_path, disk_stack, model_file, capsys):
    stack, model = disk_stack
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((30, 30), np.uint8))
    for argv, message in [
        ([model_file, image, tmp_path / "o.tif", "--link", "z"], "needs a stack with one Z"),
        ([model, stack, tmp_path / "o.tif", "--link", "t", "--link-iou", "0"], "link_iou"),
        ([model, stack, tmp_path / "o.tif", "--link", "t", "--link-iou", "1.5"], "link_iou"),
    ]:
        code, err = run(["predict", *argv, "--device", "cpu"], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_predict_large_planes_tile_by_tile_equal_the_whole_plane(
    tmp_path, disk_stack, capsys, monkeypatch, suffix
):
    """Planes above STREAM_PIXELS are labelled block by block: same cells, same files."""
    import napari_unet.core.large_plane as large_plane

    stack, model = disk_stack
    whole = tmp_path / f"whole{suffix}"
    args = ["--device", "cpu", "--tile-size", 204, "--probabilities"]
    code, err = run(["predict", model, stack, whole, *args, tmp_path / f"pw{suffix}"], capsys)
    assert code == 0, err
    monkeypatch.setattr(large_plane, "STREAM_PIXELS", 1000)
    monkeypatch.setattr(large_plane, "DEFAULT_BLOCK", 40)
    tiled = tmp_path / f"tiled{suffix}"
    code, err = run(["predict", model, stack, tiled, *args, tmp_path / f"pt{suffix}"], capsys)
    assert code == 0, err
    from napari_unet.core.io import open_image

    a, b = np.asarray(open_image(whole)[:]), np.asarray(open_image(tiled)[:])
    assert a.shape == b.shape == (5, 90, 110) and b.dtype == np.uint32
    for pa, pb in zip(a, b, strict=True):  # the same partition of every plane
        pairs = np.unique(np.stack([pa[pa > 0], pb[pb > 0]]), axis=1)
        assert np.array_equal(pa > 0, pb > 0)
        assert pairs.shape[1] == len(np.unique(pa[pa > 0])) == len(np.unique(pb[pb > 0]))
    assert len(np.unique(b[b > 0])) == b.max()  # ids unique across the stack
    np.testing.assert_allclose(
        np.asarray(open_image(tmp_path / f"pt{suffix}")[:]),
        np.asarray(open_image(tmp_path / f"pw{suffix}")[:]),
        atol=1e-6,
    )
    code, err = run(["predict", model, stack, tmp_path / "x.tif", "--diameter", 20], capsys)
    assert code == 2 and "--diameter is not supported" in err


def test_predict_help_states_the_config_defaults():
    from napari_unet.cli import build_parser
    from napari_unet.core.segment_config import SegmentConfig

    parser = build_parser()
    predict = parser._subparsers._group_actions[0].choices["predict"]
    helps = {a.dest: a.help for a in predict._actions}
    for name in ("min_size", "expand", "link_iou", "link_bridge", "link_min_planes"):
        assert helps[name].endswith(f"(default: {getattr(SegmentConfig, name)})"), helps[name]


def test_predict_link_min_planes_removes_short_objects(tmp_path, disk_stack, capsys):
    stack, model = disk_stack
    planes = tifffile.imread(stack)
    # a bright square in one plane only, where no plane has a cell near it
    dark = ndi.minimum_filter(planes.max(axis=0) < 100, size=14)
    y, x = np.argwhere(dark[8:-8, 8:-8])[0] + 8
    planes[2, y - 4 : y + 4, x - 4 : x + 4] = 255
    tifffile.imwrite(stack, planes)
    out1, out2 = tmp_path / "all.tif", tmp_path / "long.tif"
    args = ["--device", "cpu", "--min-size", 30, "--link", "z"]
    assert run(["predict", model, stack, out1, *args], capsys)[0] == 0
    code, err = run(["predict", model, stack, out2, *args, "--link-min-planes", 2], capsys)
    assert code == 0, err
    every, long = tifffile.imread(out1), tifffile.imread(out2)
    square = every[2, y, x]
    assert square > 0 and (every == square).sum() >= 8 * 8 - 10
    assert long[2, y, x] == 0  # the one-plane object is gone, the others stay
    assert np.array_equal(long > 0, (every > 0) & (every != square))
    assert len(np.unique(long[long > 0])) == long.max()


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_predict_uncertainty_is_the_map_of_the_same_probabilities(
    tmp_path, model_file, capsys, monkeypatch, suffix
):
    import napari_unet.core.predictor as predictor
    from napari_unet.core.io import open_image
    from napari_unet.core.uncertainty import uncertainty_map

    calls = []
    forward = predictor.forward

    def counting(net, batch, device, dtype=None):
        calls.append(len(batch))
        return forward(net, batch, device, dtype)

    monkeypatch.setattr(predictor, "forward", counting)
    stack = np.random.default_rng(4).integers(0, 255, (2, 40, 50), np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    argv = ["predict", model_file, tmp_path / "stack.tif", "--device", "cpu"]
    code, err = run([*argv, tmp_path / "plain.tif"], capsys)
    assert code == 0, err
    plain_calls, calls[:] = sum(calls), []
    out, prob, unc = tmp_path / "l.tif", tmp_path / f"p{suffix}", tmp_path / f"u{suffix}"
    code, err = run([*argv, out, "--probabilities", prob, "--uncertainty", unc], capsys)
    assert code == 0, err
    assert sum(calls) == plain_calls  # no second network pass
    u = np.asarray(open_image(unc)[:])
    assert u.dtype == np.float32 and u.shape == (2, 40, 50)
    assert 0 <= u.min() and u.max() <= 1 and u.max() > 0.1
    np.testing.assert_array_equal(u, uncertainty_map(np.asarray(open_image(prob)[:])))
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(tmp_path / "plain.tif"))


def test_predict_uncertainty_bad_uses(tmp_path, model_file, capsys, monkeypatch):
    import napari_unet.core.large_plane as large_plane

    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((40, 40), np.uint8))
    (tmp_path / "exists.tif").write_bytes(b"x")
    out = tmp_path / "o.tif"
    cases = [
        ([out, "--uncertainty", out], "--uncertainty must differ"),
        (
            [out, "--probabilities", tmp_path / "p.tif", "--uncertainty", tmp_path / "p.tif"],
            "must differ",
        ),
        ([out, "--uncertainty", tmp_path / "u.png"], ".tif"),
        ([out, "--uncertainty", tmp_path / "exists.tif"], "exists"),
    ]
    for argv, message in cases:
        code, err = run(["predict", model_file, image, *argv, "--device", "cpu"], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
    monkeypatch.setattr(large_plane, "STREAM_PIXELS", 1000)
    code, err = run(
        ["predict", model_file, image, out, "--uncertainty", tmp_path / "u.tif"], capsys
    )
    assert code == 2 and "--uncertainty is not supported for planes of more than 1000" in err
    assert not out.exists() and not (tmp_path / "u.tif").exists()
    assert (tmp_path / "exists.tif").read_bytes() == b"x"
    from napari_unet.cli import build_parser

    predict = build_parser()._subparsers._group_actions[0].choices["predict"]
    helps = {a.dest: a.help for a in predict._actions}
    assert "uncertainty map" in helps["uncertainty"] and "entropy" in helps["uncertainty"]
