"""The bundled nuclei model on the 100-image DSB split that pretraining never saw.

``zero-shot``: segment all 100 images with a model and no annotation; report
F1@0.5, mean matched IoU and the Cell Tracking Challenge SEG score.

``fine-tune``: the 5-image protocol of ``bench_training_quality.py`` (seeded
draw of 5 training and 20 test images) at equal CPU budgets, starting from a
model (``--from``, default the bundled one) or from scratch; also scores the
starting model zero-shot on the same 20 test images. ``--dev`` draws 5 + 15
images from the corpus images that pretraining held out instead, to choose
fine-tuning settings without looking at the 100.

``scale``: the images (and labels) zoomed by each ``--zooms`` factor, as if
taken at another magnification, segmented at the image's own scale and with
``diameter`` = the true median nucleus diameter.

``selection``: fine-tune with the default settings (5-minute budget) on
``--dev`` draws and score every validated checkpoint on the draw's test
images too; then replay the choice of the kept model for each ``--margins``
value (a checkpoint replaces the start only if its validation score beats
the start's by that margin) with and without early stopping. This chooses
``TrainConfig``'s margin without looking at the 100.

``dev``: choose post-processing (threshold, grow) on the corpus images that
pretraining held out (``train_pretrained.py --n-val``), never on the 100.

``bundle``: score a pretrained model file zero-shot, write its float16 copy
(with the scores in its metadata) into the package, and check that the copy
scores the same.

Usage::

    python benchmarks/bench_pretrained.py zero-shot --model nuclei
    python benchmarks/bench_pretrained.py fine-tune --from nuclei --cpu-seconds 60 120 \\
        --seeds 0 1 2
    python benchmarks/bench_pretrained.py fine-tune --from scratch --cpu-seconds 120
    python benchmarks/bench_pretrained.py scale --zooms 0.5 2 3 --n-images 20
    python benchmarks/bench_pretrained.py selection --seeds 0 1 2 3 4 5
    python benchmarks/bench_pretrained.py dev --model benchmarks/_out/pretrain/nuclei.pt
    python benchmarks/bench_pretrained.py bundle --model benchmarks/_out/pretrain/nuclei.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from bench_training_quality import DATA, calibrate, load, split

from napari_unet.core.checkpoint import load_model, save_model, suggested_threshold
from napari_unet.core.metrics import instance_scores, seg_score
from napari_unet.core.model import UNet
from napari_unet.core.postprocess import object_diameter, probabilities_to_labels
from napari_unet.core.pretrained import SCRATCH, model_file
from napari_unet.core.segment import PlaneDone, iter_segment
from napari_unet.core.tiling import predict_tiled
from napari_unet.core.training import TrainConfig, replaces_best, train

FEW_SHOT = DATA / "dsb2018_nuclei_train"
CORPUS = DATA / "dsb2018_nuclei_pretrain"


def score(model: UNet, images: list, masks: list, **segment: object) -> dict[str, float]:
    """Mean F1@0.5, mean matched IoU and SEG over images, with the model's threshold."""
    rows = []
    start = time.perf_counter()
    for image, truth in zip(images, masks, strict=True):
        labels = None
        for event in iter_segment(
            model, image, device="cpu", threshold=suggested_threshold(model), **segment
        ):
            if isinstance(event, PlaneDone):
                labels = event.labels
        match = instance_scores(truth, labels)[0]
        rows.append((match.f1, match.mean_matched_iou, seg_score(truth, labels)))
    f1, iou, seg = np.mean(np.array(rows), axis=0)
    return {
        "f1@0.5": round(float(f1), 4),
        "matched_iou": round(float(iou), 4),
        "seg": round(float(seg), 4),
        "images": len(images),
        "seconds_per_image": round((time.perf_counter() - start) / len(images), 2),
    }


def all_few_shot() -> tuple[list, list]:
    ids = sorted(p.stem for p in (FEW_SHOT / "images").glob("*.tif"))
    return load(FEW_SHOT, ids)


def zero_shot(args: argparse.Namespace) -> None:
    model = load_model(args.model)
    images, masks = all_few_shot()
    report = {"mode": "zero-shot", "model": args.model, **score(model, images, masks)}
    print(json.dumps(report), flush=True)


def draw(seed: int, dev: bool) -> tuple[list, list, list, list]:
    """5 training and their test images, of the 100 or (``dev``) of the corpus's held-out 20."""
    if dev:  # 5 + 15 of the corpus images that pretraining held out
        from train_pretrained import corpus_ids

        pool = corpus_ids(20, 0)[1]
        order = np.random.default_rng(seed).permutation(len(pool))
        folder, train_ids = CORPUS, [pool[i] for i in order[:5]]
        test_ids = [pool[i] for i in order[5:]]
    else:
        folder, train_ids, test_ids = split("dsb", 5, 20, seed)
    return (*load(folder, train_ids), *load(folder, test_ids))


