"""How much of a stack's wall time the network runs: ``napari-unet predict`` on 64 planes.

The stack is made of the bundled nuclei image (DSB 2018, CC0), mirrored to
``--size``² and shifted from plane to plane (``--planes`` planes, uint8 TIFF),
and segmented by the command line in this process with the bundled model, the
labels written to a TIFF. The network's forward passes are timed where they
run (``NetworkPredictor.__call__``); printed: wall time, network time, their
ratio, and seconds per plane. ``--serial`` runs the reading of the next plane
and the labelling of the last one in the loop's own thread, one after the
other, as before they moved to background threads (``core/background.py``).

Usage::

    python benchmarks/bench_pipeline.py [--planes 64] [--size 1024] [--serial]
        [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_unet.cli import main as cli
from napari_unet.core import background, predictor

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_unet" / "_data" / "nuclei.tif"


def make_stack(path: Path, planes: int, size: int) -> None:
    image = tifffile.imread(SAMPLE)
    pad = [(0, max(0, size - n)) for n in image.shape]
    big = np.pad(image, pad, mode="reflect")[:size, :size]
    with tifffile.TiffWriter(path) as tif:
        for k in range(planes):
            tif.write(np.roll(big, (37 * k, 53 * k), axis=(0, 1)), contiguous=True)


class RunNow(Executor):
    """An executor that runs each job at once, in the caller's thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # handed to whoever collects the result
            future.set_exception(error)
        return future


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, default=64)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--serial", action="store_true", help="no background threads")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    if args.serial:
        background.ThreadPoolExecutor = lambda *a, **k: RunNow()  # type: ignore[misc]

    network = 0.0
    call = predictor.NetworkPredictor.__call__

    def timed(self, batch):
        nonlocal network
        start = time.perf_counter()
        try:
            return call(self, batch)
        finally:
            network += time.perf_counter() - start

    predictor.NetworkPredictor.__call__ = timed
    with tempfile.TemporaryDirectory() as tmp:
        stack, labels = Path(tmp) / "stack.tif", Path(tmp) / "labels.tif"
        make_stack(stack, args.planes, args.size)
        start = time.perf_counter()
        command = ["predict", "nuclei", str(stack), str(labels), "--device", "cpu"]
        assert cli([*command, "--precision", args.precision]) == 0
        wall = time.perf_counter() - start
        cells = int(tifffile.imread(labels, key=args.planes - 1).max())
    print(
        json.dumps(
            {
                "serial": args.serial,
                "precision": args.precision,
                "planes": args.planes,
                "size": args.size,
                "wall_s": round(wall, 1),
                "network_s": round(network, 1),
                "network_fraction": round(network / wall, 3),
                "s_per_plane": round(wall / args.planes, 2),
                "last_label": cells,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
