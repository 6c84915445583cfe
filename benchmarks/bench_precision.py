"""Reduced-precision inference on this CPU: speed against float32, and what it changes.

``speed``: this CPU's matmul GFLOP/s in float32 and bfloat16 (the physical
limits), then for each network width ``predict_tiled`` of a 2048² image in
each precision, beside the compute floor (one untiled pass over the whole
mirror-padded image, same precision): MP/s and the U-Net's achieved GFLOP/s
(FLOPs counted by ``torch.utils.flop_counter`` on the tiles actually run), as
a fraction of the matmul limit of that precision. ``--layouts contiguous``
adds torch's default memory layout (what the package used before it ran
convolutions channels-last) for comparison.

``labels``: the bundled nuclei model on the 100-image DSB split, float32 and
bfloat16 (or ``--precision``): the fraction of pixels whose label changes
(foreground vs background, and instance ids matched), F1@0.5 and SEG of both.

Usage::

    python benchmarks/bench_precision.py speed [--size 2048] [--base 16 32 64]
        [--layouts channels_last contiguous] [--repeats 2]
    python benchmarks/bench_precision.py labels [--precision bfloat16]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_unet.core import predictor
from napari_unet.core.device import inference_dtype
from napari_unet.core.model import UNet, valid_input_size
from napari_unet.core.predictor import halo
from napari_unet.core.tiling import auto_tile_size, plan_tiles, predict_tiled

CPU = torch.device("cpu")
#: ``--layouts``: the package's (channels-last on CPUs) and torch's default
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def cpu_model() -> str:
    """This CPU's model name and its bfloat16 units (from /proc/cpuinfo on Linux)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.MULTILINE)
    units = sorted({"amx_bf16", "avx512_bf16"} & set(flags.group(1).split() if flags else ()))
    model = name.group(1) if name else platform.processor()
    return f"{model} ({', '.join(units) or 'no native bfloat16'}), {os.cpu_count()} cores"


def best_of(run: Callable[[], object], repeats: int) -> float:
    """Shortest wall time of ``repeats`` runs (after one warm-up run)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
    return 2 * n**3 / best_of(lambda: a @ b, 5) / 1e9


def forward_flops(net: UNet, shape: tuple[int, int]) -> int:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(torch.zeros(1, 1, *shape))
    return int(counter.get_total_flops())


def floor_pass(net: UNet, image: np.ndarray, dtype: torch.dtype | None) -> Callable[[], object]:
    h, w = image.shape
    m = halo(net)
    ph, pw = valid_input_size(h + 2 * m), valid_input_size(w + 2 * m)
    x = torch.from_numpy(np.pad(image, ((m, ph - h - m), (m, pw - w - m)), mode="reflect"))
    x = x[None, None]

    def run() -> object:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            return net(x)

    return run


def speed(args: argparse.Namespace) -> None:
    limits = {
        p: matmul_gflops(d) for p, d in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
    }
    print(json.dumps({"cpu": cpu_model()}))
    print(json.dumps({"matmul_gflops": {k: round(v, 1) for k, v in limits.items()}}), flush=True)
    image = np.random.default_rng(0).random((args.size, args.size), dtype=np.float32)
    megapixels = args.size**2 / 1e6
    for base in args.base:
        torch.manual_seed(0)
        made = UNet(base_channels=base).eval()
        plan = plan_tiles(made, image.shape, auto_tile_size(made, CPU))
        tiled_flops = forward_flops(made, plan.tile) * len(plan.origins)
        h, w = image.shape
        m = halo(made)
        floor_flops = forward_flops(
            made, (valid_input_size(h + 2 * m), valid_input_size(w + 2 * m))
        )
        for layout, precision in itertools.product(args.layouts, args.precisions):
            # the weights' layout decides the convolutions' (the 1-channel input is both)
            net = made.to(memory_format=LAYOUTS[layout])
            predictor.conv_layout = lambda device, layout=layout: LAYOUTS[layout]
            dtype = inference_dtype(precision, CPU)
            run = functools.partial(predict_tiled, net, image, device="cpu", precision=precision)
            tiled = best_of(run, args.repeats)
            floor = best_of(floor_pass(net, image, dtype), args.repeats)
            limit = limits["float32" if dtype is None else "bfloat16"]
            row = {
                "base": base,
                "layout": layout,
                "precision": precision,
                "tile": plan.tile[0],
                "tiles": len(plan.origins),
                "tiled_mp_s": round(megapixels / tiled, 3),
                "floor_mp_s": round(megapixels / floor, 3),
                "tiled_gflops": round(tiled_flops / tiled / 1e9, 1),
                "floor_gflops": round(floor_flops / floor / 1e9, 1),
                "tiled_fraction_of_matmul": round(tiled_flops / tiled / 1e9 / limit, 2),
            }
            print(json.dumps(row), flush=True)


def labels(args: argparse.Namespace) -> None:
    from bench_pretrained import all_few_shot

    from napari_unet.core.checkpoint import load_model, suggested_threshold
    from napari_unet.core.metrics import instance_scores, seg_score
    from napari_unet.core.segment import PlaneDone, iter_segment

    model = load_model("nuclei")
    images, masks = all_few_shot()
    rows: dict[str, list] = {"float32": [], args.precision: []}
    changed = total = 0
    seconds = dict.fromkeys(rows, 0.0)
    for image, truth in zip(images, masks, strict=True):
        out = {}
        for precision in rows:
            start = time.perf_counter()
            for event in iter_segment(
                model,
                image,
                device="cpu",
                threshold=suggested_threshold(model),
                precision=precision,
            ):
                if isinstance(event, PlaneDone):
                    out[precision] = event.labels
            seconds[precision] += time.perf_counter() - start
            match = instance_scores(truth, out[precision])[0]
            rows[precision].append((match.f1, seg_score(truth, out[precision])))
        changed += int(((out["float32"] > 0) != (out[args.precision] > 0)).sum())
        total += truth.size
    report = {"images": len(images), "foreground_pixels_changed": round(changed / total, 5)}
    for precision, values in rows.items():
        f1, seg = np.mean(np.array(values), axis=0)
        report[precision] = {
            "f1@0.5": round(float(f1), 4),
            "seg": round(float(seg), 4),
            "seconds_per_image": round(seconds[precision] / len(images), 3),
        }
    print(json.dumps(report), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--size", type=int, default=2048)
    s.add_argument("--base", type=int, nargs="+", default=[16, 32, 64])
    s.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    s.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=["channels_last"])
    s.add_argument("--repeats", type=int, default=2)
    s.set_defaults(func=speed)
    lab = sub.add_parser("labels")
    lab.add_argument("--precision", default="bfloat16")
    lab.set_defaults(func=labels)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