def fine_tune(args: argparse.Namespace) -> None:
    start = None if args.from_model == SCRATCH else load_model(args.from_model)
    for seed in args.seeds:
        images, masks, test_images, test_masks = draw(seed, args.dev)
        if start is not None:
            base = score(start, test_images, test_masks)
            print(json.dumps({"mode": "zero-shot", "seed": seed, **base}), flush=True)
        for budget in args.cpu_seconds:
            settings = {"seed": seed}
            if args.lr is not None:
                settings["learning_rate"] = args.lr
            if args.freeze:
                settings["freeze"] = "encoder"
            steps = args.steps or calibrate(images, masks, settings, budget, model=start)
            config = TrainConfig(steps=steps, minutes=None, **settings)
            cpu = time.process_time()
            result = train(images, masks, model=start, config=config, device="cpu")
            report = {
                "mode": "fine-tune",
                "from": args.from_model,
                "seed": seed,
                "cpu_budget_s": budget,
                "train_cpu_s": round(time.process_time() - cpu),
                "steps": result.steps,
                "best_step": result.best_step,
                "learning_rate": result.model.metadata["training"]["learning_rate"],
                "freeze": config.freeze,
                "threshold": result.threshold,
                **score(result.model, test_images, test_masks),
            }
            print(json.dumps(report), flush=True)


def replay(trace: list[dict], margin: float, patience: int | None) -> dict:
    """The checkpoint that training keeps, given each validation's score, in order.

    ``trace[0]`` is the start; each later checkpoint is judged by the rule
    training uses (:func:`~napari_unet.core.training.replaces_best`).
    """
    best, stale = 0, 0
    for k, record in enumerate(trace[1:], start=1):
        current = trace[best]["score"]
        if replaces_best(record["score"], current, best_is_start=best == 0, margin=margin):
            best, stale = k, 0
        else:
            stale += 1
        if patience is not None and stale >= patience:
            break
    return trace[best]


def selection(args: argparse.Namespace) -> None:
    from napari_unet.core import training

    start = load_model(args.from_model)
    evaluate, paused = training.evaluate, 0.0
    trace: list[dict] = []

    def scored(net: UNet, val: list, **options: object) -> dict[str, float]:
        """The validation score, and (off the training clock) the test score."""
        nonlocal paused
        result = evaluate(net, val, **options)
        began = time.perf_counter()
        test = score(net, test_images, test_masks)
        trace.append({"score": result["score"], "f1@0.5": test["f1@0.5"], "seg": test["seg"]})
        paused += time.perf_counter() - began
        return result

    training.evaluate = scored
    training._clock = lambda: time.perf_counter() - paused
    runs = []
    for seed in args.seeds:
        images, masks, test_images, test_masks = draw(seed, dev=True)
        trace = []
        config = TrainConfig(
            seed=seed,
            patience=None,
            learning_rate=args.lr,
            freeze="encoder" if args.freeze else "none",
        )
        result = train(images, masks, model=start, config=config, device="cpu")
        print(json.dumps({"mode": "trace", "seed": seed, "steps": result.steps, "trace": trace}))
        runs.append(trace)
    for patience in (TrainConfig.patience, None):
        for margin in args.margins:
            kept = [replay(trace, margin, patience) for trace in runs]
            report = {"mode": "selection", "margin": margin, "patience": patience}
            for key in ("f1@0.5", "seg"):
                report[key] = round(float(np.mean([k[key] for k in kept])), 4)
                gain = [k[key] - trace[0][key] for k, trace in zip(kept, runs, strict=True)]
                report[f"{key} vs start"] = round(float(np.mean(gain)), 4)
                report[f"{key} worst"] = round(float(min(gain)), 4)
            starts = [trace[0] for trace in runs]
            report["replaced"] = sum(k is not s for k, s in zip(kept, starts, strict=True))
            print(json.dumps(report), flush=True)


