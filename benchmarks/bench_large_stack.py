"""Peak memory and throughput of ``napari-unet predict`` on stacks of growing size.

For each stack size a synthetic uncompressed uint16 stack is written plane by
plane to a temporary folder, predicted by the command line in a subprocess
(labels to a TIFF on the same disk), and deleted. Printed per size: wall time,
throughput in megapixels per second, the exact peak RSS of the subprocess
(``getrusage``), and the peak of its private (anonymous) memory, polled. Peak
private memory should stay flat as the stack grows; RSS also counts the pages
of the memory-mapped input that were read (file-backed, reclaimable).

Then, on one plane, throughput of the same network through
:func:`napari_unet.core.predict_tiled` and through MONAI's
``sliding_window_inference`` (benchmark-only dependency; skipped if missing).
MONAI needs output size == input size, so it runs the same-padding variant of
the network, which is also timed through ``predict_tiled``; each method runs in
its own subprocess so its peak RSS is its own.

Defaults follow the issue (2048 x 2048 planes, 0.25, 1 and 4 GB, a
``base_channels=4``, depth-4 valid U-Net). On a small CPU that takes hours;
pass smaller sizes::

    python benchmarks/bench_large_stack.py --plane 1024 --gb 0.03 0.125 0.5 \
        --base-channels 1 --depth 2 --monai-plane 1024
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MB = 1024**2


def write_stack(path: Path, n_planes: int, size: int, seed: int = 0) -> None:
    """Uncompressed uint16 stack, written one plane at a time (bounded memory)."""
    import tifffile

    rng = np.random.default_rng(seed)
    with tifffile.TiffWriter(path, bigtiff=n_planes * size * size * 2 > 2**31) as tif:
        for _ in range(n_planes):
            plane = rng.integers(0, 4000, (size, size), dtype=np.uint16)
            tif.write(plane, contiguous=True, photometric="minisblack")


def run_measured(cmd: list[str]) -> dict:
    """Run ``cmd``; return wall time, exact peak RSS and polled peak private memory."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    anon, stop = [0], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            anon[0] = max(anon[0], int(line.split()[1]) * 1024)
            except (OSError, ValueError):
                pass
            time.sleep(0.02)

    out: dict[str, bytes] = {}

    def drain(name: str, stream) -> None:
        out[name] = stream.read()

    threads = [
        threading.Thread(target=poll),
        threading.Thread(target=drain, args=("stdout", proc.stdout)),
        threading.Thread(target=drain, args=("stderr", proc.stderr)),
    ]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    for t in threads:
        t.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {out['stderr'][-500:]!r}")
    return {
        "seconds": time.perf_counter() - start,
        "maxrss": usage.ru_maxrss * 1024,
        "anon": anon[0],
        "stdout": out["stdout"].decode(),
    }


def bench_stacks(args: argparse.Namespace, model: Path, work: Path) -> None:
    plane_bytes = args.plane * args.plane * 2
    print(
        f"\n## napari-unet predict, {args.plane} x {args.plane} uint16 planes "
        f"({plane_bytes / MB:.0f} MB each)"
    )
    print(
        f"{'stack':>9} {'planes':>6} {'wall s':>8} {'MP/s':>6} {'peak RSS MB':>11} "
        f"{'peak private MB':>15} {'stack+prob MB':>13}"
    )
    baseline = run_measured(
        [
            sys.executable,
            "-c",
            "import torch, tifffile, zarr, skimage.measure, napari_unet.cli, "
            "napari_unet.core.segment, napari_unet.core.io",
        ]
    )
    for gb in args.gb:
        n = max(1, round(gb * 1024**3 / plane_bytes))
        stack = work / "stack.tif"
        write_stack(stack, n, args.plane)
        out = work / "labels.tif"
        cmd = [
            sys.executable,
            "-m",
            "napari_unet.cli",
            "predict",
            str(model),
            str(stack),
            str(out),
            "--device",
            "cpu",
            "--overwrite",
        ]
        if args.tile_size:
            cmd += ["--tile-size", str(args.tile_size)]
        r = run_measured(cmd)
        pixels = n * args.plane * args.plane
        whole = n * plane_bytes * (1 + 2 * 2)  # the stack + float32 2-class probabilities
        print(
            f"{n * plane_bytes / 1024**3:7.3f}GB {n:6d} {r['seconds']:8.1f} "
            f"{pixels / 1e6 / r['seconds']:6.2f} {r['maxrss'] / MB:11.0f} "
            f"{r['anon'] / MB:15.0f} {whole / MB:13.0f}",
            flush=True,
        )
        stack.unlink()
        out.unlink(missing_ok=True)
    print(
        f"(imports only: peak RSS {baseline['maxrss'] / MB:.0f} MB, private "
        f"{baseline['anon'] / MB:.0f} MB; wall time includes ~{baseline['seconds']:.1f} s "
        "of start-up)"
    )


