"""Shared fixtures: tiny seeded synthetic data, paths to the real datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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


@pytest.fixture
def disks() -> np.ndarray:
    return touching_disks()


@pytest.fixture
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real datasets not found at {DATA}")
    return DATA


@pytest.fixture(autouse=True)
def _no_tqdm_monitor() -> None:
    # tqdm's monitor thread races with Qt threads in GUI tests (magicgui's advice)
    from tqdm import tqdm

    tqdm.monitor_interval = 0
