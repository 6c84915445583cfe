import numpy as np
import pytest
import torch
import zarr

from napari_unet.core.model import UNet, valid_input_size
from napari_unet.core.predictor import halo
from napari_unet.core.tiling import (
    TestTimeAugmentation,
    TileProgress,
    iter_predict_tiled,
    plan_tiles,
    predict_tiled,
    reflect_indices,
    run_tiles,
)


@pytest.fixture(scope="module")
def net() -> UNet:
    torch.manual_seed(0)
    return UNet(base_channels=2).eval()


def whole_image_reference(net: UNet, image: np.ndarray) -> np.ndarray:
    """Prediction of the whole mirror-padded image in one pass (np.pad, not our indices)."""
    h, w = image.shape[-2:]
    m = halo(net)  # the margin of a valid network
    ph, pw = valid_input_size(h + 2 * m), valid_input_size(w + 2 * m)
    pad = [(0, 0)] * (image.ndim - 2) + [(m, ph - h - m), (m, pw - w - m)]
    padded = np.pad(image.astype(np.float32), pad, mode="reflect")
    x = torch.from_numpy(padded).reshape(-1, net.in_channels, ph, pw)
    if not isinstance(net, UNet):  # a predictor: probabilities of a numpy batch
        return net(x.numpy())[..., :h, :w]
    with torch.inference_mode():
        prob = torch.softmax(net(x), dim=1).numpy()[..., :h, :w]
    return prob


@pytest.mark.parametrize(
    ("shape", "tile"),
    [
        ((64, 64), 188),  # one core of 4x4 tiles
        ((64, 64), 1000),  # tile larger than image
        ((5, 7), 188),  # tiny, smaller than the network context
        ((1, 40), 220),  # a single row
        ((97, 131), 204),  # odd sizes, 16-pixel cores
        ((97, 131), 250),  # tile size that is not valid (rounded down)
        ((150, 110), (220, 300)),  # rectangular tiles
        ((300, 200), None),  # automatic tile size
    ],
)
def test_tiled_equals_whole_image(net, shape, tile):
    image = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    tiled = predict_tiled(net, image, tile_size=tile, device="cpu")
    ref = whole_image_reference(net, image)[0]
    assert tiled.shape == (2, *shape) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, ref, atol=2e-5)


def test_batch_norm_model_tiles_exactly():
    # batch norm with (non-trivial) running statistics is pointwise in eval mode
    torch.manual_seed(4)
    net = UNet(base_channels=2, norm="batch")
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(2, 1, 188, 188) * 3 + 1)
    net.eval()
    image = np.random.default_rng(5).normal(size=(97, 131)).astype(np.float32)
    tiled = predict_tiled(net, image, tile_size=204, device="cpu")
    np.testing.assert_allclose(tiled, whole_image_reference(net, image)[0], atol=2e-5)


def test_tiles_partition_the_image(net):
    plan = plan_tiles(net, (97, 131), 236)
    covered = np.zeros((97, 131), int)
    for y, x in plan.origins:
        covered[y : y + plan.core[0], x : x + plan.core[1]] += 1
    assert (covered == 1).all()
    assert all(y % net.step == 0 and x % net.step == 0 for y, x in plan.origins)
    assert plan.tile == (236, 236) and plan.core == (48, 48)


def test_stack_and_channels_and_batches():
    torch.manual_seed(3)
    net = UNet(in_channels=2, n_classes=3, base_channels=2).eval()
    stack = np.random.default_rng(2).random((2, 3, 2, 40, 50)).astype(np.float32)
    prob = predict_tiled(net, stack, tile_size=204, batch_size=5, device="cpu")
    assert prob.shape == (2, 3, 3, 40, 50)
    ref = whole_image_reference(net, stack).reshape(2, 3, 3, 40, 50)
    np.testing.assert_allclose(prob, ref, atol=2e-5)
    np.testing.assert_allclose(prob.sum(axis=2), 1, atol=1e-5)
    # channels last gives the same result
    last = predict_tiled(
        net, np.moveaxis(stack, 2, -1), tile_size=204, device="cpu", channel_axis=-1
    )
    np.testing.assert_allclose(last, prob, atol=2e-5)


def test_lazy_inputs_and_outputs(net, tmp_path):
    image = np.random.default_rng(4).random((2, 70, 90)).astype(np.float32)
    src = zarr.open(
        str(tmp_path / "in.zarr"), mode="w", shape=image.shape, chunks=(1, 32, 32), dtype="f4"
    )
    src[:] = image
    out = zarr.open(str(tmp_path / "out.zarr"), mode="w", shape=(2, 2, 70, 90), dtype="f4")
    result = predict_tiled(net, src, tile_size=204, device="cpu", out=out)
    assert result is out
    np.testing.assert_allclose(out[:], predict_tiled(net, image, device="cpu"), atol=2e-5)
    import dask.array as da

    lazy = predict_tiled(
        net, da.from_array(image, chunks=(1, 35, 45)), tile_size=204, device="cpu"
    )
    np.testing.assert_allclose(lazy, out[:], atol=2e-5)


