"""``napari-unet`` command line: the plugin's jobs without a GUI.

Every job drains the same core generators as the widgets, shows a progress
bar on stderr and exits with status 2 and a one-line message on bad input.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tqdm import tqdm

import napari_unet
from napari_unet.core.config_help import option_help
from napari_unet.core.precision import PRECISION_HELP, PRECISIONS
from napari_unet.core.segment_config import SegmentConfig
from napari_unet.core.train_config import (
    FINE_TUNE_LEARNING_RATE,
    PRESETS,
    SCRATCH_LEARNING_RATE,
    TrainConfig,
)

logger = logging.getLogger("napari_unet")

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults, except None (the help then says what None means) and False flags."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _StopOnSignal:
    """First Ctrl-C or SIGTERM asks the job to stop at the next progress event; a second aborts.

    So an interrupt (or a cluster scheduler's SIGTERM) never lands in the
    middle of writing a plane.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, message: str = "") -> None:
        self.requested = False
        self.message = message
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.message:
            name = signal.Signals(signum).name
            # os.write, not print: the signal may land while tqdm is writing to the same
            # buffered stderr, and a buffered write from inside one raises RuntimeError
            text = f"\nnapari-unet: {name}: {self.message} (again to abort)\n"
            try:
                os.write(sys.stderr.fileno(), text.encode())
            except (AttributeError, OSError, ValueError):  # stderr is not a file (tests)
                sys.stderr.write(text)

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]


def _progress(total: int, desc: str, unit: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, delay=0.5)


