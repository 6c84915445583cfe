import pickle
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import torch
import zarr

from napari_unet.core.checkpoint import ModelFileError, save_model
from napari_unet.core.distributed import block_depth, predict_dask
from napari_unet.core.model import UNet
from napari_unet.core.tiling import halo, predict_tiled, tile_for_core

FLOAT32_WORKERS = Path(__file__).resolve().parents[1] / "float32_workers.py"

ATOL = 2e-5


@pytest.fixture(scope="module")
def net() -> UNet:
    torch.manual_seed(0)
    return UNet(base_channels=2).eval()


@pytest.fixture(scope="module")
def model_path(net, tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("model") / "model.pt", net)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_export():
    import napari_unet.core

    assert napari_unet.core.predict_dask is predict_dask


@pytest.mark.parametrize(
    ("shape", "block", "tile"),
    [
        ((301, 203), 96, None),  # odd sizes, 4 x 3 blocks, small last blocks
        ((250, 180), 112, 268),  # 2 x 2 tiles per block, a 26-pixel last block
        ((209, 113), 100, 204),  # block size rounded up to 112; a 1-pixel last column block
        ((5, 7), None, None),  # smaller than the network context: mirrored many times
    ],
)
def test_equals_predict_tiled_2d(net, shape, block, tile):
    image = rand(*shape)
    lazy = predict_dask(net, image, block_size=block, tile_size=tile)
    assert isinstance(lazy, da.Array)
    assert lazy.shape == (2, *shape) and lazy.dtype == np.float32
    # block edges are multiples of the pooling step (the grid of predict_tiled)
    for chunks in lazy.chunks[-2:]:
        assert all(c % net.step == 0 for c in chunks[:-1])
    assert len(lazy.chunks[-2]) > 1 or shape[0] < 100
    result = lazy.compute(scheduler="sync")
    np.testing.assert_allclose(result, predict_tiled(net, image, device="cpu"), atol=ATOL)


def test_dask_reflect_boundary_would_differ(net):
    """Guard: dask's map_overlap 'reflect' duplicates the edge (numpy 'symmetric')."""
    x = da.arange(6, chunks=3)
    dask_reflect = da.map_overlap(lambda b: b, x, depth=2, boundary="reflect", trim=False)
    assert dask_reflect.compute()[:3].tolist() == [1, 0, 0]  # not numpy 'reflect' [2, 1, 0]
    image = rand(120, 130, seed=3)
    np.testing.assert_allclose(
        predict_dask(net, image, block_size=96).compute(), predict_tiled(net, image), atol=ATOL
    )


def test_stack_from_unaligned_dask_chunks(net):
    stack = rand(3, 130, 200, seed=1)
    lazy = predict_dask(net, da.from_array(stack, chunks=(2, 50, 70)), block_size=96)
    assert lazy.shape == (3, 2, 130, 200)
    assert lazy.chunks[:2] == ((1, 1, 1), (2,))  # planes first, one per chunk; then classes
    expected = predict_tiled(net, stack, device="cpu")
    np.testing.assert_allclose(lazy.compute(), expected, atol=ATOL)
    # one plane only computes that plane's blocks
    np.testing.assert_allclose(lazy[1].compute(), expected[1], atol=ATOL)


def test_multichannel_model_and_channel_axis():
    torch.manual_seed(3)
    net = UNet(in_channels=2, n_classes=3, base_channels=2).eval()
    stack = rand(2, 2, 110, 150, seed=2)  # (Z, C, Y, X)
    expected = predict_tiled(net, stack, device="cpu")
    lazy = predict_dask(net, da.from_array(stack, chunks=(1, 1, 64, 64)), block_size=96)
    assert lazy.shape == (2, 3, 110, 150)
    np.testing.assert_allclose(lazy.compute(), expected, atol=ATOL)
    last = predict_dask(net, np.moveaxis(stack, 1, -1), channel_axis=-1, block_size=96)
    np.testing.assert_allclose(last.compute(), expected, atol=ATOL)
    with pytest.raises(ValueError, match="expects 2"):
        predict_dask(net, stack[:, :1])


@pytest.mark.parametrize("depth", [2, 3])
def test_same_padding(depth):
    torch.manual_seed(0)
    net = UNet(base_channels=2, padding="same", depth=depth).eval()
    image = rand(150, 170, seed=4)
    lazy = predict_dask(net, image, block_size=32, tile_size=128)
    assert len(lazy.chunks[-1]) > 1
    np.testing.assert_allclose(
        lazy.compute(), predict_tiled(net, image, tile_size=128, device="cpu"), atol=ATOL
    )