def test_generator_reports_progress_and_keeps_partial_output(net):
    image = np.ones((100, 100), np.float32)
    out = np.full((2, 100, 100), -1, np.float32)
    gen = iter_predict_tiled(net, image, tile_size=204, device="cpu", out=out)
    events = [next(gen) for _ in range(3)]
    assert all(isinstance(e, TileProgress) for e in events)
    assert [e.done for e in events] == [1, 2, 3] and events[0].total == 49
    gen.close()  # cancel: what was written stays, the rest untouched
    written = (out[0] != -1).sum()
    assert written == 3 * 16 * 16
    for _, rows, cols in (r for e in events for r in e.regions):
        assert (out[:, rows, cols] != -1).all()


@pytest.mark.parametrize("tta", [False, True])
def test_model_mode_is_restored(net, tta):
    for training in (True, False):
        net.train(training)
        predict_tiled(net, np.zeros((20, 20)), device="cpu", tta=tta)
        assert all(m.training == training for m in net.modules())


@pytest.mark.parametrize("depth", [2, 3])
def test_same_padding_tiled_equals_whole(depth):
    """The halo covers the receptive field, so same padding is seam-free too."""
    torch.manual_seed(0)
    net = UNet(base_channels=2, padding="same", depth=depth).eval()
    image = np.random.default_rng(0).random((150, 170)).astype(np.float32)
    tiled = predict_tiled(net, image, tile_size=128, device="cpu")
    m = plan_tiles(net, image.shape, 128).margin
    h = valid_input_size(150 + 2 * m, depth, "same")
    w = valid_input_size(170 + 2 * m, depth, "same")
    x = np.pad(image, ((m, h - 150 - m), (m, w - 170 - m)), mode="reflect")
    with torch.inference_mode():
        ref = torch.softmax(net(torch.from_numpy(x)[None, None]), 1)[
            0, :, m : m + 150, m : m + 170
        ]
    np.testing.assert_allclose(tiled, ref.numpy(), atol=2e-5)


