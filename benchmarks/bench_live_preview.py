"""Live preview while training: how much it slows training, how soon the first one comes.

On the DSB 2018 5-image protocol of ``bench_training_quality.py`` (seeded draw
of 5 training images from the 100-image split), trains the default network
(:class:`~napari_unet.core.TrainConfig` defaults, from scratch, no validation)
for ``--seconds`` of wall time twice: without a preview, and with a
:class:`~napari_unet.core.preview.LivePreview` of a whole unseen test image
(capped at ``PREVIEW_MAX_SIZE``) on the default schedule. It prints the
training steps/s of both (counted from the end of the first step, so the
set-up is left out), the slowdown, the previews made and their share of the
time, and the time from the start of ``iter_train`` to the first preview.

``--gui`` also measures, in napari (needs a display; Xvfb works), the time
from clicking Train (the widget's defaults: fine-tuning the bundled model on
the 5 images) to the first preview on screen.

Run on an idle machine (the numbers are wall time)::

    python benchmarks/bench_live_preview.py --seconds 60
    xvfb-run -a python benchmarks/bench_live_preview.py --seconds 60 --gui
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from bench_training_quality import load, split  # this folder is on sys.path when run

from napari_unet.core.preview import (
    PREVIEW_BUDGET,
    PREVIEW_INTERVAL,
    PREVIEW_MAX_SIZE,
    LivePreview,
    PreviewUpdate,
)
from napari_unet.core.training import TrainConfig, iter_train


def preview_image(images: list[np.ndarray]) -> np.ndarray:
    """The first image whose sides both reach the preview cap, else the largest one."""
    big = [im for im in images if min(im.shape[:2]) >= PREVIEW_MAX_SIZE]
    return big[0] if big else max(images, key=lambda im: im.shape[0] * im.shape[1])


def run(
    images: list, masks: list, shown: np.ndarray | None, seconds: float, seed: int, device: str
) -> dict:
    """Train for ``seconds`` after the first step; with a preview of ``shown`` if given."""
    config = TrainConfig(steps=10**6, minutes=None, validation="none", seed=seed)
    preview = None
    if shown is not None:
        preview = LivePreview(shown, channel_axis=-1 if shown.ndim == 3 else None)
        preview.set_window((), slice(0, shown.shape[0]), slice(0, shown.shape[1]))
    start = time.perf_counter()
    jobs = iter_train(images, masks, config=config, device=device, preview=preview)
    first_step = first_preview = None
    steps, spent, now = 0, [], start
    for event in jobs:
        now = time.perf_counter()
        if isinstance(event, PreviewUpdate):
            spent.append(event.seconds)
            first_preview = first_preview or now - start
            continue
        if first_step is None:
            first_step = now
            report = {"first_step_s": round(now - start, 2)}
            continue
        steps = event.step - 1
        if now - first_step >= seconds:
            break
    jobs.close()
    assert first_step is not None
    wall = now - first_step
    report["steps"] = steps
    report["steps_per_s"] = round(steps / wall, 4)
    if preview is not None:
        report["previews"] = len(spent)
        report["preview_mean_s"] = round(float(np.mean(spent)), 3) if spent else None
        report["preview_share"] = round(sum(spent) / (now - start), 4)
        report["first_preview_s"] = round(first_preview, 2) if first_preview else None
        window = preview.window
        assert window is not None
        report["window"] = [
            window.rows.stop - window.rows.start,
            window.cols.stop - window.cols.start,
        ]
    return report


def gui_first_preview(images: list, masks: list) -> dict:
    """Seconds from clicking Train (widget defaults) to the first preview on screen."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_unet._widgets._session import annotation_info

    viewer = napari.Viewer()
    for k, (image, mask) in enumerate(zip(images, masks, strict=True)):
        viewer.add_image(image, name=f"dsb {k}", visible=k == 0)
        labels = viewer.add_labels(mask, name=f"dsb {k} annotations", visible=k == 0)
        annotation_info(labels)["image"] = f"dsb {k}"
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-paper", "3. Train")
    widget.labels_layer.value = viewer.layers["dsb 0 annotations"]
    widget.all_layers.value = True
    widget.minutes.value = 0.0  # the steps or the Stop below end it
    for _ in range(50):
        QApplication.processEvents()
        time.sleep(0.01)
    start = time.perf_counter()
    widget.train_button.clicked.emit()
    shown = None
    while widget.is_running:
        QApplication.processEvents()
        if shown is None and widget.previews_shown:
            shown = time.perf_counter() - start
            widget.stop()
        time.sleep(0.002)
    start_from = widget.picker.description()
    viewer.close()
    return {"gui_start": start_from, "gui_first_preview_s": round(shown or 0, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="training time of each run")
    parser.add_argument("--seed", type=int, default=0, help="the draw of the 5 images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gui", action="store_true", help="also time the first preview in napari")
    args = parser.parse_args()

    folder, train_ids, test_ids = split("dsb", 5, 20, args.seed)
    images, masks = load(folder, train_ids)
    shown = preview_image(load(folder, test_ids)[0])
    print(
        f"DSB 5 images (seed {args.seed}), torch threads {torch.get_num_threads()}, "
        f"preview every >= {PREVIEW_INTERVAL} s within {PREVIEW_BUDGET:.0%} of the time, "
        f"window <= {PREVIEW_MAX_SIZE} px, {args.seconds:g} s each",
        flush=True,
    )
    off = run(images, masks, None, args.seconds, args.seed, args.device)
    print(json.dumps({"preview": "off", **off}), flush=True)
    on = run(images, masks, shown, args.seconds, args.seed, args.device)
    print(json.dumps({"preview": "on", **on}), flush=True)
    slowdown = 1 - on["steps_per_s"] / off["steps_per_s"]
    summary = {"slowdown": round(slowdown, 4), "first_preview_s": on["first_preview_s"]}
    if args.gui:
        summary.update(gui_first_preview(images, masks))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