def test_model_path_and_zarr_input(net, model_path, tmp_path):
    stack = rand(2, 100, 120, seed=5)
    src = zarr.open(
        str(tmp_path / "in.zarr"), mode="w", shape=stack.shape, chunks=(1, 48, 48), dtype="f4"
    )
    src[:] = stack
    lazy = predict_dask(str(model_path), src, block_size=96)
    # only the path travels in the graph, not the network
    blob = pickle.dumps(dict(lazy.__dask_graph__()))
    assert str(model_path).encode() in blob and b"UNet" not in blob
    assert b"UNet" in pickle.dumps(dict(predict_dask(net, src).__dask_graph__()))
    np.testing.assert_allclose(lazy.compute(), predict_tiled(net, stack, device="cpu"), atol=ATOL)
    # write the result to zarr lazily, block by block
    lazy.to_zarr(str(tmp_path / "prob.zarr"))
    np.testing.assert_allclose(zarr.open(str(tmp_path / "prob.zarr"))[:], lazy.compute())


def test_lazy_and_model_copied(model_path):
    torch.manual_seed(1)
    net = UNet(base_channels=2).train()
    calls = []

    def boom(block):
        calls.append(block.shape)
        raise RuntimeError("computed")

    source = da.ones((2, 100, 100), chunks=(1, 100, 100), dtype=np.float32).map_blocks(
        boom, meta=np.empty((0, 0, 0), np.float32)
    )
    lazy = predict_dask(net, source)  # nothing runs yet
    assert not calls
    with pytest.raises(RuntimeError, match="computed"):
        lazy.compute(scheduler="sync")
    assert net.training  # the caller's model is left as it was
    image = rand(60, 60, seed=6)
    lazy = predict_dask(net, image)
    expected = predict_tiled(net, image, device="cpu")  # eval mode inside
    with torch.no_grad():
        net.head.bias.add_(5.0)  # changing the model later does not change the graph
    np.testing.assert_allclose(lazy.compute(), expected, atol=ATOL)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"array": np.zeros(10)}, ValueError, "at least 2 dimensions"),
        ({"array": np.zeros((0, 10))}, ValueError, "empty"),
        ({"array": np.zeros((10, 10), complex)}, ValueError, "real numeric"),
        ({"tile_size": 0}, ValueError, "tile_size"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"block_size": -1}, ValueError, "block_size"),
        ({"device": "tpu:x"}, ValueError, "device"),
        ({"model": object()}, TypeError, "UNet or a model file"),
    ],
)
def test_bad_input(net, kwargs, error, match):
    kwargs = {"model": net, "array": np.zeros((10, 10)), **kwargs}
    with pytest.raises(error, match=match):
        predict_dask(kwargs.pop("model"), kwargs.pop("array"), **kwargs)


