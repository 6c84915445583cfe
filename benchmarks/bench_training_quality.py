"""Few-shot quality on the real data: train briefly on a few images, score unseen ones.

ISBI 2012 EM: train on 2 slices, report cell (interior) IoU on other slices.
DSB 2018 nuclei: train on 5 images, report instance F1 at IoU 0.5 on other images.

The budget is CPU time of this process (default 600 CPU-s = 5 minutes on the
2 cores of the project's machine), so a busy machine slows the run down but
does not change what it learns. Usage::

    python benchmarks/bench_training_quality.py dsb --validation auto
    python benchmarks/bench_training_quality.py isbi --weighting none --cpu-seconds 600
    python benchmarks/bench_training_quality.py dsb --load model.pt --tta  # score only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_unet.core.checkpoint import load_model, save_model, suggested_threshold
from napari_unet.core.metrics import foreground_iou, instance_scores
from napari_unet.core.model import UNet
from napari_unet.core.postprocess import probabilities_to_labels
from napari_unet.core.tiling import TestTimeAugmentation, predict_tiled
from napari_unet.core.training import TrainConfig, iter_train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load(folder: Path, ids: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images = [tifffile.imread(folder / "images" / f"{i}.tif") for i in ids]
    masks = [tifffile.imread(folder / "masks" / f"{i}.tif") for i in ids]
    return images, masks


def split(
    dataset: str, n_train: int | None, n_test: int, seed: int
) -> tuple[Path, list[str], list[str]]:
    """Training and test image ids (ISBI: the first slices and the last ones)."""
    if dataset == "isbi":
        folder = DATA / "isbi2012_em_membranes"
        ids = sorted((p.stem for p in (folder / "images").glob("*.tif")), key=int)
        train_ids, test_ids = ids[: n_train or 2], ids[-n_test:]
        if set(train_ids) & set(test_ids):
            sys.exit(f"{len(train_ids)} training and {n_test} test slices overlap")
        return folder, train_ids, test_ids
    folder = DATA / "dsb2018_nuclei_train"
    ids = sorted(p.stem for p in (folder / "images").glob("*.tif"))
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train = n_train or 5
    return (
        folder,
        [ids[i] for i in order[:n_train]],
        [ids[i] for i in order[n_train : n_train + n_test]],
    )


def calibrate(
    images: list, masks: list, settings: dict, cpu_seconds: float, model: UNet | None = None
) -> int:
    """Steps that fit ``cpu_seconds`` of this process's CPU time (training ``model``)."""
    # no validation in the probe: it would count as training time
    probe_config = TrainConfig(steps=8, **{**settings, "validation": "none"})
    probe = iter_train(images, masks, model=model, config=probe_config, device="cpu")
    next(probe)
    next(probe)
    cpu = time.process_time()
    for _ in range(6):
        next(probe)
    per_step = (time.process_time() - cpu) / 6
    steps = max(1, int(cpu_seconds / per_step))
    print(f"  {per_step:.2f} CPU-s per step -> {steps} steps", file=sys.stderr, flush=True)
    return steps


def run_training(
    images: list, masks: list, settings: dict, args: argparse.Namespace
) -> tuple[UNet, int, float, float]:
    """Train within the step (or calibrated CPU-time) budget; log progress to stderr."""
    steps = args.steps or calibrate(images, masks, settings, args.cpu_seconds)
    config = TrainConfig(steps=steps, minutes=None, validate_every=steps, **settings)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    gen = iter_train(images, masks, config=config, device="cpu")
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if event.step % 50 == 0:
            print(
                f"  step {event.step}/{steps} loss {event.loss:.3f} "
                f"cpu {time.process_time() - cpu0:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    return result.model, result.steps, time.process_time() - cpu0, time.perf_counter() - wall0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["isbi", "dsb"])
    parser.add_argument(
        "--weighting", default="border", choices=["unet", "border", "balanced", "none"]
    )
    parser.add_argument("--cpu-seconds", type=float, default=600.0)
    parser.add_argument("--steps", type=int, help="fixed step budget (skips the calibration)")
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--elastic-sigma", type=float, default=10.0)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=380)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--dice-weight", type=float, default=0.0)
    parser.add_argument("--norm", choices=["batch", "none"], default="batch")
    parser.add_argument("--validation", default="none", choices=["none", "auto"])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--n-train", type=int, help="training images (default: 2 ISBI slices, 5 DSB images)"
    )
    parser.add_argument("--n-test", type=int, default=20)
    parser.add_argument("--expand", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=[0.5],
        help="also score these thresholds (the model's own is always scored)",
    )
    parser.add_argument("--save", help="also save the trained model here (.pt)")
    parser.add_argument("--load", help="score this model file instead of training one")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation (8 views)")
    parser.add_argument("--split", action="store_true", help="watershed split of touching cells")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"real data not found at {DATA}")

    folder, train_ids, test_ids = split(args.dataset, args.n_train, args.n_test, args.seed)
    images, masks = load(folder, train_ids)
    settings = {
        "batch_size": args.batch_size,
        "patch_size": args.patch_size,
        "learning_rate": args.lr,
        "optimizer": args.optimizer,
        "dice_weight": args.dice_weight,
        "base_channels": args.base_channels,
        "depth": args.depth,
        "elastic_sigma": args.elastic_sigma,
        "weighting": args.weighting,
        "validation": args.validation,
        "norm": None if args.norm == "none" else args.norm,
        "seed": args.seed,
        "scales": tuple(args.scales),
    }
    # calibrate: CPU seconds per step, so the step budget (and the learning-rate
    # schedule over it) does not depend on how busy the machine is
    if args.load:
        model = load_model(args.load)
        steps, train_cpu, train_wall = model.metadata.get("best_step"), 0.0, 0.0
    else:
        model, steps, train_cpu, train_wall = run_training(images, masks, settings, args)
    if args.save:
        save_model(args.save, model)
    net = TestTimeAugmentation(model) if args.tta else model

    test_images, test_masks = load(folder, test_ids)
    # the model's own threshold (picked on its validation image, if any) comes first
    own = suggested_threshold(model)
    thresholds = [own, *(t for t in args.thresholds if t != own)]
    variants = [(t, e) for t in thresholds for e in args.expand]
    scores: dict[tuple[float, int], list[tuple[float, float]]] = {v: [] for v in variants}
    for image, truth in zip(test_images, test_masks, strict=True):
        prob = predict_tiled(net, model.normalization(image), device="cpu")
        for threshold, expand in variants:
            pred = probabilities_to_labels(
                prob, threshold=threshold, expand=expand, split=args.split
            )
            f1 = float("nan") if args.dataset == "isbi" else instance_scores(truth, pred)[0].f1
            scores[threshold, expand].append((foreground_iou(truth > 0, pred), f1))
    for (threshold, expand), values in scores.items():
        iou, f1 = np.mean(np.array(values, float), axis=0)
        report = {
            "dataset": args.dataset,
            "model": args.load or "trained here",
            "threshold": threshold,
            "model_threshold": threshold == own,
            "expand": expand,
            **settings,
            "steps": steps,
            "tta": args.tta,
            "split": args.split,
            "train_cpu_s": round(train_cpu),
            "train_wall_s": round(train_wall),
            "train_images": len(train_ids),
            "test_images": len(test_ids),
            "foreground_iou": round(float(iou), 4),
            "f1@0.5": round(float(f1), 4),
        }
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
