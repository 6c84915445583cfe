"""Throughput and peak memory of tiled prediction on a 2048x2048 image.

For each network width (base channels 16, 32, 64; depth 4) it times, each in
a fresh subprocess so peak RSS is per method:

- ``tiled``: ``predict_tiled`` with the paper's valid-padding U-Net (automatic tiles);
- ``floor``: one untiled forward pass of the same network over the whole
  mirror-padded image (the compute floor: no overlap, no tiling);
- ``tiled-same``: ``predict_tiled`` with the same network in same padding;
- ``monai-0.25`` / ``monai-0.5``: MONAI ``sliding_window_inference`` (gaussian
  blending) with the same-padding network, at 25 % and 50 % overlap.

Seam error = max |p - p_whole| against the untiled pass of the same network
(valid: mirror-padded whole image; same: whole image). MONAI is a
benchmark-only dependency (``pip install monai``). Usage::

    python benchmarks/bench_predict.py [--size 2048] [--base 16 32 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from napari_unet.core.model import UNet, valid_input_size
from napari_unet.core.tiling import auto_tile_size, plan_tiles, predict_tiled

METHODS = ["floor", "tiled", "tiled-same", "monai-0.25", "monai-0.5"]


def network(base: int, padding: str) -> UNet:
    torch.manual_seed(0)
    return UNet(base_channels=base, padding=padding).eval()


def whole(net: UNet, image: np.ndarray, margin: int) -> np.ndarray:
    """One pass over the image mirror-padded by ``margin`` (0: the bare image)."""
    h, w = image.shape
    m = margin
    ph = valid_input_size(h + 2 * m, net.depth, net.padding)
    pw = valid_input_size(w + 2 * m, net.depth, net.padding)
    x = np.pad(image, ((m, ph - h - m), (m, pw - w - m)), mode="reflect")
    offset = m if net.padding == "same" else 0
    with torch.inference_mode():
        prob = torch.softmax(net(torch.from_numpy(x)[None, None]), 1)[0].numpy()
    return prob[:, offset : offset + h, offset : offset + w]


def run_one(method: str, base: int, size: int) -> dict[str, object]:
    image = np.random.default_rng(0).random((size, size), dtype=np.float32)
    padding = "valid" if method in ("floor", "tiled") else "same"
    net = network(base, padding)
    plan = plan_tiles(net, image.shape, auto_tile_size(net, torch.device("cpu")))
    # seams are measured against one pass with the same border handling
    reference_margin = plan.margin
    start = time.perf_counter()
    if method == "floor":
        prob = whole(net, image, net.margin)
    elif method.startswith("tiled"):
        prob = predict_tiled(net, image, device="cpu")
    else:
        from monai.inferers import sliding_window_inference

        overlap = float(method.split("-")[1])
        with torch.inference_mode():  # same tile size as ours; MONAI zero-pads the borders
            logits = sliding_window_inference(
                torch.from_numpy(image)[None, None],
                plan.tile,
                1,
                net,
                overlap=overlap,
                mode="gaussian",
            )
            prob = torch.softmax(logits, 1)[0].numpy()
        reference_margin = 0
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "method": method,
        "base": base,
        "size": size,
        "seconds": round(seconds, 2),
        "mp_per_s": round(size * size / 1e6 / seconds, 4),
        "peak_rss_mb": round(peak_mb),
        "tile": plan.tile,
    }
    if method != "floor" and size <= 2048:
        reference = whole(net, image, reference_margin)
        report["seam_error"] = float(np.abs(prob - reference).max())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--base", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "BASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.size)))
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, image "
        f"{args.size}x{args.size}"
    )
    for base in args.base:
        rows = {}
        for method in args.methods:
            out = subprocess.run(
                [sys.executable, __file__, "--size", str(args.size), "--one", method, str(base)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows[method] = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(rows[method]), flush=True)
        if "floor" in rows and "tiled" in rows:
            print(
                f"base {base}: tiled / floor = "
                f"{rows['tiled']['mp_per_s'] / rows['floor']['mp_per_s']:.2f}"
            )
        for m in ("monai-0.25", "monai-0.5"):
            if m in rows and "tiled-same" in rows:
                print(
                    f"base {base}: tiled-same / {m} = "
                    f"{rows['tiled-same']['mp_per_s'] / rows[m]['mp_per_s']:.2f}; "
                    f"tiled (valid) / {m} = "
                    f"{rows['tiled']['mp_per_s'] / rows[m]['mp_per_s']:.2f}"
                )


if __name__ == "__main__":
    main()
