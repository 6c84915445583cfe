"""One prepared check of the GPU path, for whenever a CUDA machine is available.

It prints the environment, then one line per measurement as it goes (stdout is
line-buffered, so a run cut short keeps them), then one markdown table of them all
and one JSON line (``{"gpu_check": {"env": ..., "rows": [...]}}``). Every section
finishes even if another fails: a failed case is a row holding its error.

1. ``tiled``: :func:`~napari_unet.core.tiling.predict_tiled` with the paper's valid
   U-Net (base 16, 32, 64) on a 4096 x 4096 random image in float32, bfloat16 and
   float16 (tiles and batch chosen automatically once, then used for a warm-up run
   and the timed run): MP/s, and each reduced precision's max abs difference from
   float32 and share of pixels whose foreground (class 1 > 0.5) changes. float32 is
   PyTorch's default, in which cuDNN convolutions use TF32. A random network on a
   random image puts many pixels near 0.5, so the changed share is an upper bound.
2. ``monai``: MONAI ``sliding_window_inference`` (roi 1024, overlap 0.25, gaussian
   blending, the batch size our engine picks for that tile) over the same network
   made same-size (:class:`~napari_unet.core.bioimageio.PackagedUNet`), in float32
   and bfloat16 autocast; the differences are from our float32 result.
3. ``oom fallback``: a real CUDA out-of-memory error on a 12288 x 12288 image, base
   16. A ballast tensor leaves free half of what one 3260-px tile needs (measured),
   then 16 such tiles are asked for in one batch; the engine halves the batch, then
   the tile, then would move to the CPU. The row lists what it did and checks that
   the result equals a run with automatic tiles and all the memory to 1e-4 (IEEE
   float32: TF32 off for both runs).
4. ``training``: 200 steps of :func:`~napari_unet.core.training.iter_train` (the
   default TrainConfig with mixed precision, no validation) on 4 synthetic
   512 x 512 images of touching disks: steps/s (from the end of the first step),
   patches/s, first and last loss (the mean over the last tenth of the steps must
   be below that over the first tenth) and the peak CUDA memory.

It downloads nothing; MONAI is a benchmark-only dependency (``pip install monai``;
its row says skipped without it). It is sized to finish well within 8 minutes on
one H200. Run it on the CUDA machine and put its table in docs/benchmarks.md::

    python benchmarks/gpu_check.py > gpu_check.txt

``--quick`` (a 512-px image, base 16, 10 training steps) checks the script end to
end; ``--device cpu --quick`` runs it on a machine without CUDA (the out-of-memory
section is skipped there), where ``--device cuda`` (the default) says so and exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from napari_unet.core.bioimageio import PackagedUNet
from napari_unet.core.device import autocast_dtype, inference_dtype, precision_name
from napari_unet.core.model import UNet
from napari_unet.core.predictor import NetworkPredictor, tile_for_core, tile_overhead
from napari_unet.core.tiling import (
    auto_batch_size,
    auto_tile_size,
    iter_predict_tiled,
    plan_tiles,
    predict_tiled,
)
from napari_unet.core.training import TrainConfig, TrainProgress, iter_train

PRECISIONS = ("float32", "bfloat16", "float16")
FULL = {"size": 4096, "bases": [16, 32, 64], "steps": 200}
QUICK = {"size": 512, "bases": [16], "steps": 10}
#: The out-of-memory image: 4 x 4 tiles of 3072-px cores, one batch of 16 tiles.
OOM_SIDE, OOM_TILES_PER_SIDE, OOM_BATCH = 12288, 4, 16
TOLERANCE = 1e-4
GIB = 1024**3


@dataclasses.dataclass
class Row:
    """One measurement (a line of the final table)."""

    section: str
    case: str
    precision: str = ""
    value: float | None = None
    unit: str = ""
    max_diff: float | None = None
    fg_changed: float | None = None
    notes: str = ""

    def cells(self) -> list[str]:
        speed = "–" if self.value is None else f"{self.value:.4g} {self.unit}"
        diff = "–" if self.max_diff is None else f"{self.max_diff:.2e}"
        changed = "–" if self.fg_changed is None else f"{self.fg_changed:.4%}"
        return [self.section, self.case, self.precision, speed, diff, changed, self.notes]


def sig(x: float) -> float:
    """``x`` to 4 significant digits (for the table and the JSON line)."""
    return float(f"{x:.4g}")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def release(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def network(base: int, dev: torch.device) -> UNet:
    torch.manual_seed(0)
    return UNet(base_channels=base).to(dev).eval()


def random_image(size: int) -> np.ndarray:
    return np.random.default_rng(0).random((size, size), dtype=np.float32)


def compare(prob: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Max abs difference and share of pixels whose foreground (class 1 > 0.5) changes."""
    diff = float(np.abs(prob - reference).max())
    changed = float(np.mean((prob[1] > 0.5) != (reference[1] > 0.5)))
    return sig(diff), sig(changed)