def test_reflect_matches_numpy_pad():
    for n in (1, 2, 3, 7):
        idx = reflect_indices(np.arange(-25, n + 25), n)
        np.testing.assert_array_equal(np.arange(n)[idx], np.pad(np.arange(n), 25, mode="reflect"))


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (np.zeros(10), {}, "at least 2 dimensions"),
        (np.zeros((3, 10, 10), complex), {}, "real numeric"),
        (np.array([[0.0, np.nan], [1, 2]]), {}, "NaN or infinite"),
        (np.zeros((10, 10)), {"tile_size": 0}, "tile_size"),
        (np.zeros((10, 10)), {"batch_size": 0}, "batch_size"),
        (np.zeros((10, 10)), {"out": np.zeros((2, 10, 11))}, "out"),
        (np.zeros((10, 10)), {"device": "tpu"}, "device"),
        (np.zeros((0, 10)), {}, "empty"),
    ],
)
def test_bad_input(net, image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predict_tiled(net, image, **{"device": "cpu", **kwargs})


def test_channel_mismatch():
    net = UNet(in_channels=3, base_channels=2)
    with pytest.raises(ValueError, match=r"2 channel.*expects 3"):
        predict_tiled(net, np.zeros((2, 20, 20)), device="cpu")
    with pytest.raises(ValueError, match="expects 3 channels"):
        predict_tiled(net, np.zeros((20, 20)), device="cpu")


def test_out_of_memory_falls_back(net, monkeypatch):
    """A GPU OOM halves the batch, then the tile, then moves to the CPU (simulated)."""
    import napari_unet.core.predictor as predictor
    import napari_unet.core.tiling as tiling

    calls = []
    real_forward = predictor.forward

    def fake_forward(model, batch, device, dtype=None):
        calls.append((device.type, batch.shape))
        if device.type != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real_forward(model, batch, device, dtype)

    monkeypatch.setattr(predictor, "forward", fake_forward)
    monkeypatch.setattr(tiling, "select_device", lambda d: torch.device("meta"))
    monkeypatch.setattr(predictor, "on_device", lambda m, d: m)
    monkeypatch.setattr(tiling, "auto_tile_size", lambda m, d: 252)
    image = np.random.default_rng(0).random((100, 100)).astype(np.float32)
    gen = iter_predict_tiled(net, image, batch_size=4, device="cuda")
    messages = []
    while True:
        try:
            messages.append(next(gen).message)
        except StopIteration as stop:
            prob = stop.value
            break
    np.testing.assert_allclose(prob, whole_image_reference(net, image)[0], atol=2e-5)
    assert [c[1][0] for c in calls[:3]] == [4, 2, 1]  # halve the batch
    assert [c[1][-1] for c in calls[2:5]] == [252, 220, 204]  # then the tile
    assert [c[0] for c in calls[4:6]] == ["meta", "cpu"]  # then the CPU
    assert sum("CPU" in m for m in messages) == 1


def test_test_time_augmentation_is_the_d4_average_and_seam_free(net):
    torch.manual_seed(1)
    x = torch.rand(1, 1, 204, 220)
    tta = TestTimeAugmentation(net)  # wraps a predictor (here the UNet's)
    with torch.inference_mode():
        out = torch.from_numpy(tta(x.numpy()))
        variants = []
        for k in range(4):
            for flip in (False, True):
                y = torch.rot90(x, k, (-2, -1))
                y = torch.flip(y, (-1,)) if flip else y
                p = torch.softmax(net(y), 1)
                p = torch.flip(p, (-1,)) if flip else p
                variants.append(torch.rot90(p, -k, (-2, -1)))
        torch.testing.assert_close(out, sum(variants) / 8, atol=1e-5, rtol=1e-4)
        # the D4 average is equivariant: TTA(flip x) = flip TTA(x)
        flipped = torch.from_numpy(tta(torch.flip(x, (-1,)).numpy()))
        torch.testing.assert_close(flipped, torch.flip(out, (-1,)), atol=1e-5, rtol=1e-4)
    # tiled TTA equals TTA of the whole mirror-padded image in one pass
    image = np.random.default_rng(2).normal(size=(70, 90)).astype(np.float32)
    tiled = predict_tiled(net, image, tile_size=220, device="cpu", tta=True)
    np.testing.assert_allclose(tiled, whole_image_reference(tta, image)[0], atol=2e-5)


class BoxPredictor:
    """A predictor that is not a UNet: a valid 9x9 box filter as 'foreground' (step 8)."""

    in_channels, n_classes, step, halo, bytes_per_pixel = 1, 2, 8, 4, 4.0

    def __init__(self, device="cpu", fail_above=None):
        self.device = torch.device(device)
        self.fail_above = fail_above  # simulated out-of-memory above this many pixels
        self.batches = []

    def tile_for_core(self, core):
        return core + 8

    def output_size(self, size):
        return size - 8

    def __call__(self, batch):
        self.batches.append((self.device.type, batch.shape))
        if self.fail_above is not None and batch[:, 0].size > self.fail_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        x = torch.from_numpy(batch)
        fg = torch.sigmoid(torch.nn.functional.avg_pool2d(x, 9, stride=1))
        return torch.cat([1 - fg, fg], 1).numpy()

    def to(self, device):
        moved = BoxPredictor(device)
        moved.batches = self.batches
        return moved


def box_reference(image):
    padded = np.pad(image, 4, mode="reflect")
    x = torch.from_numpy(padded)[None, None]
    return torch.sigmoid(torch.nn.functional.avg_pool2d(x, 9, stride=1))[0, 0].numpy()


@pytest.mark.parametrize("tta", [False, True])
def test_any_predictor_runs_through_the_engine(tta):
    """The engine needs the geometry protocol only (step, halo, tile for a core, output size)."""
    image = np.random.default_rng(3).random((45, 61)).astype(np.float32)
    prob = predict_tiled(BoxPredictor(), image, tile_size=24, device="cpu", tta=tta)
    # the box filter is D4-symmetric, so its TTA average is itself
    np.testing.assert_allclose(prob[1], box_reference(image), atol=1e-6)
    plan = plan_tiles(BoxPredictor(), image.shape, 24)
    assert plan.tile == (24, 24) and plan.core == (16, 16) and len(plan.origins) == 3 * 4


def test_engine_out_of_memory_fallback_for_any_predictor():
    """The fallback lives in the engine: batch halved, then tiles, then the CPU."""
    image = np.random.default_rng(4).random((64, 64)).astype(np.float32)
    p = BoxPredictor("meta", fail_above=0)  # every batch fails until on the CPU
    prob = np.zeros((2, 64, 64), np.float32)
    messages = []

    def read(_, rows, cols):
        return image[np.ix_(reflect_indices(rows, 64), reflect_indices(cols, 64))][None]

    def write(_, rows, cols, tile_prob):
        prob[:, rows, cols] = tile_prob

    for event in run_tiles(p, (64, 64), 1, read, write, tile_size=40, batch_size=4):
        messages.append(event.message)
    np.testing.assert_allclose(prob[1], box_reference(image), atol=1e-6)
    sizes = [(dev, shape[0], shape[-1]) for dev, shape in p.batches]
    assert sizes[:3] == [("meta", 4, 40), ("meta", 2, 40), ("meta", 1, 40)]
    assert sizes[3] == ("meta", 1, 24)  # then half the core (32 -> 16)
    assert sizes[4][0] == "meta" and all(dev == "cpu" for dev, _, _ in sizes[5:])
    assert sum("CPU" in m for m in messages) == 1
