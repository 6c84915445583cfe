"""Training steps per second: what each speed-up of the training loop buys, in one run.

Times the real training loop (:func:`napari_unet.core.iter_train`: patch
sampling, augmentation, forward, backward, Adam) on synthetic touching cells
with the default network (base 16, depth 4, batch norm, 380-px patches,
batch 2) and prints CPU seconds and wall seconds per step for:

- the loop as it was (torch's default memory layout, the next batch sampled
  between steps), in float32 and in mixed precision (bfloat16 autocast where
  the CPU computes it natively, or on CUDA);
- each change alone: the next batch sampled in a background thread during the
  step (``made_ahead``, what training does on a GPU), convolutions in the
  channels-last layout (the default on CPU and CUDA);
- both, in mixed precision and float32.

Run with ``python benchmarks/bench_training_speed.py [--device cpu] [--steps 20]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from unittest import mock

import numpy as np
import torch
from bench_precision import cpu_model  # this folder is on sys.path when run
from bench_weightmap import touching_cells

from napari_unet.core import training
from napari_unet.core.background import made_ahead
from napari_unet.core.device import autocast_dtype, select_device
from napari_unet.core.training import TrainConfig, iter_train


def nuclei(seed: int, size: int = 512, n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image of touching cells, and their instance labels."""
    labels = touching_cells(size, n, seed)
    image = (labels > 0) + np.random.default_rng(seed).normal(0, 0.3, labels.shape)
    return image.astype(np.float32), labels


def sampled(ahead: int) -> Callable[..., Iterator[object]]:
    """``made_ahead`` with ``ahead`` batches made in advance, whatever the device."""
    return lambda produce, _ahead: made_ahead(produce, ahead)


def default_layout(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The network moved in torch's default layout (before channels-last)."""
    return model.to(device)


def per_step(mixed: bool, ahead: bool, channels_last: bool, device: str, steps: int):
    """CPU and wall seconds per training step, after 3 warm-up steps."""
    images, labels = zip(*(nuclei(s) for s in range(2)), strict=True)
    config = TrainConfig(steps=steps + 3, minutes=None, validation="none", mixed_precision=mixed)
    sampling = sampled(1 if ahead else 0)
    layout = training.move_to if channels_last else default_layout
    with (
        mock.patch.object(training, "made_ahead", sampling),
        mock.patch.object(training, "move_to", layout),
    ):
        gen = iter_train(images, labels, config=config, device=device)
        for _ in range(3):
            next(gen)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(steps):
            next(gen)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        gen.close()
    return cpu / steps, wall / steps


VARIANTS = {  # name: (mixed precision, batches made ahead, channels-last)
    "float32, before": (False, False, False),
    "mixed, before": (True, False, False),
    "mixed, ahead": (True, True, False),
    "mixed, channels-last": (True, False, True),
    "mixed, both": (True, True, True),
    "float32, channels-last": (False, False, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    dev = select_device(args.device)
    amp = autocast_dtype(dev)
    print(cpu_model())
    print(f"device {dev}, torch threads {torch.get_num_threads()}, mixed precision dtype {amp}")
    walls = {}
    for name, flags in VARIANTS.items():
        cpu, wall = per_step(*flags, device=args.device, steps=args.steps)
        walls[name] = wall
        patches = TrainConfig().batch_size / wall
        print(f"  {name:22s}: {cpu:.3f} CPU-s/step, {wall:.3f} s/step, {patches:.1f} patches/s")
    # the default: channels-last; batches made ahead on a GPU only
    default = "mixed, channels-last" if dev.type == "cpu" else "mixed, both"
    gain = walls["mixed, before"] / walls[default]
    print(f"  speed-up of the default ({default}) over the loop before: {gain:.2f}x")


if __name__ == "__main__":
    main()
