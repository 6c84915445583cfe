"""Peak memory and throughput of ``napari-unet predict`` on single planes of growing size.

For each edge N a synthetic uncompressed N x N uint8 plane (smooth blobs) is
written to a temporary folder band by band, predicted by the command line in
a subprocess (labels to a TIFF on the same disk) with a tiny U-Net (depth 2,
1 base channel: the network's cost is not what is measured), and deleted.
Printed per size: wall time, megapixels per second, the exact peak RSS of the
subprocess (``getrusage``), the polled peak of its private (anonymous)
memory, and what holding the plane, its float32 probabilities and uint32
labels in memory would need (the whole-plane path: ~30 bytes per pixel).

Then the cost of linking per-plane instances across planes
(:class:`napari_unet.core.linking.PlaneLinker`) on 2048 x 2048 planes of
~1,500 moving disks, and the fraction of disks that keep their id.

    python benchmarks/bench_large_plane.py --sizes 4096 8192 16384
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_large_stack import MB, run_measured


def _band(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Smooth blobs, uint8."""
    from scipy import ndimage

    low = ndimage.gaussian_filter(rng.random((rows // 8 + 2, cols // 8 + 2)), 1.5)
    up = np.kron(low, np.ones((8, 8)))[:rows, :cols]
    return np.clip((up - 0.5) * 2000 + 128, 0, 255).astype(np.uint8)


def write_plane(path: Path | str, size: int | str, seed: int = 0) -> None:
    """An uncompressed uint8 plane of smooth blobs, written band by band (bounded memory)."""
    import tifffile

    size = int(size)
    plane = tifffile.memmap(path, shape=(size, size), dtype=np.uint8, photometric="minisblack")
    rng = np.random.default_rng(seed)
    band = 1024
    for y in range(0, size, band):
        plane[y : y + band] = _band(rng, min(band, size - y), size)
    plane.flush()
    del plane


def tiny_model(path: Path | str) -> Path:
    """A depth-2, 1-channel U-Net biased so that about 40 % of the blobs' pixels are cells."""
    import torch

    from napari_unet.core.checkpoint import save_model
    from napari_unet.core.model import UNet

    torch.manual_seed(0)
    net = UNet(base_channels=1, depth=2).eval()
    sample = net.normalization(_band(np.random.default_rng(1), 300, 300))
    with torch.inference_mode():
        logits = net(torch.from_numpy(sample)[None, None])[0]
    with torch.no_grad():
        net.head.bias[1] -= float(torch.quantile((logits[1] - logits[0]).flatten(), 0.6))
    return save_model(path, net)


def _in_child(call: str, *args: object) -> None:
    """Run ``bench_large_plane.<call>`` in a child process, so this one stays small.

    The CLI runs in a forked child that starts with this process's RSS, which
    getrusage's peak would count.
    """
    script = f"import sys, bench_large_plane as b; b.{call}(*sys.argv[1:])"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    subprocess.run([sys.executable, "-c", script, *map(str, args)], check=True, env=env)


def bench_planes(sizes: list[int], work: Path) -> None:
    model = work / "tiny.pt"
    _in_child("tiny_model", model)
    print("\n## napari-unet predict, one N x N uint8 plane (tiny U-Net, CPU)")
    print(
        f"{'N':>7} {'MP':>7} {'wall s':>8} {'MP/s':>6} {'peak RSS MB':>11} "
        f"{'peak private MB':>15} {'whole-plane MB':>14}"
    )
    for size in sizes:
        image, out = work / "plane.tif", work / "labels.tif"
        _in_child("write_plane", image, size)
        cmd = [sys.executable, "-m", "napari_unet.cli", "predict", str(model), str(image)]
        r = run_measured([*cmd, str(out), "--device", "cpu", "--overwrite"])
        pixels = size * size
        rate = pixels / 1e6 / r["seconds"]
        print(
            f"{size:7d} {pixels / 1e6:7.1f} {r['seconds']:8.1f} {rate:6.2f} "
            f"{r['maxrss'] / MB:11.0f} {r['anon'] / MB:15.0f} {pixels * 30 / MB:14.0f}",
            flush=True,
        )
        image.unlink()
        out.unlink(missing_ok=True)


_DASK = r"""
import json, resource, sys, time
import dask.array as da, numpy as np, tifffile, zarr
from distributed import Client, LocalCluster
from napari_unet.core import label_dask, load_model, normalize, predict_dask
image_path, model_path, out_path = sys.argv[1:4]
norm = load_model(model_path).normalization
with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
        Client(cluster) as client:
    start = time.perf_counter()
    image = tifffile.memmap(image_path, mode="r")
    # normalization limits from a grid sample (as the CLI), applied block by block
    limits = norm.limits(np.asarray(image[::4, ::4]))
    x = da.from_array(image, chunks=(2048, 2048)).map_blocks(
        norm.apply, limits, dtype=np.float32)
    prob = predict_dask(model_path, x, block_size=2048)
    out = zarr.create_array(out_path, shape=image.shape, chunks=(2048, 2048), dtype="u4")
    n = label_dask(prob, out, threshold=0.5)
    seconds = time.perf_counter() - start
    workers = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
print(json.dumps({"seconds": seconds, "cells": n,
                  "worker_maxrss": max(workers.values()) * 1024}))
"""


def bench_dask(size: int, work: Path) -> None:
    """predict_dask + label_dask on a LocalCluster of 2 single-thread workers."""
    import json

    model, image = work / "tiny.pt", work / "plane.tif"
    _in_child("tiny_model", model)
    _in_child("write_plane", image, size)
    r = run_measured([sys.executable, "-c", _DASK, str(image), str(model), str(work / "l.zarr")])
    result = json.loads(r["stdout"].strip().splitlines()[-1])
    pixels = size * size
    print(f"\n## predict_dask + label_dask, one {size} x {size} plane, LocalCluster of 2 workers")
    print(
        f"{result['seconds']:.1f} s ({pixels / 1e6 / result['seconds']:.2f} MP/s), "
        f"{result['cells']} cells; peak RSS: client {r['maxrss'] / MB:.0f} MB, each worker "
        f"<= {result['worker_maxrss'] / MB:.0f} MB"
    )


def bench_linking(n_planes: int = 20, size: int = 2048, n_disks: int = 1500) -> None:
    from napari_unet.core.linking import PlaneLinker

    rng = np.random.default_rng(0)
    centres = rng.uniform(20, size - 20, (n_disks, 2))
    velocity = rng.normal(0, 1.5, (n_disks, 2))
    radius = rng.uniform(6, 12, n_disks)
    yy, xx = np.ogrid[:size, :size]
    planes, truth = [], []
    for t in range(n_planes):
        labels = np.zeros((size, size), np.uint32)
        for i in range(n_disks):  # fixed depth order; ids shuffled below, as a 2D segmentation
            cy, cx = centres[i] + t * velocity[i]
            r = radius[i]
            y0, y1 = int(max(cy - r, 0)), int(min(cy + r + 1, size))
            x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, size))
            disk = (yy[y0:y1] - cy) ** 2 + (xx[:, x0:x1] - cx) ** 2 <= r * r
            labels[y0:y1, x0:x1][disk & (labels[y0:y1, x0:x1] == 0)] = i + 1
        ids = np.unique(labels[labels > 0])
        shuffled = np.zeros(n_disks + 1, np.uint32)
        shuffled[ids] = rng.permutation(len(ids)) + 1
        planes.append(shuffled[labels])
        truth.append(labels)
    print(f"\n## linking {n_planes} planes of {size} x {size} with {n_disks} moving disks")
    for bridge in (0, 1):
        linker = PlaneLinker(bridge=bridge)
        start = time.perf_counter()
        linked = [linker.link(p) for p in planes]
        seconds = (time.perf_counter() - start) / n_planes
        kept = _kept(truth, linked, n_disks)
        print(
            f"bridge {bridge}: {seconds:.3f} s per plane; {kept / n_disks:.3f} of the disks "
            "keep one id throughout"
        )


def _kept(truth: list[np.ndarray], linked: list[np.ndarray], n_disks: int) -> int:
    """Disks whose pixels carry one linked id in every plane."""
    # a disk keeps its id when all its pixels in every plane carry one linked id
    pairs = np.unique(
        np.concatenate(
            [np.stack([t[t > 0], lab[t > 0]]) for t, lab in zip(truth, linked, strict=True)],
            axis=1,
        ),
        axis=1,
    )
    ids_per_disk = np.bincount(pairs[0], minlength=n_disks + 1)[1:]
    return int((ids_per_disk == 1).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[4096, 16384, 32768, 65536])
    parser.add_argument("--no-linking", action="store_true")
    parser.add_argument("--dask", type=int, metavar="N", help="also predict_dask + label_dask")
    args = parser.parse_args()
    out = Path(__file__).parent / "_out"  # git-ignored, on the disk the outputs go to
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as folder:
        if args.sizes:
            bench_planes(args.sizes, Path(folder))
        if args.dask:
            bench_dask(args.dask, Path(folder))
    if not args.no_linking:
        bench_linking()


if __name__ == "__main__":
    main()