def _clock_text(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _drain_training(jobs: Any) -> Any:
    """Run a training generator with a progress bar of its binding budget (time or steps)."""
    bar = tqdm(
        total=1000,
        file=sys.stderr,
        dynamic_ncols=True,
        delay=0.5,
        bar_format="train {percentage:3.0f}%|{bar}| {desc}",
    )
    with bar:
        while True:
            try:
                event = next(jobs)
            except StopIteration as done:
                bar.update(bar.total - bar.n)  # finished (final validation included)
                return done.value
            bar.update(int(event.fraction * 1000) - bar.n)
            info = (
                f"step {event.step} [{_clock_text(event.elapsed)}<{_clock_text(event.eta)}]"
                f" loss {event.loss:.3f}"
            )
            if event.best_score is not None:
                info += f" best {event.best_score:.3f}"
            bar.set_description_str(info, refresh=False)


def _input_axes(args: argparse.Namespace, path: str, ndim: int) -> str | None:
    """The axes of an input: ``--axes``, else from ``--channel-axis``, else from the file."""
    from napari_unet.core.axes import file_axes

    if args.axes:
        return str(args.axes)
    if args.channel_axis is not None:
        if not -ndim <= args.channel_axis < ndim:
            raise ValueError(f"--channel-axis {args.channel_axis} is out of range for {ndim}D")
        letters = ["C"] * ndim
        others = [i for i in range(ndim) if i != args.channel_axis % ndim]
        for i, letter in zip(others, "ZTPQRUVW"[: len(others) - 2] + "YX", strict=True):
            letters[i] = letter
        return "".join(letters)
    return file_axes(path)


def _read_input(args: argparse.Namespace, path: str, in_channels: int | None) -> Any:
    """Open an input image lazily with its axes arranged and its channels picked."""
    from napari_unet.core.axes import arrange
    from napari_unet.core.io import open_image

    image = open_image(path)
    axes = _input_axes(args, path, image.ndim)
    return arrange(image, axes, in_channels=in_channels, channels=args.channels, name=path)


# ---------------------------------------------------------------------------
# predict


def _cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.io import PlaneWriter, check_output_path
    from napari_unet.core.large_plane import STREAM_PIXELS, PlaneWritten, iter_write_large
    from napari_unet.core.segment import PlaneDone, iter_segment
    from napari_unet.core.tiling import as_channels_first
    from napari_unet.core.uncertainty import uncertainty_map

    check_output_path(args.output, overwrite=args.overwrite)
    if args.probabilities:
        check_output_path(args.probabilities, overwrite=args.overwrite)
        if Path(args.probabilities).resolve() == Path(args.output).resolve():
            raise ValueError("--probabilities must differ from OUTPUT")
    if args.uncertainty:
        check_output_path(args.uncertainty, overwrite=args.overwrite)
        others = [args.output, *([args.probabilities] if args.probabilities else [])]
        if any(Path(args.uncertainty).resolve() == Path(o).resolve() for o in others):
            raise ValueError("--uncertainty must differ from OUTPUT and --probabilities")
    model = load_model(args.model)
    image = _read_input(args, args.input, model.in_channels)
    _, lead, _ = as_channels_first(image, model.in_channels)
    shape = (*lead, *image.shape[-2:])
    n_planes = int(np.prod(lead))
    config = SegmentConfig.from_options(**{**vars(args), "link": args.link != "none"})
    options = config.segment_kwargs(model)
    mask = options["output"] == "mask"
    if args.link != "none" and len(lead) != 1:
        raise ValueError(
            f"--link {args.link} needs a stack with one {args.link.upper()} axis before the "
            f"planes; INPUT has shape {tuple(image.shape)}"
        )
    large = shape[-1] * shape[-2] > STREAM_PIXELS
    if large and config.link:
        raise ValueError(
            f"--link is not supported for planes of more than {STREAM_PIXELS} pixels "
            f"(INPUT planes are {shape[-2]} x {shape[-1]})"
        )
    if large and config.diameter is not None:
        raise ValueError(
            f"--diameter is not supported for planes of more than {STREAM_PIXELS} pixels "
            f"(INPUT planes are {shape[-2]} x {shape[-1]}): rescale the image instead"
        )
    if large and args.uncertainty:
        raise ValueError(
            f"--uncertainty is not supported for planes of more than {STREAM_PIXELS} pixels "
            f"(INPUT planes are {shape[-2]} x {shape[-1]}): use --probabilities and "
            "napari_unet.core.uncertainty_map on crops instead"
        )
    with ExitStack() as stack:
        labels_out = stack.enter_context(
            PlaneWriter(
                args.output, shape, np.uint8 if mask else np.uint32, overwrite=args.overwrite
            )
        )
        prob_out = None
        if args.probabilities:
            prob_out = stack.enter_context(
                PlaneWriter(
                    args.probabilities,
                    (*lead, model.n_classes, *shape[-2:]),
                    np.float32,
                    plane_ndim=3,
                    overwrite=args.overwrite,
                )
            )
        uncertainty_out = None
        if args.uncertainty:  # from the same probabilities as the labels: no second pass
            uncertainty_out = stack.enter_context(
                PlaneWriter(args.uncertainty, shape, np.float32, overwrite=args.overwrite)
            )
        bar = stack.enter_context(_progress(0, "predict", "step"))
        stop = stack.enter_context(_StopOnSignal())
        run = {
            "tile_size": args.tile_size,
            "batch_size": args.batch_size,
            "device": args.device,
            "precision": args.precision,
        }
        if large:  # tile by tile: memory bounded by a few tiles, not by the plane
            for name in ("diameter", "link", "link_iou", "link_bridge", "link_min_planes"):
                del options[name]
            jobs: Any = iter_write_large(model, image, labels_out, prob_out, **run, **options)
        else:
            jobs = iter_segment(model, image, **run, **options)
        cells = 0
        try:
            for event in jobs:
                if isinstance(event, PlaneDone | PlaneWritten):
                    if isinstance(event, PlaneDone):
                        labels_out.write(event.labels)
                        if prob_out is not None:
                            prob_out.write(event.probabilities)
                        if uncertainty_out is not None:
                            uncertainty_out.write(uncertainty_map(event.probabilities))
                    cells += event.n_objects
                    # no refresh of its own: a bar shown before its delay would not end
                    # its line when closed, and an error message would follow on it
                    bar.set_postfix(
                        planes=f"{event.plane + 1}/{n_planes}", cells=cells, refresh=False
                    )
                    if stop.requested:
                        raise KeyboardInterrupt
                    continue
                if event.message:
                    bar.write(f"napari-unet: {event.message}", file=sys.stderr)
                bar.total = event.total
                bar.update(event.done - bar.n)
                if stop.requested:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            jobs.close()
            written = labels_out.written
            kept = labels_out.close(keep=True)
            if prob_out is not None:
                prob_out.close(keep=True)
            if uncertainty_out is not None:
                uncertainty_out.close(keep=True)
            bar.close()
            untouched = f"; {args.output} is untouched" if Path(args.output).exists() else ""
            print(
                f"napari-unet: interrupted after {written} of {n_planes} planes; partial "
                f"output kept in {kept} (remaining planes are 0){untouched}",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
    found = "binary mask (1 = foreground)" if mask else f"{cells} cells"
    print(f"napari-unet: {found} in {n_planes} plane(s) -> {args.output}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------
# weightmap


def _cmd_weightmap(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_unet.core.annotations import Annotation
    from napari_unet.core.io import PlaneWriter, check_output_path, open_image, read_array
    from napari_unet.core.train_config import TrainConfig

    defaults = TrainConfig()  # the map training uses with these settings
    weighting = args.weighting or defaults.weighting
    w0 = defaults.w0 if args.w0 is None else args.w0
    sigma = defaults.sigma if args.sigma is None else args.sigma
    check_output_path(args.output, overwrite=args.overwrite)
    labels = open_image(args.labels)
    if labels.ndim < 2:
        raise ValueError(f"LABELS must be at least 2D, got shape {labels.shape}")
    lead = tuple(labels.shape[:-2])
    with (
        PlaneWriter(args.output, labels.shape, np.float32, overwrite=args.overwrite) as out,
        _progress(int(np.prod(lead)), "weightmap", "plane") as bar,
    ):
        for index in np.ndindex(*lead):
            plane = read_array(labels, index, args.labels)
            # every plane counts as fully annotated: the map training uses for it
            targets = Annotation(plane).targets(None, weighting=weighting, w0=w0, sigma=sigma)
            out.write(targets.weights)
            bar.update()
    print(f"napari-unet: weight map -> {args.output}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------
# train


def _read_pairs(
    args: argparse.Namespace, images: list[str], labels: list[str]
) -> tuple[list, list]:
    """Read image/label files in order; stacks contribute each plane with cells."""
    from napari_unet.core.annotations import Annotation
    from napari_unet.core.io import open_image, read_array

    if len(images) != len(labels):
        raise ValueError(
            f"got {len(images)} --image but {len(labels)} --labels; they pair in order"
        )
    crops_img, crops_lab = [], []
    for image_path, labels_path in zip(images, labels, strict=True):
        image = read_array(_read_input(args, image_path, None), name=image_path)
        lab = read_array(open_image(labels_path), name=labels_path)
        if lab.ndim not in (2, 3):
            raise ValueError(
                f"{labels_path} must be a 2D label image or a stack of them (3D), got "
                f"{lab.ndim}D shape {lab.shape}"
            )
        if image.shape[-2:] != lab.shape[-2:]:
            raise ValueError(
                f"{labels_path} planes are {lab.shape[-2:]} but {image_path} planes are "
                f"{image.shape[-2:]}"
            )
        channels = image.ndim == lab.ndim + 1
        crops = Annotation(lab).crops(image, channel_axis=-3 if channels else None)
        if not crops:
            raise ValueError(f"{labels_path} has no labelled cells (all 0)")
        crops_img += [c.image for c in crops]
        crops_lab += [c.labels for c in crops]
    return crops_img, crops_lab


def _bundled_names() -> str:
    from napari_unet.core.pretrained import available_names

    return available_names()


def _task(args: argparse.Namespace, labels: list) -> tuple[str, str]:
    """The task to train for (``--task``, else detected from the labels) and a line saying so."""
    from napari_unet.core.tasks import check_task, detect_task

    if args.task != "auto":
        return check_task(args.task), f"napari-unet: task: {args.task} (--task)"
    choice = detect_task(labels)
    doubt = "" if choice.certain else "; check it"
    return choice.task, (
        f"napari-unet: task: {choice.task} (from the labels: {choice.reason}{doubt}); "
        "--task to change"
    )


def _starting_model(args: argparse.Namespace, task: str, channels: int) -> tuple[Any, str]:
    """The model ``train`` fine-tunes (None: a new one) and a line saying which and why."""
    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.pretrained import SCRATCH, default_start

    start = args.from_model
    if start is not None:
        return (None if start == SCRATCH else load_model(start)), ""
    if args.base_channels is not None or args.depth is not None:
        start, why = SCRATCH, "architecture options given"
    else:
        start = default_start(task, channels) or SCRATCH
        why = f"task {task}" if channels == 1 else f"the images have {channels} channels"
    what = "a new model" if start == SCRATCH else f"from the bundled '{start}' model"
    says = f"napari-unet: training {what} ({why}); --from MODEL or --from scratch to change"
    return (None if start == SCRATCH else load_model(start)), says


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from napari_unet.core.tasks import task_config
    from napari_unet.core.training import MULTI_SCALE, iter_train

    out = Path(args.out)
    if out.suffix.lower() != ".pt":
        raise ValueError(f"--out must be a .pt model file, got {out}")
    if not out.parent.exists():
        raise ValueError(f"output folder does not exist: {out.parent}")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if not os.access(out.parent, os.W_OK):
        raise PermissionError(f"cannot write to the output folder {out.parent}")
    if args.minutes is not None and args.minutes < 0:
        raise ValueError(f"--minutes must be >= 0 (0 = no time limit), got {args.minutes}")
    images, labels = _read_pairs(args, args.image, args.labels)
    val_images, val_labels = _read_pairs(args, args.validation_image, args.validation_labels)
    task, says = _task(args, labels)
    channels = 1 if images[0].ndim == 2 else images[0].shape[0]
    model, start_says = _starting_model(args, task, channels)
    print("\n".join(filter(None, [says, start_says])), file=sys.stderr)
    config = task_config(
        task,
        len(images),
        steps=args.steps,
        minutes=args.minutes or None,
        seed=args.seed,
        batch_size=args.batch_size,
        patch_size=args.patch_size,
        learning_rate=args.lr,
        base_channels=args.base_channels,
        depth=args.depth,
        weighting=args.weighting,
        w0=args.w0,
        sigma=args.sigma,
        scales=MULTI_SCALE if args.scale_augment else None,
        mixed_precision=False if args.float32 else None,
        validation="none" if args.no_validation else None,
        validate_every=args.validate_every,
    )
    config = dataclasses.replace(
        config,
        minutes=None if args.minutes == 0 else config.minutes,
        norm=None if args.norm == "none" else config.norm,
        validate_every=min(config.validate_every, config.steps),
    )
    with _StopOnSignal("stopping after this step, keeping the best model") as stop:
        jobs = iter_train(
            images,
            labels,
            model=model,
            config=config,
            device=args.device,
            checkpoint=out,
            validation_images=val_images,
            validation_labels=val_labels,
            should_stop=lambda: stop.requested,
        )
        result = _drain_training(jobs)
    score = (
        ""
        if result.best_score is None
        else f", validation score {result.best_score:.3f} at threshold {result.threshold:.2f}"
    )
    print(
        f"napari-unet: trained {result.steps} steps in {result.elapsed:.0f} s "
        f"({result.stopped}); best model (step {result.best_step}{score}) -> {out}",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED if stop.requested else 0


# ---------------------------------------------------------------------------
# demo


def _cmd_demo(args: argparse.Namespace) -> int:
    import tifffile

    from napari_unet.core.annotations import Annotation, Rectangle
    from napari_unet.core.checkpoint import save_model, suggested_threshold
    from napari_unet.core.io import check_output_path
    from napari_unet.core.metrics import instance_scores, seg_score
    from napari_unet.core.pretrained import DEFAULT_PRETRAINED, load_pretrained
    from napari_unet.core.segment import PlaneDone, iter_segment
    from napari_unet.core.training import TrainConfig, iter_train

    if args.gui:
        return _demo_gui()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path, labels_path = out / "demo_model.pt", out / "demo_labels.tif"
    for path in (model_path, labels_path):
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    check_output_path(labels_path, overwrite=True)
    data = Path(__file__).parent / "_data"
    image = tifffile.imread(data / "nuclei.tif")
    truth = tifffile.imread(data / "nuclei_masks.tif")
    half = image.shape[1] // 2
    unseen = (slice(None), slice(half, None))
    model = load_pretrained(DEFAULT_PRETRAINED)

    def segment_and_score(net: Any, what: str) -> Any:
        labels = None
        for event in iter_segment(
            net, image, device=args.device, threshold=suggested_threshold(net)
        ):
            if isinstance(event, PlaneDone):
                labels = event.labels
        assert labels is not None
        scores = instance_scores(truth[unseen], labels[unseen])[0]
        print(
            f"napari-unet demo: {what}: on the unseen right half F1@0.5 {scores.f1:.3f}, "
            f"SEG {seg_score(truth[unseen], labels[unseen]):.3f}, "
            f"{int(labels.max())} cells in the whole image",
            file=sys.stderr,
        )
        return labels

    print(
        f"napari-unet demo: {image.shape[1]}x{image.shape[0]} nuclei image (DSB 2018, CC0, "
        f"not used to pretrain); 1) the bundled '{DEFAULT_PRETRAINED}' model with no "
        f"annotation, 2) fine-tuned on the annotated left half for {args.minutes:g} min",
        file=sys.stderr,
    )
    segment_and_score(model, "zero-shot (bundled model)")
    left = Rectangle(None, 0, image.shape[0], 0, half)  # annotated; the right half is unseen
    crops = Annotation(truth, rectangles=(left,)).crops(image)
    config = TrainConfig(steps=args.steps, minutes=args.minutes)
    jobs = iter_train(
        [c.image for c in crops],
        [c.labels for c in crops],
        model=model,
        config=config,
        device=args.device,
    )
    result = _drain_training(jobs)
    save_model(model_path, result.model, demo=True)
    labels = segment_and_score(result.model, f"fine-tuned ({result.steps} steps)")
    tifffile.imwrite(labels_path, labels, compression="zlib")
    print(
        f"  model  -> {model_path}\n  labels -> {labels_path}\n"
        f"  view:  napari {data / 'nuclei.tif'} {labels_path}",
        file=sys.stderr,
    )
    return 0


def _demo_gui() -> int:
    from napari_unet._widgets.demo import run_demo_viewer

    run_demo_viewer()
    return 0


# ---------------------------------------------------------------------------
# export


def _cmd_export(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_unet.core.bioimageio import check_package, export_bioimageio
    from napari_unet.core.checkpoint import load_model
    from napari_unet.core.tiling import as_channels_first

    if Path(args.output).suffix.lower() != ".zip":
        raise ValueError(f"OUT must be a .zip file, got {args.output}")
    if Path(args.output).exists() and not args.overwrite:
        raise ValueError(f"{args.output} exists (--overwrite to replace it)")
    model = load_model(args.model)
    sample = None
    if args.sample:
        image = _read_input(args, args.sample, model.in_channels)
        image, lead, _ = as_channels_first(image, model.in_channels)
        sample = np.asarray(image[(0,) * len(lead)])
    name = args.name or f"napari-unet {Path(args.model).stem}"
    try:
        path = export_bioimageio(
            model,
            args.output,
            name=name,
            sample=sample,
            authors=args.author,
            license=args.license,
        )
    except ImportError as err:
        raise ValueError(str(err)) from None
    print(f"napari-unet: bioimage.io package -> {path}", file=sys.stderr)
    if args.no_check:
        return 0
    check = check_package(path)
    if not check.passed:
        for line in check.failures:
            print(f"  failed: {line}", file=sys.stderr)
        print("napari-unet: bioimage.io model test: FAILED", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("napari-unet: bioimage.io model test (bioimageio.core): passed", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------
# parser


def _add_axes_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--axes",
        help="axes of the image, one letter each (e.g. YXC, CYX, ZCYX; C or S = channels, "
        "the last two others are Y and X; default: from the file)",
    )
    parser.add_argument(
        "--channel-axis", type=int, help="the image's channel axis (instead of --axes)"
    )
    parser.add_argument(
        "--channels",
        type=lambda text: [int(c) for c in text.split(",")],
        help="channels to use, e.g. 1 or 0,2 (a 1-channel model needs one)",
    )


def _train_help(name: str, summary: str | None = None) -> str:
    """Help for a training option: what it does and its default, from :class:`TrainConfig`."""
    return option_help(TrainConfig, name, summary=summary, presets=PRESETS)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``napari-unet`` command."""
    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="Few-shot U-Net cell segmentation (Ronneberger et al. 2015).",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=napari_unet.__version__)
    parser.add_argument(
        "--traceback", action="store_true", help="show full tracebacks instead of one-line errors"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "predict",
        help="segment a 2D image or a stack with a trained model",
        description="Segment INPUT (2D image or stack; TIFF or zarr) plane by plane with "
        "overlap-tile inference and write instance labels (uint32) to OUTPUT; a model "
        "trained for membranes writes its binary mask (uint8, 1 = interior) instead.",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="model file (.pt) from `napari-unet train`, or a bundled model's name "
        f"({_bundled_names()})",
    )
    p.add_argument("input", metavar="INPUT", help="image: .tif/.tiff or .zarr")
    p.add_argument("output", metavar="OUTPUT", help="labels: .tif/.tiff or .zarr")
    p.add_argument("--probabilities", metavar="PROB", help="also write class probabilities here")
    p.add_argument(
        "--uncertainty",
        metavar="UNC",
        help="also write a per-pixel uncertainty map here (float32 in [0, 1], one plane per "
        "labels plane, from the same probabilities as the labels): the normalised entropy of "
        "the foreground probability, 1 where it is 0.5, 0 where it is 0 or 1; with --tta it "
        "also rises where the 8 views disagree. High values mark where annotating helps most "
        "(napari_unet.core.next_region finds the most uncertain unannotated window). Not for "
        "planes above 2048 x 2048 pixels",
    )
    p.add_argument(
        "--tile-size", type=int, help="input tile edge in pixels (default: from memory)"
    )
    p.add_argument("--batch-size", type=int, help="tiles per forward pass (default: auto)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help=PRECISION_HELP,
    )
    p.add_argument(
        "--threshold",
        type=float,
        help="foreground probability cut (default: the model's, chosen on validation "
        "images in training, else 0.5)",
    )
    p.add_argument(
        "--diameter",
        type=float,
        help="typical object diameter in INPUT (px): the image is rescaled so objects have "
        "the size the model was trained on (default: no rescaling)",
    )
    p.add_argument(
        "--min-size",
        type=int,
        help=option_help(SegmentConfig, "min_size", summary="remove smaller objects (pixels)"),
    )
    p.add_argument("--split", action="store_true", help="watershed-split touching cells")
    p.add_argument("--expand", type=int, help=option_help(SegmentConfig, "expand"))
    p.add_argument(
        "--fill-gaps",
        type=int,
        help="give touching cells back up to this many pixels each of the gap between them "
        "(default: 1 for cells, 0 for membranes)",
    )
    p.add_argument(
        "--regions",
        action="store_true",
        help="membranes models: write the connected regions (uint32 ids) instead of the mask",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average 8 flips/rotations (8x slower)",
    )
    p.add_argument(
        "--link",
        choices=["none", "z", "t"],
        default="none",
        help="give a cell one id through a Z-stack or a time-lapse (overlap matching of each "
        "plane with the previous one; no divisions, no motion model), or ids unique per plane",
    )
    p.add_argument("--link-iou", type=float, help=option_help(SegmentConfig, "link_iou"))
    p.add_argument("--link-bridge", type=int, help=option_help(SegmentConfig, "link_bridge"))
    p.add_argument(
        "--link-min-planes", type=int, help=option_help(SegmentConfig, "link_min_planes")
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _add_axes_options(p)
    p.set_defaults(func=_cmd_predict)

    w = sub.add_parser(
        "weightmap",
        help="compute the loss weights training uses for instance labels",
        description="The weight map training uses, plane by plane: touching cells are "
        "separated, then w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / (2 sigma^2)) (paper eq. 2; "
        "w_c = 1 with the default border weighting, class balance with --weighting unet).",
        formatter_class=_Formatter,
    )
    w.add_argument(
        "labels", metavar="LABELS", help="instance labels (.tif or .zarr), 0 = background"
    )
    w.add_argument("output", metavar="OUT", help="weight map (.tif or .zarr), float32")
    w.add_argument("--w0", type=float, help=_train_help("w0", "border weight"))
    w.add_argument("--sigma", type=float, help=_train_help("sigma", "border width (px)"))
    w.add_argument(
        "--weighting",
        choices=["border", "unet", "balanced", "none"],
        help="as in train (default: training's, border: the paper's border term on "
        "uniform class weights, touching cells separated first)",
    )
    w.add_argument("--overwrite", action="store_true", help="replace an existing output")
    w.set_defaults(func=_cmd_weightmap)

    t = sub.add_parser(
        "train",
        help="train or fine-tune a U-Net on a few annotated images",
        description="Train on image/label pairs (they pair in order; labels are instance "
        "ids with 0 = background, or binary masks; in stacks every plane with cells is used). "
        "The best model is saved to OUT whenever it improves; Ctrl-C stops and keeps it.",
        formatter_class=_Formatter,
    )
    t.add_argument("--image", action="append", required=True, help="training image (repeat)")
    t.add_argument("--labels", action="append", required=True, help="its labels (repeat)")
    t.add_argument("--out", required=True, metavar="MODEL", help="model file to write (.pt)")
    t.add_argument(
        "--from",
        dest="from_model",
        metavar="MODEL",
        help="fine-tune this model file or bundled model; 'scratch' trains a new one "
        "(default: the bundled 'nuclei' model for the cells task on single-channel images, "
        "else scratch)",
    )
    t.add_argument(
        "--task",
        choices=["auto", "cells", "membranes"],
        default="auto",
        help="cells / nuclei (instance labels; instance output) or membranes / regions "
        "(a binary mask with a thin background network such as EM membranes; mask "
        "output); auto: detected from the labels",
    )
    t.add_argument(
        "--minutes",
        type=float,
        help=_train_help("minutes", "wall-time budget, final validation included; 0 = no limit"),
    )
    t.add_argument(
        "--steps", type=int, help=_train_help("steps", "most optimisation steps (a cap)")
    )
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    t.add_argument(
        "--base-channels",
        type=int,
        help=_train_help(
            "base_channels", "channels of the first level of a new model (implies --from scratch)"
        ),
    )
    t.add_argument(
        "--depth",
        type=int,
        help=_train_help("depth", "poolings of a new model (implies --from scratch)"),
    )
    t.add_argument("--batch-size", type=int, help=_train_help("batch_size"))
    t.add_argument(
        "--patch-size", type=int, help=_train_help("patch_size", "input patch edge (px)")
    )
    t.add_argument(
        "--lr",
        type=float,
        help=f"initial learning rate (Adam; default: {SCRATCH_LEARNING_RATE:g} from scratch, "
        f"{FINE_TUNE_LEARNING_RATE:g} when fine-tuning)",
    )
    t.add_argument(
        "--weighting",
        choices=["border", "unet", "balanced", "none"],
        help=_train_help(
            "weighting",
            "loss weights: the paper's border term, its full weight map (class balance + "
            "border term), class balance only, or none",
        ),
    )
    t.add_argument(
        "--norm",
        choices=["batch", "none"],
        help=_train_help("norm", "normalization layers of a new model (none = the paper's)"),
    )
    t.add_argument(
        "--scale-augment",
        action="store_true",
        help="also train on the images zoomed 0.5x-1.41x (when the images to segment "
        "have other magnifications than the annotated ones)",
    )
    t.add_argument(
        "--float32",
        action="store_true",
        help="no mixed precision (by default bfloat16/float16 autocast on CUDA and on CPUs "
        "with native bfloat16)",
    )
    t.add_argument("--w0", type=float, help=_train_help("w0", "weight-map border weight"))
    t.add_argument(
        "--sigma", type=float, help=_train_help("sigma", "weight-map border width (px)")
    )
    t.add_argument(
        "--validation-image",
        action="append",
        default=[],
        help="validation image (repeat); default: hold out the far fifth of every --image",
    )
    t.add_argument("--validation-labels", action="append", default=[], help="its labels")
    t.add_argument("--validate-every", type=int, help=_train_help("validate_every"))
    t.add_argument(
        "--no-validation",
        action="store_true",
        help="train on every image (the default for membranes with <= 2 images)",
    )
    t.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    _add_axes_options(t)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser(
        "export",
        help="write a model as a bioimage.io model package (.zip)",
        description="Write MODEL as a bioimage.io model package (format 0.5) that "
        "deepImageJ, ilastik, QuPath, BiaPy and bioimageio.core run without napari-unet "
        "(torchscript weights), and that napari-unet opens as a model. The package's "
        "test tensors come from --sample (default: the bundled nuclei image); then "
        "bioimageio.core's model test runs on it. Needs the export extra: "
        "pip install 'napari-unet-paper[export]'.",
        formatter_class=_Formatter,
    )
    e.add_argument("model", metavar="MODEL", help=f"model file (.pt) or {_bundled_names()}")
    e.add_argument("output", metavar="OUT", help="the package to write (.zip)")
    e.add_argument("--name", help="the model's name in the package (default: from MODEL)")
    e.add_argument(
        "--sample", help="an image of yours for the test tensors and the cover (TIFF/zarr)"
    )
    e.add_argument(
        "--author", action="append", default=[], help="an author (repeat; default: login)"
    )
    e.add_argument("--license", default="CC-BY-4.0", help="SPDX license of the weights")
    e.add_argument(
        "--no-check", action="store_true", help="skip bioimageio.core's model test (~20 s)"
    )
    e.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    _add_axes_options(e)
    e.set_defaults(func=_cmd_export)

    d = sub.add_parser(
        "demo",
        help="segment the bundled nuclei image zero-shot, fine-tune on half of it, compare",
        description="The whole loop on the bundled sample (DSB 2018 nuclei, CC0): segment it "
        "with the bundled model (no annotation), fine-tune that model on the annotated left "
        "half, segment again; both are scored on the unseen right half. With --gui, open "
        "napari with the sample, an annotation and the plugin's widgets instead.",
        formatter_class=_Formatter,
    )
    d.add_argument("--out", default="napari-unet-demo", help="folder for the model and labels")
    d.add_argument("--minutes", type=float, default=1.0, help="fine-tuning time budget")
    d.add_argument("--steps", type=int, default=10_000, help="training step budget")
    d.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    d.add_argument("--gui", action="store_true", help="open napari with the widgets instead")
    d.add_argument("--overwrite", action="store_true", help="replace earlier demo outputs")
    d.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``napari-unet`` command; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="napari-unet: %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("napari-unet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as err:
        if args.traceback:
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"napari-unet {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