def run_job(job: Generator[Any, None, Any]) -> tuple[Any, list[Any]]:
    """Run a core job to its end: its result and its progress events."""
    events = []
    while True:
        try:
            events.append(next(job))
        except StopIteration as stop:
            return stop.value, events


def timed(dev: torch.device, work: Callable[[], Any]) -> tuple[Any, float]:
    """``work()`` once to warm up, then once timed: its result and seconds."""
    work()
    sync(dev)
    start = time.perf_counter()
    result = work()
    sync(dev)
    return result, time.perf_counter() - start


Measured = tuple[Row, Any]


def guarded(section: str, case: str, precision: str, measure: Callable[[], Measured]) -> Measured:
    """``measure()`` (a row and what else it returns), or a row holding its error and None."""
    try:
        return measure()
    except Exception as err:  # every section finishes: a failure is a row
        message = (str(err).strip().splitlines() or [""])[0][:200]
        return Row(section, case, precision, notes=f"error: {type(err).__name__}: {message}"), None


def report(row: Row) -> Row:
    print(f"[{row.section}] " + " | ".join(row.cells()[1:]))
    return row


def stage(name: str, start: float) -> None:
    print(f"--- {name} (at {time.perf_counter() - start:.0f} s)")


@contextmanager
def without_tf32() -> Iterator[None]:
    """cuDNN convolutions in IEEE float32 inside the block."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


# ---------------------------------------------------------------------------
# the sections


def environment(dev: torch.device) -> dict[str, Any]:
    """Print and return what the numbers depend on."""
    try:
        import monai

        monai_version = monai.__version__
    except ImportError:
        monai_version = "not installed"
    memory = psutil.virtual_memory()
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "host_ram_gib": round(memory.total / GIB, 1),
        "monai": monai_version,
        "device": str(dev),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        free, total = torch.cuda.mem_get_info(dev)
        env |= {
            "gpu": props.name,
            "gpu_memory_gib": round(total / GIB, 1),
            "gpu_free_gib": round(free / GIB, 1),
            "bf16": torch.cuda.is_bf16_supported(),
            "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        }
    for key, value in env.items():
        print(f"{key}: {value}")
    return env


def tiled_case(model: UNet, image: np.ndarray, dev: torch.device, precision: str) -> Measured:
    """Section 1, one case: its row (without differences) and its probabilities."""
    plan = plan_tiles(model, image.shape, auto_tile_size(model, dev))
    batch = auto_batch_size(model, dev, plan.tile)
    # the automatic choice of a fresh call, passed to both runs: the memory the
    # warm-up leaves cached would shrink the timed run's automatic batch
    kwargs = {"tile_size": plan.tile, "batch_size": batch, "device": dev, "precision": precision}
    prob, seconds = timed(dev, lambda: predict_tiled(model, image, **kwargs))
    case = f"base {model.config.base_channels}"
    row = Row("tiled", case, precision, sig(image.size / 1e6 / seconds), "MP/s")
    row.notes = f"{len(plan.origins)} tiles of {plan.tile[0]} px, batch {batch}"
    return row, prob


def tiled(
    models: dict[int, UNet], image: np.ndarray, dev: torch.device
) -> tuple[list[Row], dict[int, np.ndarray]]:
    """Section 1: its rows, and each base's float32 probabilities (the reference)."""
    rows, references = [], {}
    for base, model in models.items():
        for precision in PRECISIONS:
            measure = partial(tiled_case, model, image, dev, precision)
            row, prob = guarded("tiled", f"base {base}", precision, measure)
            if prob is not None and precision == "float32":
                references[base] = prob
                row.notes += "; the reference"
            elif prob is not None and base in references:
                row.max_diff, row.fg_changed = compare(prob, references[base])
            rows.append(report(row))
            release(dev)
    return rows, references


