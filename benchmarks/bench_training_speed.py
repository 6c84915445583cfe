"""Training steps per second: float32 vs mixed precision, in the same run.

Times the real training loop (:func:`napari_unet.core.iter_train`: patch
sampling, augmentation, forward, backward, Adam) on synthetic touching cells
with the default network (base 16, depth 4, batch norm, 380-px patches,
batch 2), once with ``mixed_precision=False`` and once with the default
(bfloat16 autocast where the CPU computes it natively, or on CUDA), and prints
CPU seconds and wall seconds per step and their ratio.

Run with ``python benchmarks/bench_training_speed.py [--device cpu] [--steps 20]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_weightmap import touching_cells  # this folder is on sys.path when run

from napari_unet.core.device import autocast_dtype, select_device
from napari_unet.core.training import TrainConfig, iter_train


def nuclei(seed: int, size: int = 512, n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image of touching cells, and their instance labels."""
    labels = touching_cells(size, n, seed)
    image = (labels > 0) + np.random.default_rng(seed).normal(0, 0.3, labels.shape)
    return image.astype(np.float32), labels


def per_step(mixed: bool, device: str, steps: int) -> tuple[float, float]:
    """CPU and wall seconds per training step, after 3 warm-up steps."""
    images, labels = zip(*(nuclei(s) for s in range(2)), strict=True)
    config = TrainConfig(steps=steps + 3, minutes=None, validation="none", mixed_precision=mixed)
    gen = iter_train(images, labels, config=config, device=device)
    for _ in range(3):
        next(gen)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(steps):
        next(gen)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.process_time() - cpu) / steps, (time.perf_counter() - wall) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    dev = select_device(args.device)
    amp = autocast_dtype(dev, cpu=True)
    print(f"device {dev}, torch threads {torch.get_num_threads()}, mixed precision dtype {amp}")
    results = {}
    for mixed in (False, True):
        cpu, wall = per_step(mixed, args.device, args.steps)
        results[mixed] = wall
        name = "mixed precision" if mixed else "float32"
        patches = TrainConfig().batch_size / wall
        print(f"  {name:15s}: {cpu:.3f} CPU-s/step, {wall:.3f} s/step, {patches:.1f} patches/s")
    print(f"  speed-up (float32 / mixed): {results[False] / results[True]:.2f}x")


if __name__ == "__main__":
    main()
