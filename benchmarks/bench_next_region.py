"""Does annotating where the model is unsure beat annotating the same area at random?

The DSB 2018 100-image split (never used for pretraining): for each seed, a
pool of ``--pool`` images and ``--n-test`` test images are drawn. The bundled
model (``--from``) predicts the pool; ``--windows`` windows of ``--size`` px
are annotated with the true labels, chosen either

* ``next``: one after another by :func:`napari_unet.core.next_region` on the
  uncertainty map of the pool (the most uncertain window of any pool image
  that overlaps no window chosen before), as the "Next region" button does, or
* ``random``: at random positions of random pool images (no overlap, at
  least one cell in each),

then the model is fine-tuned on those windows only (``--steps`` steps, the
Train widget's defaults otherwise) and scored on the test images (F1@0.5,
SEG). The zero-shot score of the starting model on the same test images is
printed first. One JSON line per run.

``--kind 520x696`` draws pool and test images among the images of that shape
only (one kind of acquisition, as a user's own experiment), instead of the
whole mixed split.

Usage::

    python benchmarks/bench_next_region.py --seeds 0 1 2
    python benchmarks/bench_next_region.py --seeds 0 1 2 --kind 520x696 --pool 5 --n-test 10
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import tifffile
from bench_pretrained import score
from bench_training_quality import load, split

from napari_unet.core.checkpoint import load_model
from napari_unet.core.pretrained import DEFAULT_PRETRAINED, model_file
from napari_unet.core.tiling import predict_tiled
from napari_unet.core.training import TrainConfig, train
from napari_unet.core.uncertainty import next_region, uncertainty_map

Window = tuple[int, int, int]  # image index, row, column


def next_windows(model, images: list, size: int, n: int) -> list[Window]:
    """The ``n`` windows the "Next region" button would pick, one after another."""
    maps = [
        uncertainty_map(predict_tiled(model, model.normalization(im), device="cpu"))
        for im in images
    ]
    taken = [np.zeros(m.shape, bool) for m in maps]
    picked: list[Window] = []
    for _ in range(n):
        candidates = [
            (next_region(m, size, annotated=t, stride=8), k)
            for k, (m, t) in enumerate(zip(maps, taken, strict=True))
            if min(m.shape) >= size
        ]
        region, k = max(candidates, key=lambda found: found[0].score)
        taken[k][region.window] = True
        picked.append((k, region.y0, region.x0))
    return picked


def random_windows(images: list, masks: list, size: int, n: int, seed: int) -> list[Window]:
    """``n`` non-overlapping windows with a cell at random places of random images.

    A window without any cell is drawn again: training refuses an image whose
    annotation holds no cell, and nobody annotates an empty window.
    """
    rng = np.random.default_rng(seed)
    fits = [k for k, im in enumerate(images) if min(im.shape[-2:]) >= size]
    taken = {k: np.zeros(images[k].shape[-2:], bool) for k in fits}
    picked: list[Window] = []
    while len(picked) < n:
        k = int(rng.choice(fits))
        h, w = images[k].shape[-2:]
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        window = (slice(y, y + size), slice(x, x + size))
        if not taken[k][window].any() and masks[k][window].any():
            taken[k][window] = True
            picked.append((k, y, x))
    return picked


def fine_tune(model, images: list, masks: list, windows: list[Window], size: int, args):
    """Fine-tune on the windows only (the rest of each image is unknown)."""
    regions: dict[int, np.ndarray] = {}
    for k, y, x in windows:
        regions.setdefault(k, np.zeros(masks[k].shape, bool))[y : y + size, x : x + size] = True
    used = sorted(regions)
    config = TrainConfig(steps=args.steps, minutes=None, seed=args.train_seed)
    return train(
        [images[k] for k in used],
        [masks[k] for k in used],
        masks=[regions[k] for k in used],
        model=model,
        config=config,
        device="cpu",
    )


def same_kind(kind: str, n_pool: int, n_test: int, seed: int):
    """Pool and test ids among the split's images of one shape ("HxW")."""
    folder = split("dsb", 1, 1, seed)[0]
    shape = tuple(int(v) for v in kind.split("x"))
    ids = sorted(
        p.stem
        for p in (folder / "images").glob("*.tif")
        if tifffile.TiffFile(p).pages[0].shape[:2] == shape
    )
    if len(ids) < n_pool + n_test:
        raise SystemExit(f"only {len(ids)} images of shape {kind}")
    order = np.random.default_rng(seed).permutation(len(ids))
    pool = [ids[i] for i in order[:n_pool]]
    return folder, pool, [ids[i] for i in order[n_pool : n_pool + n_test]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--from", dest="start", default=DEFAULT_PRETRAINED)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--n-test", type=int, default=20)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--kind", help="only images of this shape, e.g. 520x696")
    args = parser.parse_args()
    start = load_model(model_file(args.start))
    for seed in args.seeds:
        if args.kind:
            folder, pool_ids, test_ids = same_kind(args.kind, args.pool, args.n_test, seed)
        else:
            folder, pool_ids, test_ids = split("dsb", args.pool, args.n_test, seed)
        images, masks = load(folder, pool_ids)
        test_images, test_masks = load(folder, test_ids)
        base = score(start, test_images, test_masks)
        print(json.dumps({"seed": seed, "choice": "none (zero-shot)", **base}), flush=True)
        choices = {
            "next": next_windows(start, images, args.size, args.windows),
            "random": random_windows(images, masks, args.size, args.windows, seed),
        }
        for choice, windows in choices.items():
            t0 = time.perf_counter()
            result = fine_tune(start, images, masks, windows, args.size, args)
            report = {
                "seed": seed,
                "choice": choice,
                "windows": [list(w) for w in windows],
                "annotated_cells": int(
                    sum(
                        len(np.unique(masks[k][y : y + args.size, x : x + args.size])) - 1
                        for k, y, x in windows
                    )
                ),
                "train_s": round(time.perf_counter() - t0),
                **score(result.model, test_images, test_masks),
            }
            print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
