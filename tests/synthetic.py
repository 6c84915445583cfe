"""Tiny seeded synthetic cell images shared by the tests (importable as ``synthetic``)."""

from __future__ import annotations

import numpy as np


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


def membrane_mask(shape: tuple[int, int] = (96, 96), spacing: int = 12) -> np.ndarray:
    """An EM-like binary mask: 1 = cell interiors, 0 = a thin grid of membranes."""
    mask = np.ones(shape, np.uint8)
    mask[::spacing], mask[:, ::spacing] = 0, 0
    return mask
