"""Train the bundled nuclei model on the DSB 2018 pretraining corpus (CPU, resumable).

The corpus is ``../shared/data/dsb2018_nuclei_pretrain`` (389 fluorescence
images, 16.5k nuclei, CC0). A seeded share of it is held out to pick each
stage's best model and its threshold; the 100-image few-shot split
(``dsb2018_nuclei_train``) is never read here: it is where the model is scored
(``bench_pretrained.py``).

Training runs in stages (cosine decay with warm restarts at a lower rate);
each stage starts from the previous one's best model and writes
``OUT/stage_<k>.pt`` and a line in ``OUT/log.jsonl``, so a killed run resumes
at the first unfinished stage when started again with the same arguments::

    nohup python benchmarks/train_pretrained.py --out benchmarks/_out/pretrain \\
        > benchmarks/_out/pretrain.log 2>&1 &

The final model is ``OUT/nuclei.pt`` (float32, with its provenance: this
script, its arguments, the corpus ids' sha256 and every stage's validation
scores). ``bench_pretrained.py bundle`` scores it on the 100-image split and
writes the float16 copy that the package ships.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_unet.core.checkpoint import load_model, save_model
from napari_unet.core.training import MULTI_SCALE, TrainConfig, iter_train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018_nuclei_pretrain"


def corpus_ids(n_val: int, seed: int) -> tuple[list[str], list[str], str]:
    """Training ids, validation ids and the sha256 of the sorted corpus ids."""
    ids = sorted((DATA / "ids.txt").read_text().split())
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val, digest


def read(ids: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images = [tifffile.imread(DATA / "images" / f"{i}.tif") for i in ids]
    masks = [tifffile.imread(DATA / "masks" / f"{i}.tif") for i in ids]
    return images, masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for stages, log and nuclei.pt")
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--steps-per-stage", type=int, default=2500)
    parser.add_argument("--lr", type=float, default=1e-3, help="first stage's learning rate")
    parser.add_argument("--lr-decay", type=float, default=0.5, help="rate factor per stage")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--patch-size", type=int, default=380)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--n-val", type=int, default=20, help="corpus images held out")
    parser.add_argument("--validate-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"pretraining corpus not found at {DATA}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train_ids, val_ids, digest = corpus_ids(args.n_val, args.seed)
    images, masks = read(train_ids)
    val_images, val_masks = read(val_ids)
    print(
        f"{len(train_ids)} training and {len(val_ids)} validation images "
        f"({sum(int(m.max()) for m in masks)} training nuclei)",
        flush=True,
    )
    model = None
    log = out / "log.jsonl"
    history = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for stage in range(args.stages):
        path = out / f"stage_{stage}.pt"
        if path.exists():
            model = load_model(path)
            print(f"stage {stage}: done before, resuming from {path}", flush=True)
            continue
        config = TrainConfig(
            steps=args.steps_per_stage,
            minutes=None,
            batch_size=args.batch_size,
            patch_size=args.patch_size,
            learning_rate=args.lr * args.lr_decay**stage,
            base_channels=args.base_channels,
            scales=MULTI_SCALE,
            validate_every=args.validate_every,
            patience=None,
            seed=args.seed + stage,
        )
        start, cpu = time.perf_counter(), time.process_time()
        jobs = iter_train(
            images,
            masks,
            model=model,
            config=config,
            device="cpu",
            checkpoint=out / f"stage_{stage}.partial.pt",
            validation_images=val_images,
            validation_labels=val_masks,
        )
        while True:
            try:
                event = next(jobs)
            except StopIteration as done:
                result = done.value
                break
            if event.validation or event.step % 100 == 0:
                extra = f" val {json.dumps(event.validation)}" if event.validation else ""
                print(
                    f"stage {stage} step {event.step} loss {event.loss:.3f} "
                    f"{time.perf_counter() - start:.0f}s{extra}",
                    flush=True,
                )
        model = result.model
        record = {
            "stage": stage,
            "steps": result.steps,
            "best_step": result.best_step,
            "best_score": result.best_score,
            "threshold": result.threshold,
            "wall_s": round(time.perf_counter() - start),
            "cpu_s": round(time.process_time() - cpu),
            "learning_rate": config.learning_rate,
        }
        history.append(record)
        save_model(path, model)
        (out / f"stage_{stage}.partial.pt").unlink(missing_ok=True)
        with log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)

    assert model is not None
    provenance = {
        "script": "benchmarks/train_pretrained.py",
        "arguments": {k: v for k, v in vars(args).items() if k != "out"},
        "data": "dsb2018_nuclei_pretrain (DSB 2018 stage1_train, CC0)",
        "data_ids_sha256": digest,
        "n_train_images": len(train_ids),
        "n_validation_images": len(val_ids),
        "stages": history,
    }
    final = save_model(out / "nuclei.pt", model, pretraining=provenance)
    print(f"final model -> {final}", flush=True)


if __name__ == "__main__":
    main()
