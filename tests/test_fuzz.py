"""Property-based tests: random shapes, dtypes, values and damaged files.

Only the documented exceptions may come out of the public functions, and the
command line answers every damaged input with exit status 2 and one line.
"""

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_unet.cli import main
from napari_unet.core.augment import elastic_deform
from napari_unet.core.checkpoint import save_model
from napari_unet.core.model import UNet
from napari_unet.core.postprocess import probabilities_to_labels
from napari_unet.core.tiling import predict_tiled
from napari_unet.core.weightmap import unet_weight_map

FAST = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
DTYPES = st.sampled_from(["uint8", "uint16", "int32", "float32", "float64", "bool", "complex64"])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=24)
ARRAYS = DTYPES.flatmap(lambda d: hnp.arrays(d, SHAPES))


def only(call, *allowed):
    """Run ``call``; a documented exception type is fine, anything else fails the test."""
    try:
        call()
    except allowed:
        pass


@FAST
@given(ARRAYS)
def test_weight_map_takes_any_array_or_says_why(labels):
    only(lambda: unet_weight_map(labels), ValueError)


@FAST
@given(ARRAYS, st.floats(0, 1))
def test_probabilities_to_labels_takes_any_array_or_says_why(prob, threshold):
    only(lambda: probabilities_to_labels(prob, threshold=threshold), ValueError)


@FAST
@given(ARRAYS)
def test_elastic_deform_takes_any_array_or_says_why(image):
    only(lambda: elastic_deform(image, rng=np.random.default_rng(0)), ValueError)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return UNet(base_channels=2, depth=1).eval()


@FAST
@given(ARRAYS)
def test_predict_tiled_takes_any_array_or_says_why(tiny, image):
    only(lambda: predict_tiled(tiny, image, device="cpu"), ValueError)


@FAST
@given(st.one_of(st.none(), st.text(max_size=5), st.lists(st.integers(), max_size=3)))
def test_predict_tiled_refuses_non_arrays_by_name(tiny, thing):
    with pytest.raises((TypeError, ValueError), match="image"):
        predict_tiled(tiny, thing, device="cpu")


@pytest.fixture(scope="module")
def damaged_inputs(tmp_path_factory):
    """A zlib-compressed 3-plane stack, its labels, a model, and the bytes to damage."""
    folder = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (3, 40, 40), np.uint8)  # 3 planes, not RGB: see below
    labels = np.zeros((3, 40, 40), np.uint16)
    labels[:, 5:15, 5:15], labels[:, 20:30, 20:30] = 1, 2
    tifffile.imwrite(folder / "image.tif", image, compression="zlib", photometric="minisblack")
    tifffile.imwrite(folder / "labels.tif", labels, compression="zlib", photometric="minisblack")
    torch.manual_seed(0)
    model = save_model(folder / "m.pt", UNet(base_channels=2, depth=2).eval())
    return folder, model


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.sampled_from(["image", "labels"]),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), max_size=4),
    command=st.sampled_from(["predict", "train", "weightmap"]),
)
def test_cli_answers_damaged_tiffs_with_one_line(
    damaged_inputs, capsys, which, cut, flips, command
):
    folder, model = damaged_inputs
    data = bytearray((folder / f"{which}.tif").read_bytes())
    if cut < 0.9:  # truncate
        data = data[: int(len(data) * cut)]
    for where, value in flips:  # flip bytes (in compressed pages, headers, tags)
        if data:
            data[int(where * (len(data) - 1))] ^= value
    bad = folder / f"bad_{which}.tif"
    bad.write_bytes(bytes(data))
    image = bad if which == "image" else folder / "image.tif"
    labels = bad if which == "labels" else folder / "labels.tif"
    out = folder / "out.tif"
    argv = {
        "predict": ["predict", model, image, out, "--device", "cpu"],
        "train": ["train", "--image", image, "--labels", labels, "--out", folder / "t.pt"],
        "weightmap": ["weightmap", labels, out],
    }[command]
    if command == "train":
        argv += ["--steps", "1", "--patch-size", "92", "--from", "scratch", "--depth", "3"]
        argv += ["--base-channels", "2", "--device", "cpu"]
    code = main([str(a) for a in [*argv, "--overwrite"]])
    err = capsys.readouterr().err
    assert code in (0, 2), err  # damage may miss the data that is read (e.g. a flipped pixel)
    assert "Traceback" not in err
    if code == 2:
        assert err.strip().splitlines()[-1].startswith(f"napari-unet {command}: error:"), err


def test_predict_tiled_refuses_tensors_and_integer_outputs(tiny):
    with pytest.raises(TypeError, match="torch tensor"):
        predict_tiled(tiny, torch.zeros(32, 32), device="cpu")
    out = np.zeros((2, 32, 32), np.uint8)  # would silently hold zeros
    with pytest.raises(ValueError, match="`out` must have a float dtype"):
        predict_tiled(tiny, np.zeros((32, 32), np.float32), device="cpu", out=out)
