"""Benchmark :func:`napari_unet.core.elastic_deform` against the ``elasticdeform`` package.

Deforms a 512 x 512 float32 image (cubic) and a uint16 label patch (nearest)
with a 3 x 3 grid and sigma = 10, mirror boundaries, and prints the best and
median times of both, and their ratio, with torch's default thread count and
with one thread. ``elasticdeform`` is only needed here; its wheels do not work
with numpy 2, so install it from source::

    pip install --no-binary elasticdeform elasticdeform

Run with ``python benchmarks/bench_augment.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from napari_unet.core.augment import elastic_deform

SIZE, GRID, SIGMA, RUNS = 512, 3, 10.0, 50


def timings(func: Callable[[], object], runs: int = RUNS) -> tuple[float, float]:
    """Best and median wall time in ms of ``runs`` calls, after 3 warm-up calls."""
    for _ in range(3):
        func()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times), 1e3 * float(np.median(times))


def main() -> None:
    try:
        import elasticdeform
    except ImportError:
        print(
            "elasticdeform is not installed; nothing to compare against. Install it with\n"
            "  pip install --no-binary elasticdeform elasticdeform"
        )
        return

    rng = np.random.default_rng(0)
    image = rng.random((SIZE, SIZE), dtype=np.float32)
    labels = rng.integers(0, 2**16, (SIZE, SIZE)).astype(np.uint16)
    seeds = iter(range(10**6))

    def ours() -> object:
        return elastic_deform(image, labels, grid=GRID, sigma=SIGMA, rng=next(seeds))

    def theirs() -> object:
        return elasticdeform.deform_random_grid(
            X=[image, labels], sigma=SIGMA, points=GRID, order=[3, 0], mode="mirror"
        )

    print(
        f"elastic deformation of a {SIZE}x{SIZE} float32 image (cubic) + uint16 labels "
        f"(nearest), grid {GRID}, sigma {SIGMA:g}, mirror; {RUNS} runs, times in ms"
    )
    default_threads = torch.get_num_threads()
    for threads in dict.fromkeys((default_threads, 1)):
        torch.set_num_threads(threads)
        ours_best, ours_median = timings(ours)
        theirs_best, theirs_median = timings(theirs)
        print(
            f"torch threads {threads}: napari_unet best {ours_best:6.2f} median {ours_median:6.2f}"
            f" | elasticdeform best {theirs_best:6.2f} median {theirs_median:6.2f}"
            f" | speed-up (elasticdeform / ours) best {theirs_best / ours_best:.2f}x"
            f" median {theirs_median / ours_median:.2f}x"
        )
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
