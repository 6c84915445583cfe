"""Throughput of :func:`napari_unet.core.predict_dask` on a dask.distributed LocalCluster.

A synthetic float32 stack (default 8 x 1024 x 1024) is stored as zarr in a
temporary folder; the model file path goes to the workers, which load it
themselves. The probabilities are written to zarr block by block
(``to_zarr``), with 1 and then 2 worker processes (``threads_per_worker=1``,
``torch.set_num_threads(1)`` in every worker). For reference the same stack
runs in-process through :func:`~napari_unet.core.predict_tiled` with one torch
thread. The first block of the cluster output is checked against
``predict_tiled``.

Run with ``python benchmarks/bench_dask.py [--planes 8] [--size 1024]
[--base-channels 4] [--depth 4] [--workers 1 2]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _one_torch_thread() -> int:
    import torch

    torch.set_num_threads(1)
    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--planes", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--base-channels", type=int, default=4)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()

    import torch
    import zarr
    from dask.distributed import Client, LocalCluster

    from napari_unet.core.checkpoint import save_model
    from napari_unet.core.distributed import predict_dask
    from napari_unet.core.model import UNet
    from napari_unet.core.tiling import predict_tiled

    work = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    try:
        torch.manual_seed(0)
        net = UNet(base_channels=args.base_channels, depth=args.depth).eval()
        model = save_model(work / "model.pt", net)
        shape = (args.planes, args.size, args.size)
        src = zarr.open(
            str(work / "in.zarr"),
            mode="w",
            shape=shape,
            chunks=(1, args.size, args.size),
            dtype="f4",
        )
        rng = np.random.default_rng(0)
        for i in range(args.planes):
            src[i] = rng.random((args.size, args.size), dtype=np.float32)
        mpix = np.prod(shape) / 1e6
        print(
            f"stack {shape} float32 ({np.prod(shape) * 4 / 2**20:.0f} MB), valid U-Net "
            f"base_channels={args.base_channels} depth={args.depth}, "
            f"block {args.block_size}"
        )
        print(f"{'setup':>34} {'wall s':>7} {'MP/s':>6} {'speed-up':>8}")

        one = None
        if not args.skip_reference:
            torch.set_num_threads(1)
            start = time.perf_counter()
            for i in range(args.planes):
                predict_tiled(net, src[i], device="cpu")
            one = time.perf_counter() - start
            print(
                f"{'predict_tiled, in-process, 1 thread':>34} {one:7.1f} {mpix / one:6.2f} "
                f"{1.0:8.2f}",
                flush=True,
            )

        first = None
        for n in args.workers:
            with (
                LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
                ) as cluster,
                Client(cluster) as client,
            ):
                client.run(_one_torch_thread)
                client.run(lambda: __import__("napari_unet.core.distributed"))  # warm imports
                lazy = predict_dask(str(model), src, block_size=args.block_size)
                out = work / f"prob-{n}.zarr"
                start = time.perf_counter()
                lazy.to_zarr(str(out))
                seconds = time.perf_counter() - start
                first = first or seconds
                base = one or first
                print(
                    f"{f'predict_dask, LocalCluster {n} worker(s)':>34} {seconds:7.1f} "
                    f"{mpix / seconds:6.2f} {base / seconds:8.2f}",
                    flush=True,
                )
                plane = zarr.open(str(out), mode="r")[0]
        torch.set_num_threads(1)
        ref = predict_tiled(net, src[0], device="cpu")
        print(f"max |predict_dask - predict_tiled| on plane 0: {np.abs(plane - ref).max():.2e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
