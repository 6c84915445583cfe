"""How much of a stack's wall time the network runs: ``napari-unet predict`` on 64 planes.

The stack is made of the bundled nuclei image (DSB 2018, CC0), mirrored to
``--size``² and shifted from plane to plane (``--planes`` planes, uint8 TIFF),
and segmented by the command line in this process with the bundled model, the
labels written to a TIFF. The network's forward passes are timed where they
run (``NetworkPredictor.__call__``); printed: wall time, network time, their
ratio, and seconds per plane.

Usage::

    python benchmarks/bench_pipeline.py [--planes 64] [--size 1024]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_unet.cli import main as cli
from napari_unet.core import predictor

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_unet" / "_data" / "nuclei.tif"


def make_stack(path: Path, planes: int, size: int) -> None:
    image = tifffile.imread(SAMPLE)
    pad = [(0, max(0, size - n)) for n in image.shape]
    big = np.pad(image, pad, mode="reflect")[:size, :size]
    with tifffile.TiffWriter(path) as tif:
        for k in range(planes):
            tif.write(np.roll(big, (37 * k, 53 * k), axis=(0, 1)), contiguous=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, default=64)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()

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
        assert cli(["predict", "nuclei", str(stack), str(labels), "--device", "cpu"]) == 0
        wall = time.perf_counter() - start
        cells = int(tifffile.imread(labels, key=args.planes - 1).max())
    print(
        json.dumps(
            {
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
