"""What a new user gets: the plain CLI commands, no flags, on the shared real data.

Runs exactly ``napari-unet train --image A.tif --labels A_masks.tif [...] --out
m.pt`` (a separate process, so its CPU time is measured alone) and then
``napari-unet predict m.pt IMAGE OUT.tif`` on every test image, and scores
the written labels:

- ``isbi``: ISBI 2012 EM, trained on slices 00 and 01, scored on slices 10-29
  (cell-interior IoU of the written mask, mean over slices);
- ``dsb``: the 5-image protocol of ``bench_training_quality.py`` on the
  100-image DSB split (seeded draw of 5 training and 20 test images): F1@0.5,
  mean matched IoU and the Cell Tracking Challenge SEG score, mean over images.

Nothing here was used to choose a default: the DSB 100-image split is never
read by pretraining or by the settings studies, which use the corpus images
that pretraining held out (``bench_pretrained.py dev``). The membranes preset
comes from the ISBI studies of sessions 2-4 (docs/benchmarks.md), which
looked at slices 10-29 too: the ISBI numbers are not from unseen data. Run
on an idle machine: the time budget is wall time. Usage::

    python benchmarks/bench_defaults.py isbi dsb --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from bench_training_quality import DATA, load, split

from napari_unet.cli import main as cli
from napari_unet.core.metrics import foreground_iou, instance_scores, seg_score


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


#: Extra ``train`` flags (``--train-flags``, for a quick check of this script);
#: empty for the reported runs.
FLAGS: list[str] = []


def train(folder: Path, images: list, masks: list) -> tuple[Path, dict]:
    """``napari-unet train`` with no flags on these pairs; its steps, wall and CPU time."""
    argv = [sys.executable, "-m", "napari_unet.cli", "train"]
    for k, (image, mask) in enumerate(zip(images, masks, strict=True)):
        tifffile.imwrite(folder / f"train_{k}.tif", image)
        tifffile.imwrite(folder / f"train_{k}_masks.tif", mask)
        argv += ["--image", str(folder / f"train_{k}.tif")]
        argv += ["--labels", str(folder / f"train_{k}_masks.tif")]
    model = folder / "model.pt"
    cpu, wall = children_cpu(), time.perf_counter()
    done = subprocess.run([*argv, "--out", str(model), *FLAGS], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"train failed:\n{done.stderr}")
    said = done.stderr.replace("\r", "\n")
    steps = re.search(r"trained (\d+) steps", said)
    task = re.search(r"task: (\w+)", said)
    start = re.search(r"training (a new model|from the bundled '\w+' model)", said)
    return model, {
        "flags": " ".join(FLAGS),
        "task": task.group(1) if task else None,
        "start": start.group(1) if start else None,
        "steps": int(steps.group(1)) if steps else None,
        "train_wall_s": round(time.perf_counter() - wall, 1),
        "train_cpu_s": round(children_cpu() - cpu),
    }


def predict(folder: Path, model: Path, image: np.ndarray, name: str) -> np.ndarray:
    """``napari-unet predict MODEL IMAGE OUT.tif`` with no flags; the written labels."""
    source, out = folder / f"{name}.tif", folder / f"{name}_labels.tif"
    tifffile.imwrite(source, image)
    if cli(["predict", str(model), str(source), str(out), "--overwrite"]):
        sys.exit(f"predict failed on {name}")
    return tifffile.imread(out)


def isbi() -> dict:
    folder, train_ids, test_ids = split("isbi", 2, 20, 0)
    images, masks = load(folder, train_ids)
    test_images, test_masks = load(folder, test_ids)
    with tempfile.TemporaryDirectory() as tmp:
        model, report = train(Path(tmp), images, masks)
        out = predict(Path(tmp), model, np.stack(test_images), "test")
    ious = [foreground_iou(t > 0, o > 0) for t, o in zip(test_masks, out, strict=True)]
    return {
        "dataset": "isbi",
        "train": train_ids,
        "test": f"{test_ids[0]}-{test_ids[-1]}",
        **report,
        "cell_iou": round(float(np.mean(ious)), 4),
    }


def dsb(seed: int) -> dict:
    folder, train_ids, test_ids = split("dsb", 5, 20, seed)
    images, masks = load(folder, train_ids)
    test_images, test_masks = load(folder, test_ids)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model, report = train(Path(tmp), images, masks)
        for k, (image, truth) in enumerate(zip(test_images, test_masks, strict=True)):
            labels = predict(Path(tmp), model, image, f"test_{k}")
            match = instance_scores(truth, labels)[0]
            rows.append((match.f1, match.mean_matched_iou, seg_score(truth, labels)))
    f1, iou, seg = np.mean(np.array(rows), axis=0)
    return {
        "dataset": "dsb",
        "seed": seed,
        **report,
        "f1@0.5": round(float(f1), 4),
        "matched_iou": round(float(iou), 4),
        "seg": round(float(seg), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", choices=["isbi", "dsb"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="DSB draws")
    parser.add_argument("--train-flags", default="", help="only to check this script quickly")
    args = parser.parse_args()
    FLAGS.extend(args.train_flags.split())
    if not DATA.is_dir():
        sys.exit(f"real data not found at {DATA}")
    for dataset in args.datasets:
        for report in [isbi()] if dataset == "isbi" else (dsb(s) for s in args.seeds):
            print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