def scale(args: argparse.Namespace) -> None:
    from skimage.transform import rescale

    model = load_model(args.model)
    images, masks = all_few_shot()
    images, masks = images[: args.n_images], masks[: args.n_images]
    for zoom in args.zooms:
        zoomed = [rescale(i.astype(np.float32), zoom, order=1) for i in images]
        labels = [
            rescale(m, zoom, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
            for m in masks
        ]
        for given in (False, True):  # given: each image's true median nucleus diameter
            rows = [
                score(model, [image], [truth], diameter=object_diameter(truth) if given else None)
                for image, truth in zip(zoomed, labels, strict=True)
            ]
            report = {
                "mode": "scale",
                "zoom": zoom,
                "median_diameter_px": round(object_diameter(labels), 1),
                "diameter_given": given,
            }
            for key in ("f1@0.5", "matched_iou", "seg"):
                report[key] = round(float(np.mean([r[key] for r in rows])), 4)
            print(json.dumps(report), flush=True)


def dev(args: argparse.Namespace) -> None:
    from train_pretrained import corpus_ids

    model = load_model(args.model)
    _, val_ids, _ = corpus_ids(args.n_val, args.seed)
    images, masks = load(CORPUS, val_ids)
    probs = [predict_tiled(model, model.normalization(image), device="cpu") for image in images]
    variants = [
        (t, e, w, g)
        for t in args.thresholds
        for e in args.expand
        for w in args.split
        for g in args.fill_gaps
    ]
    for threshold, expand, watershed, gaps in variants:
        rows = []
        for prob, truth in zip(probs, masks, strict=True):
            labels = probabilities_to_labels(
                prob, threshold=threshold, expand=expand, split=bool(watershed), fill_gaps=gaps
            )
            match = instance_scores(truth, labels)[0]
            rows.append((match.f1, match.mean_matched_iou, seg_score(truth, labels)))
        f1, iou, seg = np.mean(np.array(rows), axis=0)
        report = {"mode": "dev", "threshold": threshold, "expand": expand, "split": watershed}
        report["fill_gaps"] = gaps
        report |= {"f1@0.5": round(f1, 4), "matched_iou": round(iou, 4), "seg": round(seg, 4)}
        print(json.dumps(report), flush=True)


def bundle(args: argparse.Namespace) -> None:
    model = load_model(args.model)
    images, masks = all_few_shot()
    full = score(model, images, masks)
    print(json.dumps({"mode": "zero-shot", "storage": "float32", **full}), flush=True)
    ids = (CORPUS / "ids.txt").read_text().split()
    corpus = [tifffile.imread(CORPUS / "masks" / f"{i}.tif") for i in ids]  # masks only
    metadata = {
        "name": "nuclei",
        "diameter": object_diameter(corpus),
        "scores": {
            "dsb2018_nuclei_train (100 images, zero-shot)": full,
            "scored_by": "benchmarks/bench_pretrained.py bundle",
        },
    }
    out = model_file("nuclei") if args.out is None else Path(args.out)
    save_model(out, model, half=True, **metadata)
    half = score(load_model(out), images, masks)
    print(json.dumps({"mode": "zero-shot", "storage": "float16", **half}), flush=True)
    print(f"bundled -> {out} ({out.stat().st_size / 1e6:.1f} MB)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    z = sub.add_parser("zero-shot")
    z.add_argument("--model", default="nuclei", help="model file or bundled name")
    z.set_defaults(func=zero_shot)
    f = sub.add_parser("fine-tune")
    f.add_argument("--from", dest="from_model", default="nuclei", help="model, or 'scratch'")
    f.add_argument("--cpu-seconds", type=float, nargs="+", default=[60.0, 120.0, 300.0])
    f.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    f.add_argument("--steps", type=int, help="fixed steps instead of a calibrated CPU budget")
    f.add_argument("--lr", type=float, help="learning rate (default: TrainConfig's)")
    f.add_argument("--freeze", action="store_true", help="freeze the encoder")
    f.add_argument(
        "--dev",
        action="store_true",
        help="draw from the 20 corpus images pretraining held out (for choosing settings) "
        "instead of the 100-image split",
    )
    f.set_defaults(func=fine_tune)
    s = sub.add_parser("selection")
    s.add_argument("--from", dest="from_model", default="nuclei", help="model to fine-tune")
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    s.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.005, 0.01, 0.02, 0.03, 1.0])
    s.add_argument("--lr", type=float, help="learning rate (default: TrainConfig's)")
    s.add_argument("--freeze", action="store_true", help="freeze the encoder")
    s.set_defaults(func=selection)
    c = sub.add_parser("scale")
    c.add_argument("--model", default="nuclei", help="model file or bundled name")
    c.add_argument("--zooms", type=float, nargs="+", default=[0.5, 2.0, 3.0])
    c.add_argument("--n-images", type=int, default=20, help="the first N of the 100")
    c.set_defaults(func=scale)
    d = sub.add_parser("dev")
    d.add_argument("--model", required=True)
    d.add_argument("--n-val", type=int, default=20, help="as given to train_pretrained.py")
    d.add_argument("--seed", type=int, default=0, help="as given to train_pretrained.py")
    d.add_argument("--thresholds", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    d.add_argument("--expand", type=int, nargs="+", default=[0, 1, 2])
    d.add_argument("--split", type=int, nargs="+", default=[0, 1], help="watershed off/on")
    d.add_argument("--fill-gaps", type=int, nargs="+", default=[0], help="px between cells")
    d.set_defaults(func=dev)
    b = sub.add_parser("bundle")
    b.add_argument("--model", required=True, help="pretrained float32 model file")
    b.add_argument("--out", help="default: the package's bundled nuclei.pt")
    b.set_defaults(func=bundle)
    args = parser.parse_args()
    if not FEW_SHOT.is_dir():
        sys.exit(f"real data not found at {DATA}")
    args.func(args)


if __name__ == "__main__":
    main()
