"""Shared fixtures: tiny seeded synthetic data, paths to the real datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from synthetic import touching_disks

# bioimage.io packages are checked offline: everything is read from the local zip (the
# setting is read when bioimageio.spec is first imported)
os.environ.setdefault("BIOIMAGEIO_PERFORM_IO_CHECKS", "false")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def disks() -> np.ndarray:
    return touching_disks()


@pytest.fixture
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real datasets not found at {DATA}")
    return DATA


@pytest.fixture(autouse=True)
def _float32_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # "auto" precision (inference and training) is bfloat16 on a CPU that computes it
    # natively: the suite runs as on any other CPU, in float32, so its exact comparisons
    # hold on every machine; the tests of the bfloat16 paths say so themselves
    from napari_unet.core import device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)


@pytest.fixture(autouse=True)
def _no_tqdm_monitor() -> None:
    # tqdm's monitor thread races with Qt threads in GUI tests (magicgui's advice)
    from tqdm import tqdm

    tqdm.monitor_interval = 0
