"""Tiny seeded synthetic cell images shared by the tests (importable as ``synthetic``)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from napari_unet.core.annotations import Crop
    from napari_unet.core.train_config import TrainConfig


def touching_disks(
    shape: tuple[int, int] = (96, 96),
    n: int = 12,
    radius: tuple[int, int] = (6, 11),
    seed: int = 0,
) -> np.ndarray:
    """Instance labels of random disks that touch and overlap (later disks win)."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint16)
    for i in range(1, n + 1):
        r = rng.integers(*radius)
        center = rng.integers(r, np.array(shape) - r)
        labels[disk(tuple(center), r, shape=shape)] = i
    return labels


def image_of(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A noisy fluorescence-like uint8 image of ``labels``."""
    rng = np.random.default_rng(seed)
    image = (labels > 0) * 150 + 30 + rng.normal(0, 12, labels.shape)
    return image.clip(0, 255).astype(np.uint8)


def cell_stack(n_planes: int, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(image, labels)`` stacks of ``n_planes`` 96x96 planes of touching disks."""
    truth = np.stack([touching_disks(n=n, radius=(6, 11), seed=s) for s in range(n_planes)])
    image = np.stack([image_of(t, seed=s) for s, t in enumerate(truth)])
    return image, truth


def disk_crop(seed: int = 0) -> Crop:
    """A fully annotated 64 x 64 training example of touching disks (``"plane <seed>"``)."""
    from napari_unet.core.annotations import Crop

    labels = touching_disks((64, 64), n=8, radius=(5, 9), seed=seed)
    return Crop(image_of(labels, seed), labels, np.ones(labels.shape, bool), f"plane {seed}")


def tiny_train_config(**changes: Any) -> TrainConfig:
    """A few cheap training steps (seeded, float32), validated on the held-out band."""
    from napari_unet.core.train_config import TrainConfig

    config = TrainConfig(
        steps=8,
        batch_size=1,
        patch_size=92,
        depth=2,
        base_channels=4,
        validate_every=4,
        seed=0,
        mixed_precision=False,
    )
    return dataclasses.replace(config, **changes)


def membrane_mask(shape: tuple[int, int] = (96, 96), spacing: int = 12) -> np.ndarray:
    """An EM-like binary mask: 1 = cell interiors, 0 = a thin grid of membranes."""
    mask = np.ones(shape, np.uint8)
    mask[::spacing], mask[:, ::spacing] = 0, 0
    return mask


def threshold_unet(base_channels=4):
    """A U-Net whose weights threshold the normalized image at 0.5 (no training needed).

    Only the top level's center taps and the head are non-zero: the skip
    connection carries ReLU(x) to the head, which outputs a * (x - 0.5).
    """
    import torch

    from napari_unet.core.model import UNet

    net = UNet(base_channels=base_channels, dropout=0.0)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for block in (net.down[0], net.up[-1]):
            block[0].weight[0, 0, 1, 1] = 1.0
            block[3].weight[0, 0, 1, 1] = 1.0
        net.head.weight[1, 0] = 20.0
        net.head.bias[1] = -10.0
    return net.eval()