def monai_case(
    model: UNet, image: np.ndarray, dev: torch.device, precision: str, roi: int
) -> Measured:
    """Section 2, one case: its row (without differences) and its probabilities."""
    from monai.inferers import sliding_window_inference

    packaged = PackagedUNet(**model.config.to_dict())
    packaged.net.load_state_dict(model.state_dict())
    packaged = packaged.to(dev).eval()
    batch = auto_batch_size(model, dev, (roi + tile_overhead(model),) * 2)
    dtype = inference_dtype(precision, dev)

    def run() -> np.ndarray:
        autocast = torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None)
        with torch.inference_mode(), autocast:
            x = torch.from_numpy(image)[None, None].to(dev)
            prob = sliding_window_inference(x, roi, batch, packaged, overlap=0.25, mode="gaussian")
        return prob[0].float().cpu().numpy()

    prob, seconds = timed(dev, run)
    case = f"base {model.config.base_channels}"
    row = Row("monai", case, precision, sig(image.size / 1e6 / seconds), "MP/s")
    row.notes = f"roi {roi}, overlap 0.25, gaussian, sw_batch {batch}"
    return row, prob


def monai_rows(
    models: dict[int, UNet],
    image: np.ndarray,
    dev: torch.device,
    roi: int,
    references: dict[int, np.ndarray],
) -> list[Row]:
    """Section 2: its rows (differences from our float32 result)."""
    if importlib.util.find_spec("monai") is None:
        return [report(Row("monai", "all", notes="monai not installed: skipped"))]
    roi = min(roi, image.shape[0] // 16 * 16)
    rows = []
    for base, model in models.items():
        for precision in PRECISIONS[:2]:
            measure = partial(monai_case, model, image, dev, precision, roi)
            row, prob = guarded("monai", f"base {base}", precision, measure)
            if prob is not None and base in references:
                row.max_diff, row.fg_changed = compare(prob, references[base])
            rows.append(report(row))
            release(dev)
    return rows


def forward_peak(model: UNet, dev: torch.device, tile: int) -> int:
    """Peak CUDA bytes of one float32 forward pass over a tile of ``tile`` px."""
    predictor = NetworkPredictor(model, dev, "float32")
    release(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    start = torch.cuda.memory_allocated(dev)
    predictor(np.zeros((1, 1, tile, tile), np.float32))
    return torch.cuda.max_memory_allocated(dev) - start


def oom_fallback(dev: torch.device) -> Measured:
    """Section 3."""
    case = f"base 16, {OOM_SIDE} px"
    if dev.type != "cuda":
        return Row("oom fallback", case, "float32", notes="skipped: needs a CUDA device"), None
    model = network(16, dev)
    image = random_image(OOM_SIDE)
    tile = tile_for_core(model, OOM_SIDE // OOM_TILES_PER_SIDE)
    with without_tf32():
        need = forward_peak(model, dev, tile)
        reference = predict_tiled(model, image, device=dev, precision="float32")
        release(dev)
        free = torch.cuda.mem_get_info(dev)[0]
        ballast = torch.empty(max(free - need // 2, 0), dtype=torch.uint8, device=dev)
        left = torch.cuda.mem_get_info(dev)[0]
        try:
            start = time.perf_counter()
            job = iter_predict_tiled(
                model,
                image,
                tile_size=tile,
                batch_size=OOM_BATCH,
                device=dev,
                precision="float32",
            )
            prob, events = run_job(job)
            seconds = time.perf_counter() - start
        finally:
            del ballast
            release(dev)
    messages = [e.message.removeprefix("out of GPU memory: ") for e in events if e.message]
    diff, changed = compare(prob, reference)
    ok = bool(messages) and diff <= TOLERANCE
    notes = (
        f"{'PASS' if ok else 'FAIL'}: {len(messages)} fallback step(s): "
        f"{' / '.join(messages) or 'no out-of-memory error'}; one {tile}-px tile needs "
        f"{need / GIB:.2f} GiB ({need / tile**2:.0f} B/px), {left / GIB:.2f} GiB were free, "
        f"asked for {OOM_BATCH}; vs automatic tiles, tolerance {TOLERANCE:g}"
    )
    speed = sig(image.size / 1e6 / seconds)
    return Row("oom fallback", case, "float32", speed, "MP/s", diff, changed, notes), None


def disk_images(n_images: int, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Noisy images of touching disks and their labels (the tests' synthetic data)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from synthetic import image_of, touching_disks

    labels = [touching_disks((size, size), n=250, radius=(8, 16), seed=s) for s in range(n_images)]
    return [image_of(lab, seed=s) for s, lab in enumerate(labels)], labels


def training(dev: torch.device, steps: int) -> Measured:
    """Section 4."""
    images, labels = disk_images(4, 512)
    config = TrainConfig(steps=steps, minutes=None, validation="none", mixed_precision=True)
    precision = precision_name(autocast_dtype(dev))
    if dev.type == "cuda":
        release(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    _result, events = run_job(iter_train(images, labels, config=config, device=dev))
    progress = [e for e in events if isinstance(e, TrainProgress)]
    losses = [e.loss for e in progress]
    # from the end of the first step: its set-up and warm-up are not counted
    rate = (len(progress) - 1) / (progress[-1].elapsed - progress[0].elapsed)
    tenth = max(2, len(losses) // 10)
    early, late = np.mean(losses[:tenth]), np.mean(losses[-tenth:])
    peak = (
        f"peak CUDA memory {torch.cuda.max_memory_allocated(dev) / GIB:.2f} GiB"
        if dev.type == "cuda"
        else "peak CUDA memory n/a"
    )
    notes = (
        f"{'PASS' if late < early else 'FAIL'}: loss {losses[0]:.4f} -> {losses[-1]:.4f} "
        f"(mean of first / last {tenth}: {early:.4f} -> {late:.4f}); "
        f"{rate * config.batch_size:.3g} patches/s ({config.batch_size} x "
        f"{config.patch_size} px); {peak}"
    )
    case = f"base 16, {len(progress)} steps"
    return Row("training", case, precision, sig(rate), "steps/s", notes=notes), None


# ---------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    header = ["section", "case", "precision", "speed", "max abs diff", "fg changed", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * 3 + "---|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: an end-to-end check")
    parser.add_argument("--size", type=int, help="image edge (4096; quick 512)")
    parser.add_argument("--bases", type=int, nargs="+", help="base channels (16 32 64)")
    parser.add_argument("--steps", type=int, help="training steps (200; quick 10)")
    parser.add_argument("--roi", type=int, default=1024, help="MONAI window edge")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    sys.stdout.reconfigure(line_buffering=True)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: nothing measured (use --device cpu to run on the CPU)")
        return
    start = time.perf_counter()
    env = environment(dev)
    models = {base: network(base, dev) for base in args.bases}
    image = random_image(args.size)
    print(f"image {args.size} x {args.size}, bases {args.bases}, {args.steps} training steps")
    stage("tiled", start)
    rows, references = tiled(models, image, dev)
    stage("monai", start)
    rows += monai_rows(models, image, dev, args.roi, references)
    del references  # a few GiB of host memory
    release(dev)
    stage("oom fallback", start)
    row, _ = guarded(
        "oom fallback", f"base 16, {OOM_SIDE} px", "float32", partial(oom_fallback, dev)
    )
    rows.append(report(row))
    stage("training", start)
    row, _ = guarded("training", "base 16", "", partial(training, dev, args.steps))
    rows.append(report(row))
    print(f"\ntotal {time.perf_counter() - start:.0f} s on {env.get('gpu', 'the CPU')}\n")
    print(table(rows))
    print(
        "\nmax abs diff and fg changed: vs our float32 tiled result of the same base (oom "
        "fallback: vs a run with automatic tiles); speeds after one warm-up run\n"
    )
    summary = {"env": env, "size": args.size, "rows": [dataclasses.asdict(r) for r in rows]}
    print(json.dumps({"gpu_check": summary}))


if __name__ == "__main__":
    main()