# ---------------------------------------------------------------------------
# one plane: predict_tiled vs MONAI (each in its own subprocess)

_ONE_PLANE = r"""
import json, sys, time, numpy as np, torch
from napari_unet.core.model import UNet
from napari_unet.core.tiling import predict_tiled
method, size, base, depth, tile, threads = sys.argv[1:7]
size, base, depth, tile = int(size), int(base), int(depth), int(tile)
torch.manual_seed(0)
torch.set_num_threads(int(threads))
padding = "valid" if method == "tiled-valid" else "same"
net = UNet(base_channels=base, depth=depth, padding=padding).eval()
image = np.random.default_rng(0).random((size, size), dtype=np.float32)
def run():
    if method.startswith("tiled"):
        return predict_tiled(net, image, tile_size=tile, device="cpu")
    from monai.inferers import sliding_window_inference
    with torch.inference_mode():
        x = torch.from_numpy(image)[None, None]
        return torch.softmax(sliding_window_inference(
            x, roi_size=(tile, tile), sw_batch_size=1, predictor=net, overlap=0.25), 1)
run()  # warm-up
start = time.perf_counter()
out = run()
print(json.dumps({"seconds": time.perf_counter() - start, "shape": list(out.shape)}))
"""


def bench_one_plane(args: argparse.Namespace) -> None:
    size = args.monai_plane
    print(
        f"\n## one {size} x {size} plane, base_channels={args.base_channels}, "
        f"depth={args.depth}, input tiles/windows of {args.monai_tile}, "
        f"{args.threads} torch thread(s), best of {args.repeat}"
    )
    methods = ["tiled-valid", "tiled-same"]
    try:
        import monai

        methods.append("monai-same")
        print(
            f"(MONAI {monai.__version__}: sliding_window_inference, overlap 0.25, "
            "constant blending, same-padding network: MONAI needs output size == input size)"
        )
    except ImportError:
        print("MONAI is not installed: skipping its part (pip install monai)")
    # the methods alternate, `--repeat` rounds; the fastest round of each is shown
    # (CPU timings on a shared machine are noisy)
    best: dict[str, tuple[float, int]] = {}
    for _ in range(args.repeat):
        for method in methods:
            r = run_measured(
                [
                    sys.executable,
                    "-c",
                    _ONE_PLANE,
                    method,
                    str(size),
                    str(args.base_channels),
                    str(args.depth),
                    str(args.monai_tile),
                    str(args.threads),
                ]
            )
            seconds = json.loads(r["stdout"].strip().splitlines()[-1])["seconds"]
            old = best.get(method, (np.inf, 0))
            best[method] = (min(old[0], seconds), max(old[1], r["maxrss"]))
    print(f"{'method':>12} {'s/plane':>8} {'MP/s':>6} {'peak RSS MB':>11}")
    for method, (seconds, maxrss) in best.items():
        print(
            f"{method:>12} {seconds:8.2f} {size * size / 1e6 / seconds:6.2f} {maxrss / MB:11.0f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plane", type=int, default=2048, help="plane edge (pixels)")
    parser.add_argument(
        "--gb", type=float, nargs="*", default=[0.25, 1.0, 4.0], help="stack sizes in GB (uint16)"
    )
    parser.add_argument("--base-channels", type=int, default=4)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--tile-size", type=int, help="--tile-size for the CLI")
    parser.add_argument("--monai-plane", type=int, default=2048, help="0 skips the plane part")
    parser.add_argument(
        "--monai-tile", type=int, default=512, help="input tile edge for the one-plane comparison"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads for the one-plane comparison",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds of the one-plane comparison (the best is shown)",
    )
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    args = parser.parse_args()

    import torch

    from napari_unet.core.checkpoint import save_model
    from napari_unet.core.model import UNet

    work = Path(tempfile.mkdtemp(prefix="bench-large-stack-", dir=args.workdir))
    try:
        torch.manual_seed(0)
        model = save_model(
            work / "model.pt", UNet(base_channels=args.base_channels, depth=args.depth)
        )
        print(
            f"model: valid U-Net, base_channels={args.base_channels}, depth={args.depth}; "
            f"{os.cpu_count()} CPU(s), torch {torch.__version__}"
        )
        if args.gb:
            bench_stacks(args, model, work)
        if args.monai_plane:
            bench_one_plane(args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
