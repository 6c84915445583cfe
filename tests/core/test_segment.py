import numpy as np
import pytest
import torch

from napari_unet.core.model import UNet
from napari_unet.core.segment import PlaneDone, SegmentProgress, iter_segment


@pytest.fixture(scope="module")
def net() -> UNet:
    torch.manual_seed(0)
    model = UNet(base_channels=2).eval()
    with torch.no_grad():
        model.head.bias[:] = torch.tensor([0.0, 0.02])  # some foreground
    return model


def run(net, image, **kwargs):
    events = list(iter_segment(net, image, device="cpu", tile_size=204, min_size=1, **kwargs))
    return [e for e in events if isinstance(e, SegmentProgress)], [
        e for e in events if isinstance(e, PlaneDone)
    ]


def test_progress_and_unique_ids_across_planes(net):
    stack = np.random.default_rng(0).random((3, 40, 50)).astype(np.float32)
    tiles, planes = run(net, stack)
    assert [e.done for e in tiles] == list(range(1, len(tiles) + 1))
    assert tiles[-1].total == len(tiles) == 3 * 12  # 16-pixel cores: 3 x 4 per plane
    assert [p.index for p in planes] == [(0,), (1,), (2,)]
    ids = [set(np.unique(p.labels)) - {0} for p in planes]
    assert all(ids) and not (ids[0] & ids[1]) and not (ids[1] & ids[2])
    assert max(ids[2]) == sum(p.n_objects for p in planes)


def test_region_equals_that_part_of_the_whole_plane(net):
    image = np.random.default_rng(1).random((120, 140)).astype(np.float32)
    _, [whole] = run(net, image)
    region = (slice(37, 90), slice(50, 131))
    _, [part] = run(net, image, region=region)
    assert part.region == region and part.labels.shape == (53, 81)
    np.testing.assert_allclose(
        part.probabilities, whole.probabilities[:, 37:90, 50:131], atol=2e-5
    )
    # normalization uses the whole plane, so the foreground is the same
    np.testing.assert_array_equal(part.labels > 0, whole.labels[37:90, 50:131] > 0)


def test_planes_and_bad_region(net):
    stack = np.zeros((4, 30, 30), np.float32)
    _, planes = run(net, stack, planes=[(2,), (0,)])
    assert [p.index for p in planes] == [(2,), (0,)]
    with pytest.raises(ValueError, match="out of range"):
        run(net, stack, planes=[(4,)])
    with pytest.raises(ValueError, match="empty"):
        run(net, stack, region=(slice(10, 10), slice(0, 5)))


def test_tiny_tile_sizes_are_refused_with_the_smallest_usable_one(net):
    from napari_unet.core.segment import resolve_tiling
    from napari_unet.core.tiling import tile_for_core

    smallest = tile_for_core(net, net.step)
    with pytest.raises(ValueError, match=f"at least {smallest}"):
        resolve_tiling(net, "cpu", tile_size=17)
    with pytest.raises(ValueError, match="smallest tile"):
        next(iter_segment(net, np.zeros((64, 64), np.float32), tile_size=smallest - 1))
    assert resolve_tiling(net, "cpu", tile_size=smallest)[1] == smallest


def test_segment_config_holds_the_defaults_and_resolves_them_per_model(net):
    import copy
    import inspect

    from napari_unet.core.postprocess import FILL_GAPS
    from napari_unet.core.segment_config import SegmentConfig

    defaults = SegmentConfig()
    signature = inspect.signature(iter_segment).parameters
    for name in ("min_size", "split", "expand", "tta", "diameter"):
        assert signature[name].default == getattr(defaults, name)  # one source of defaults
    cells = copy.deepcopy(net)
    cells.metadata = {"threshold": 0.35}
    kwargs = defaults.segment_kwargs(cells)
    assert kwargs["threshold"] == 0.35 and kwargs["fill_gaps"] == FILL_GAPS
    assert kwargs["output"] == "instances"
    membranes = copy.deepcopy(net)
    membranes.metadata = {"task": "membranes"}
    assert defaults.segment_kwargs(membranes)["output"] == "mask"
    regions = SegmentConfig(regions=True, threshold=0.7).segment_kwargs(membranes)
    assert regions["output"] == "instances" and regions["fill_gaps"] == 0
    assert regions["threshold"] == 0.7
    given = SegmentConfig.from_options(min_size=None, expand=2, command="predict")
    assert given == SegmentConfig(expand=2)
    for bad in ({"threshold": 1.5}, {"min_size": -1}, {"diameter": 0}, {"fill_gaps": -2}):
        with pytest.raises(ValueError):
            SegmentConfig(**bad)


def test_linked_planes_are_the_linker_applied_to_the_planes():
    from napari_unet.core.linking import link_planes
    from synthetic import image_of, threshold_unet, touching_disks

    base = touching_disks((80, 100), n=8, radius=(7, 11), seed=2)
    stack = np.stack([image_of(np.roll(base, 2 * z, axis=0), seed=z) for z in range(4)])
    net = threshold_unet()
    _, plain = run(net, stack)
    _, linked = run(net, stack, link=True, first_label=5)
    expected = list(link_planes([p.labels for p in plain]))
    for got, want in zip(linked, expected, strict=True):
        np.testing.assert_array_equal(got.labels, np.where(want > 0, want + 4, 0))
    assert sum(p.n_objects for p in linked) == max(int(e.max()) for e in expected)
    assert len(np.unique(np.stack([p.labels for p in linked]))) < len(
        np.unique(np.stack([p.labels for p in plain]))
    )
    with pytest.raises(ValueError, match="needs instance labels"):
        run(net, stack, link=True, output="mask")
