import numpy as np
import pytest
import torch

from napari_unet.core.model import (
    UNet,
    UNetConfig,
    check_input_size,
    output_size,
    valid_input_size,
)


def brute_force_output(size: int, depth: int) -> int | None:
    """Simulate the valid U-Net layer by layer (pooling needs even sizes)."""
    s = size
    for _ in range(depth):
        s -= 4
        if s < 2 or s % 2:
            return None
        s //= 2
    s -= 4
    if s < 1:
        return None
    for _ in range(depth):
        s = 2 * s - 4
        if s < 1:
            return None
    return s


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_shape_arithmetic_matches_brute_force(depth):
    valid = [s for s in range(1, 700) if brute_force_output(s, depth) is not None]
    assert [s for s in range(1, 700) if output_size(s, depth) is not None] == valid
    for s in valid:
        assert output_size(s, depth) == brute_force_output(s, depth)
    for size in range(1, 650):
        up = valid_input_size(size, depth)
        assert up == min(v for v in valid if v >= size)
        down = valid_input_size(size, depth, round="down")
        below = [v for v in valid if v <= size]
        assert down == (max(below) if below else valid[0])


def test_paper_sizes():
    assert output_size(572) == 388
    assert valid_input_size(1) == 188
    assert [valid_input_size(s) for s in (188, 189, 204)] == [188, 204, 204]
    assert all(output_size(188 + 16 * n) == 4 + 16 * n for n in range(20))
    assert output_size(64, padding="same") == 64
    assert output_size(65, padding="same") is None


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_real_network_follows_arithmetic(depth):
    net = UNet(depth=depth, base_channels=2).eval()
    for size in (valid_input_size(1, depth), valid_input_size(1, depth) + 2**depth):
        with torch.inference_mode():
            y = net(torch.zeros(1, 1, size, size + 2**depth))
        assert y.shape == (1, 2, output_size(size, depth), output_size(size + 2**depth, depth))
    assert net.margin * 2 == valid_input_size(1, depth) - output_size(
        valid_input_size(1, depth), depth
    )


def test_invalid_size_error_names_nearest_sizes():
    with pytest.raises(ValueError, match="nearest valid sizes: 188 or 204"):
        check_input_size(200)
    net = UNet(base_channels=2)
    with pytest.raises(ValueError, match="188"):
        net(torch.zeros(1, 1, 100, 188))
    with pytest.raises(ValueError, match=r"shape \(B, 1, H, W\)"):
        net(torch.zeros(1, 3, 188, 188))


def test_same_padding_keeps_size_and_channels():
    net = UNet(in_channels=3, n_classes=4, depth=3, base_channels=4, padding="same", norm="batch")
    net.eval()
    with torch.inference_mode():
        assert net(torch.zeros(2, 3, 40, 64)).shape == (2, 4, 40, 64)


def test_architecture_follows_paper():
    net = UNet(base_channels=64)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[-1].kernel_size == (1, 1) and convs[-1].out_channels == 2
    assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs[:-1])
    widths = [b[0].out_channels for b in net.down] + [net.bottom[0].out_channels]
    assert widths == [64, 128, 256, 512, 1024]
    ups = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(u.kernel_size, u.stride, u.out_channels) for u in ups] == [
        ((2, 2), (2, 2), c) for c in (512, 256, 128, 64)
    ]
    # He initialisation: std ~ sqrt(2 / fan_in)
    w = net.down[1][0].weight
    fan_in = w.shape[1] * 9
    assert abs(w.std().item() - np.sqrt(2 / fan_in)) < 0.1 * np.sqrt(2 / fan_in)
    n_params = sum(p.numel() for p in net.parameters())
    assert 31_000_000 < n_params < 31_100_000  # the paper's ~31 M parameters


def test_skip_connections_are_used():
    # changing the input far from the output centre changes the output only via context;
    # changing it at the centre must change it (full pathway incl. skips)
    torch.manual_seed(0)
    net = UNet(base_channels=4).eval()
    x = torch.zeros(1, 1, 188, 188)
    with torch.inference_mode():
        a = net(x)
        x[..., 94, 94] = 5
        b = net(x)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"depth": 0},
        {"base_channels": 0},
        {"n_classes": 1},
        {"padding": "full"},
        {"norm": "layer"},
        {"dropout": 1.0},
        {"in_channels": 1.5},
    ],
)
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        UNetConfig(**kwargs)