def test_bad_model_file_and_nan(net, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a napari-unet model file"):
        predict_dask(bad, np.zeros((10, 10)))
    with pytest.raises(ModelFileError, match="not found"):
        predict_dask(tmp_path / "missing.pt", np.zeros((10, 10)))
    image = np.zeros((40, 40), np.float32)
    image[5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        predict_dask(net, image).compute(scheduler="sync")


@pytest.mark.parametrize("depth", [2, 3])
def test_block_depth_is_the_receptive_field(depth):
    """A block needs exactly `block_depth` pixels of context (measured by perturbation)."""
    torch.manual_seed(0)
    net = UNet(base_channels=2, depth=depth).eval()
    core = 4 * net.step  # an output core at a multiple of step, as in a block
    margin = halo(net)
    size = tile_for_core(net, core)
    x = torch.from_numpy(rand(1, 1, size, size)).double()
    net = net.double()
    with torch.inference_mode():
        base = net(x)[0, :, :core, :core]
        reach = []
        for row in range(size):
            y = x.clone()
            y[..., row, :] += 1
            if (net(y)[0, :, :core, :core] - base).abs().max() > 1e-12:
                reach.append(row - margin)  # input row relative to the core's first row
    before, after = -min(reach), max(reach) - (core - 1)
    assert before == margin and after >= margin  # pooling phase: reaches further right (depth 3+)
    assert block_depth(net) == max(before, after)
    assert block_depth(UNet(base_channels=2)) == 96  # depth 4: 92 before, 96 after


def test_threads_scheduler(net):
    image = rand(3, 100, 150, seed=7)
    with dask.config.set(scheduler="threads", num_workers=2):
        result = predict_dask(net, image, block_size=96).compute()
    np.testing.assert_allclose(result, predict_tiled(net, image, device="cpu"), atol=ATOL)


@pytest.mark.slow
def test_local_cluster_two_processes(net, model_path):
    distributed = pytest.importorskip("distributed")
    stack = rand(2, 150, 180, seed=8)
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            preload=[str(FLOAT32_WORKERS)],
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        lazy = predict_dask(
            str(model_path), da.from_array(stack, chunks=(1, 150, 180)), block_size=96
        )
        result = client.compute(lazy).result()
        # workers loaded the model file themselves (once per process)
        loaded = client.run(_models_loaded)
        assert len(loaded) == 2 and sum(loaded.values()) >= 1 and max(loaded.values()) == 1
    np.testing.assert_allclose(result, predict_tiled(net, stack, device="cpu"), atol=ATOL)


def _models_loaded() -> int:
    from napari_unet.core.distributed import _load_cached

    return _load_cached.cache_info().currsize


def test_documented_normalization_recipe_matches_the_cli_pipeline(model_path):
    """docs/large-stacks.md: normalize whole planes with map_blocks, then predict_dask."""
    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.preprocess import normalize
    from napari_unet.core.segment import PlaneDone, iter_segment

    stack = (rand(2, 90, 110, seed=9) * 4000).astype(np.uint16)
    norm = load_model(model_path).normalization
    planes = da.from_array(stack, chunks=(1, 45, 55)).rechunk({0: 1, 1: -1, 2: -1})
    x = planes.map_blocks(normalize, low=norm.low, high=norm.high, dtype=np.float32)
    prob = predict_dask(str(model_path), x, block_size=96).compute()
    events = iter_segment(load_model(model_path), stack, device="cpu")
    expected = np.stack([e.probabilities for e in events if isinstance(e, PlaneDone)])
    np.testing.assert_allclose(prob, expected, atol=ATOL)


@pytest.mark.parametrize("options", [{}, {"split": True, "min_size": 30, "expand": 1}])
def test_label_dask_equals_whole_plane_labels(options):
    """Lazy probabilities labelled plane by plane, block by block: whole-plane labels."""
    from napari_unet.core.large_plane import label_dask
    from napari_unet.core.postprocess import FILL_GAPS, probabilities_to_labels
    from synthetic import image_of, threshold_unet, touching_disks

    net = threshold_unet()
    stack = np.stack(
        [
            net.normalization(image_of(touching_disks((120, 150), n=14, seed=s), seed=s))
            for s in (1, 2)
        ]
    )
    prob = predict_dask(net, da.from_array(stack, chunks=(1, 60, 75)), block_size=64)
    out = zarr.create_array(
        zarr.storage.MemoryStore(), shape=(2, 120, 150), chunks=(1, 64, 64), dtype="u4"
    )
    with dask.config.set(scheduler="threads", num_workers=2):
        n = label_dask(prob, out, threshold=0.5, block=40, fill_gaps=FILL_GAPS, **options)
    dense = prob.compute()
    got, offset = out[:], 0
    for p in range(2):
        want = probabilities_to_labels(dense[p], threshold=0.5, fill_gaps=FILL_GAPS, **options)
        pairs = np.unique(np.stack([got[p][got[p] > 0], want[want > 0]]), axis=1)
        assert np.array_equal(got[p] > 0, want > 0)
        assert (
            pairs.shape[1] == len(np.unique(want[want > 0])) == len(np.unique(got[p][got[p] > 0]))
        )
        assert got[p][got[p] > 0].min() == offset + 1  # ids continue from plane to plane
        offset += int(want.max())
    assert n == offset == got.max()
    with pytest.raises(ValueError, match="without the class axis"):
        label_dask(prob, np.zeros((2, 120, 151), np.uint32))


@pytest.mark.slow
@pytest.mark.parametrize("options", [{"expand": 1}, {"split": True, "min_size": 30}])
def test_label_dask_on_a_cluster_of_processes_equals_whole_plane_labels(options):
    """Workers are other processes: labels must not be written into copies of a scratch."""
    distributed = pytest.importorskip("distributed")
    from napari_unet.core.large_plane import label_dask
    from napari_unet.core.postprocess import FILL_GAPS, probabilities_to_labels
    from synthetic import image_of, threshold_unet, touching_disks

    net = threshold_unet()
    image = net.normalization(image_of(touching_disks((130, 170), n=16, seed=3), seed=3))
    prob = predict_dask(net, da.from_array(image[None], chunks=(1, 65, 85)), block_size=64)
    out = np.zeros((1, 130, 170), np.uint32)
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            preload=[str(FLOAT32_WORKERS)],
        ) as cluster,
        distributed.Client(cluster),
    ):
        n = label_dask(prob, out, block=48, **options)
    want = probabilities_to_labels(prob.compute()[0], fill_gaps=FILL_GAPS, **options)
    assert n == want.max() > 5
    got = out[0]
    pairs = np.unique(np.stack([got[got > 0], want[want > 0]]), axis=1)
    assert np.array_equal(got > 0, want > 0)
    assert pairs.shape[1] == want.max() == len(np.unique(got[got > 0]))
