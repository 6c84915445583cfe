"""Fine-tune a U-Net on a few annotated images.

:func:`iter_train` is a generator: it yields a :class:`TrainProgress` after
every optimisation step (with validation scores whenever validation runs) and
returns a :class:`TrainResult` holding the best model. Stopping is
cooperative (``should_stop``, a time budget, early stopping) and still returns
the best model; every improvement is written to ``checkpoint`` atomically.
Given a :class:`~napari_unet.core.preview.LivePreview`, it also yields a
:class:`~napari_unet.core.preview.PreviewUpdate` (the window segmented with the
current weights) between steps whenever the preview's schedule allows one.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from napari_unet.core.background import made_ahead
from napari_unet.core.checkpoint import save_model, suggested_threshold
from napari_unet.core.dataset import (
    PatchSampler,
    Sample,
    as_instances,
    prepare_sample,
    rescale_annotation,
)
from napari_unet.core.device import (
    autocast_dtype,
    inference_dtype,
    move_to,
    precision_name,
    select_device,
)
from napari_unet.core.losses import weighted_cross_entropy
from napari_unet.core.metrics import f1_at, foreground_iou
from napari_unet.core.model import UNet
from napari_unet.core.postprocess import (
    foreground_probability,
    object_diameter,
    probabilities_to_labels,
)
from napari_unet.core.preview import LivePreview, PreviewUpdate
from napari_unet.core.progress import run_to_end
from napari_unet.core.segment_config import SegmentConfig
from napari_unet.core.tiling import predict_tiled
from napari_unet.core.train_config import (  # re-exported: the public names of training
    FINE_TUNE_LEARNING_RATE,
    MULTI_SCALE,
    SCRATCH_LEARNING_RATE,
    TrainConfig,
    validation_interval,
)

__all__ = [
    "CANDIDATE_THRESHOLDS",
    "FINE_TUNE_LEARNING_RATE",
    "MULTI_SCALE",
    "SCRATCH_LEARNING_RATE",
    "VALIDATION_SHARE",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "evaluate",
    "iter_train",
    "replaces_best",
    "train",
    "validation_band",
    "validation_image",
    "validation_interval",
]

logger = logging.getLogger(__name__)

#: Share of each annotated image held out for validation (``validation="auto"``).
VALIDATION_SHARE = 0.2

#: Foreground thresholds tried on validation images when none is given.
CANDIDATE_THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(11))


@dataclass(frozen=True)
class TrainProgress:
    """Progress event yielded after every optimisation step.

    ``validation`` holds ``{"iou": ..., "f1": ..., "score": ...}`` on steps
    where validation ran, else None; ``eta`` is in seconds. ``fraction`` is
    the share of the binding budget spent (the time budget or the step cap,
    whichever ends training first), for progress bars.
    """

    step: int
    total_steps: int
    loss: float
    learning_rate: float
    elapsed: float
    eta: float
    validation: dict[str, float] | None = None
    best_score: float | None = None
    improved: bool = False
    fraction: float = 0.0


@dataclass
class TrainResult:
    """What training returns: the best model and the history.

    ``stopped`` says what ended training: ``"steps"``, ``"time"``, ``"early"``
    (no improvement for ``patience`` validations), ``"stopped"`` (asked to) or
    ``"diverged"`` (the loss became NaN or infinite; the best model before it
    is returned).
    """

    model: UNet
    best_step: int
    best_score: float | None
    steps: int
    elapsed: float
    stopped: str
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    threshold: float = 0.5


@dataclass
class _ValImage:
    image: np.ndarray
    instances: np.ndarray
    known: np.ndarray


def validation_band(
    labels: ArrayLike, mask: ArrayLike | None = None, *, share: float = VALIDATION_SHARE
) -> tuple[np.ndarray, np.ndarray] | None:
    """Split an annotated region into a training part and a validation band.

    The band runs across the image's longer axis at its end and holds about
    ``share`` of the annotated pixels, so every annotated image still trains
    on the rest and is scored on data it did not learn from.

    Parameters
    ----------
    labels : array of shape (M, N)
        Instance labels (0 = background).
    mask : bool array of shape (M, N), optional
        Annotated region (None = the whole image).
    share : float
        Fraction of the annotated pixels in the band.

    Returns
    -------
    (train, band) : pair of bool arrays of shape (M, N), or None
        None when either part would hold no cell.

    Examples
    --------
    >>> labels = np.zeros((10, 4), int); labels[1, 1] = 1; labels[9, 2] = 2
    >>> train, band = validation_band(labels)
    >>> int(train.sum()), int(band.sum())
    (32, 8)
    """
    cells = np.asarray(labels) > 0
    known = np.ones(cells.shape, bool) if mask is None else np.asarray(mask, bool)
    if known.shape != cells.shape or cells.ndim != 2:
        raise ValueError(
            f"`labels` must be 2D and `mask` of the same shape, got {cells.shape} and "
            f"{known.shape}"
        )
    axis = 0 if cells.shape[0] >= cells.shape[1] else 1
    per_line = np.cumsum(known.sum(axis=1 - axis))
    cut = int(np.searchsorted(per_line, (1 - share) * per_line[-1], side="right"))
    band = np.zeros(cells.shape, bool)
    if axis == 0:
        band[cut:] = True
    else:
        band[:, cut:] = True
    band &= known
    train = known & ~band
    if not cells[train].any() or not cells[band].any():
        return None
    return train, band


def _as_list(items: Sequence[Any] | None, n: int, name: str) -> list[Any]:
    if items is None:
        return [None] * n
    items = list(items)
    if len(items) != n:
        raise ValueError(f"got {n} images but {len(items)} {name}")
    return items


def validation_image(
    image: ArrayLike, labels: ArrayLike, mask: ArrayLike | None, model: UNet
) -> _ValImage:
    """Prepare one validation example for :func:`evaluate`, as ``model`` sees its input.

    The image is normalized with the model's settings and cropped to the
    annotated (``mask``) pixels plus the network's context around them.

    Parameters
    ----------
    image : array of shape (M, N) or (C, M, N)
        Raw image.
    labels : array of shape (M, N)
        Instance labels (0 = background).
    mask : bool array of shape (M, N), optional
        The pixels to score (None = all).
    model : UNet
        The model to be scored (its channels, normalization and margin).
    """
    sample = prepare_sample(
        image,
        labels,
        mask,
        in_channels=model.in_channels,
        normalization=model.normalization,
        weighting="none",
        separate=False,
    )
    known = sample.known
    # keep the annotated region and the context the network needs around it
    rows, cols = (np.flatnonzero(known.any(axis=a)) for a in (1, 0))
    crop = tuple(
        slice(max(idx[0] - model.margin, 0), idx[-1] + 1 + model.margin) for idx in (rows, cols)
    )
    # prepare_sample already set the labels outside the annotated region to 0
    return _ValImage(sample.image[(slice(None), *crop)], sample.labels[crop], known[crop])


def evaluate(
    model: UNet,
    images: Sequence[_ValImage],
    *,
    device: torch.device | str = "cpu",
    thresholds: Sequence[float] = (0.5,),
    min_size: int = 16,
) -> dict[str, float]:
    """Mean foreground IoU and instance F1 at IoU 0.5 over validation images.

    Every threshold in ``thresholds`` is tried on the same probabilities; the
    scores of the best one (mean of IoU and F1; ties go to the threshold
    nearest 0.5) are returned with ``"threshold"``.
    """
    foregrounds = []  # predicted once, thresholded many times
    for val in images:
        image = val.image[0] if model.in_channels == 1 else val.image
        foregrounds.append(foreground_probability(predict_tiled(model, image, device=device)))
    best: dict[str, float] = {}
    for threshold in sorted(thresholds, key=lambda t: (abs(t - 0.5), t)):
        ious, f1s = [], []
        for val, fg in zip(images, foregrounds, strict=True):
            pred = probabilities_to_labels(fg, threshold=threshold, min_size=min_size)
            pred = np.where(val.known, pred, 0)
            ious.append(foreground_iou(val.instances, pred, mask=val.known))
            f1s.append(f1_at(val.instances, pred))
        iou, f1 = float(np.mean(ious)), float(np.mean(f1s))
        if not best or (iou + f1) / 2 > best["score"]:
            best = {"iou": iou, "f1": f1, "score": (iou + f1) / 2, "threshold": threshold}
    return best


def _training_samples(
    images: list[Any], labels: list[Any], masks: list[Any], net: UNet, config: TrainConfig
) -> tuple[list[Sample], list[float]]:
    """Samples of every image at every zoom in ``config.scales``, and their draw weights.

    A zoomed copy left without cells (tiny cells shrunk away) is skipped; each
    zoom is drawn equally often (weight 1 / zoom**2 per pixel).
    """
    samples, weights = [], []
    for image, label, mask in zip(images, labels, masks, strict=True):
        for zoom in config.scales:
            zoomed, cells, region = rescale_annotation(image, label, mask, zoom)
            if zoom != 1.0 and not np.any(cells if region is None else cells[region]):
                continue
            sample = prepare_sample(
                zoomed,
                cells,
                region,
                in_channels=net.in_channels,
                normalization=net.normalization,
                weighting=config.weighting,
                w0=config.w0,
                sigma=config.sigma,
            )
            samples.append(sample)
            weights.append(1 / zoom**2)
    return samples, weights


#: The clock that time budgets are measured with (tests replace it).
_clock = time.perf_counter


def _learning_rate(base: float, progress: float) -> float:
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def replaces_best(
    score: float, best_score: float | None, *, best_is_start: bool, margin: float
) -> bool:
    """Whether a checkpoint with validation ``score`` replaces the best one so far.

    The starting model of a fine-tune (``best_is_start``) is replaced only by
    a score more than ``margin`` above its own; any other best by a higher one.
    """
    if best_score is None:
        return True
    return score > best_score + (margin if best_is_start else 0.0)


def iter_train(
    images: Sequence[ArrayLike],
    labels: Sequence[ArrayLike],
    *,
    masks: Sequence[ArrayLike | None] | None = None,
    model: UNet | None = None,
    config: TrainConfig | None = None,
    device: str | torch.device | None = "auto",
    checkpoint: str | Path | None = None,
    validation_images: Sequence[ArrayLike] = (),
    validation_labels: Sequence[ArrayLike] = (),
    should_stop: Callable[[], bool] | None = None,
    preview: LivePreview | None = None,
) -> Generator[TrainProgress | PreviewUpdate, None, TrainResult]:
    """Train (or fine-tune) a U-Net on a few annotated images.

    Parameters
    ----------
    images : sequence of arrays of shape (M, N) or (C, M, N)
        Raw images (each a plane or a crop of a big plane); sizes may differ.
    labels : sequence of arrays of shape (M, N)
        Instance labels (0 = background), one per image; binary masks are
        split into connected components.
    masks : sequence of bool arrays or None, optional
        Annotated region of each image (None = fully annotated); pixels
        outside are unknown and do not count.
    model : UNet, optional
        Model to fine-tune (e.g. from :func:`~napari_unet.core.load_model`);
        a new one is built from ``config`` if None. It is not modified: the
        result holds a trained copy.
    config : TrainConfig, optional
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
    checkpoint : path-like, optional
        Model file written atomically at every improvement.
    validation_images, validation_labels : sequences, optional
        Validation data; if empty and ``config.validation == "auto"``, a
        band of every annotated image is held out (:func:`validation_band`).
    should_stop : callable, optional
        Polled after every step; training ends (keeping the best model) when
        it returns True.
    preview : LivePreview, optional
        Polled after every step (unless training ends there): when a preview
        is due, its window is segmented with the current weights and the
        best threshold so far, and yielded. Its time counts in the budget.

    Yields
    ------
    TrainProgress or PreviewUpdate
        A progress event after every step; a preview after some steps (only
        with ``preview``).

    Returns
    -------
    TrainResult
    """
    config = config or TrainConfig()
    dev = select_device(device)
    images = list(images)
    if not images:
        raise ValueError("no training images given")
    labels = _as_list(labels, len(images), "label images")
    masks = _as_list(masks, len(images), "masks")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if model is None:
        first = np.asarray(images[0])
        channels = 1 if first.ndim == 2 else first.shape[0]
        net = UNet(
            in_channels=channels,
            depth=config.depth,
            base_channels=config.base_channels,
            padding=config.padding,
            norm=config.norm,
        )
    else:
        net = copy.deepcopy(model)
    net = move_to(net, dev)
    net.metadata = {**net.metadata, "task": config.task}  # a preview labels as for its task

    val: list[_ValImage] = [
        validation_image(img, lab, None, net)
        for img, lab in zip(
            validation_images,
            _as_list(validation_labels, len(validation_images), "labels"),
            strict=True,
        )
    ]
    if not val and config.validation == "auto":
        for i, (image, label, mask) in enumerate(zip(images, labels, masks, strict=True)):
            parts = validation_band(label, mask)
            if parts is not None:
                masks[i] = parts[0]
                val.append(validation_image(image, label, parts[1], net))
    samples, scale_weights = _training_samples(images, labels, masks, net, config)

    patch = net.valid_input_size(config.patch_size)
    out_size = net.output_size(patch)
    assert out_size is not None
    sampler = PatchSampler(
        samples,
        patch,
        out_size,
        rng=rng,
        augment=config.augment,
        elastic_sigma=config.elastic_sigma,
        weights=scale_weights,
    )
    base_lr = config.learning_rate or (
        SCRATCH_LEARNING_RATE if model is None else FINE_TUNE_LEARNING_RATE
    )
    frozen = [net.down, net.bottom] if config.freeze == "encoder" else []
    for module in frozen:
        module.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer
    if config.optimizer == "sgd":  # the paper: high momentum, so many past steps count
        optimizer = torch.optim.SGD(params, lr=base_lr, momentum=0.99)
    else:
        optimizer = torch.optim.Adam(params, lr=base_lr)
    amp = autocast_dtype(dev) if config.mixed_precision else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)

    history: list[dict[str, Any]] = []
    best_state = copy.deepcopy(net.state_dict())
    best_step, best_score, stale = 0, None, 0
    threshold = config.threshold
    if threshold is None and model is not None:  # fine-tuning keeps its start's threshold
        threshold = suggested_threshold(model)
    thresholds = CANDIDATE_THRESHOLDS if threshold is None else (threshold,)
    best_threshold = 0.5 if threshold is None else threshold
    stopped = "steps"
    start = _clock()
    budget = config.minutes * 60 if config.minutes else math.inf
    validation_seconds = 0.0  # the last validation's duration: kept free for the final one
    training = {
        "config": dataclasses.asdict(config),
        "learning_rate": base_lr,
        "start": "scratch" if model is None else model.metadata.get("name", "a given model"),
        "n_images": len(images),
        "n_validation": len(val),
    }

    diameter = object_diameter([as_instances(label) for label in labels])

    def metadata() -> dict[str, Any]:
        """What the model file records about this training and its best model."""
        return {
            "training": training,
            "diameter": diameter,
            "best_step": best_step,
            "best_score": best_score,
            "threshold": best_threshold,
            "task": config.task,
            # the arithmetic the validation (threshold, best step) predicted in
            "validated_precision": precision_name(inference_dtype("auto", dev)),
        }

    validated = -1  # the last step validated
    started = model is not None and bool(val)  # the start is scored and kept at step 0

    def validate(at: int, record: dict[str, Any]) -> tuple[dict[str, float] | None, bool]:
        """Score the network on the validation images; keep (and save) it if it is the best."""
        nonlocal best_step, best_state, best_score, best_threshold, stale, validated
        nonlocal validation_seconds
        validated, validation = at, None
        if val:
            net.eval()
            began = _clock()
            validation = evaluate(
                net, val, device=dev, thresholds=thresholds, min_size=config.min_size
            )
            validation_seconds = _clock() - began
            record.update(validation)
            improved = replaces_best(
                validation["score"],
                best_score,
                best_is_start=started and best_step == 0,
                margin=config.start_margin,
            )
            stale = 0 if improved else stale + 1
        else:
            improved = True  # without validation the latest model is the best
        if improved:
            best_step, best_state = at, copy.deepcopy(net.state_dict())
            best_score = validation["score"] if validation else None
            if validation:
                best_threshold = validation["threshold"]
            if checkpoint is not None and at > 0:
                save_model(checkpoint, net, **metadata())
        return validation, improved

    if started:
        # fine-tuning keeps the starting model unless training beats it on validation
        history.append({"step": 0})
        validate(0, history[0])
    step = 0
    # on a GPU the next batch is sampled and augmented on the CPU during this step; on
    # the CPU the network already keeps every core busy and a sampling thread beside it
    # slowed steps down by 1.27x (benchmarks/bench_training_speed.py)
    ahead = 0 if dev.type == "cpu" else 1
    with closing(made_ahead(partial(sampler.batch, config.batch_size), ahead)) as batches:
        for step in range(1, config.steps + 1):
            elapsed = _clock() - start
            progress = max((step - 1) / config.steps, elapsed / budget)
            lr = _learning_rate(base_lr, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y, w = (torch.from_numpy(a).to(dev) for a in next(batches))
            net.train()
            for module in frozen:
                module.eval()  # batch-norm statistics stay those of the start
            with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                logits = net(x)
            loss = weighted_cross_entropy(logits, y, w, dice_weight=config.dice_weight)
            if not torch.isfinite(loss):  # diverged: keep the weights from before it
                logger.warning(
                    "training diverged at step %d (loss %s); keeping the best model so far "
                    "(try a lower learning rate)",
                    step,
                    loss.item(),
                )
                stopped = "diverged"  # the best weights are loaded after the loop
                step -= 1
                break
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_value = loss.item()
            record: dict[str, Any] = {"step": step, "loss": loss_value, "lr": lr}

            validation, improved = None, False
            if step % config.validate_every == 0 or step == config.steps:
                validation, improved = validate(step, record)
            history.append(record)

            elapsed = _clock() - start
            # the final validation (if the last step is not one) must fit in the budget too
            reserve = validation_seconds if val and step % config.validate_every else 0.0
            by_steps = elapsed / step * (config.steps - step) + reserve
            eta = min(by_steps, max(budget - elapsed, 0.0))
            fraction = min(max(step / config.steps, elapsed / budget), 1.0)
            yield TrainProgress(
                step,
                config.steps,
                loss_value,
                lr,
                elapsed,
                eta,
                validation,
                best_score,
                improved,
                fraction,
            )
            if should_stop is not None and should_stop():
                stopped = "stopped"
                break
            if elapsed + reserve >= budget:
                stopped = "time"
                break
            if config.patience is not None and stale >= config.patience:
                stopped = "early"
                break
            if preview is not None and step < config.steps:
                options = SegmentConfig(threshold=best_threshold).segment_kwargs(net)
                update = preview.poll(net, step=step, device=dev, options=options)
                if update is not None:
                    yield update

    diverged = stopped == "diverged"
    if val and validated != step and not diverged:  # stopped between validations: score it
        validate(step, history[-1])
    if best_step != step and not val and not diverged:
        best_step, best_state = step, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    net.requires_grad_(True)
    net = net.cpu().eval()
    net.metadata = metadata()
    saved = None
    if checkpoint is not None:
        saved = save_model(checkpoint, net)
    elapsed = _clock() - start
    return TrainResult(
        net, best_step, best_score, step, elapsed, stopped, history, saved, best_threshold
    )


def train(*args: Any, **kwargs: Any) -> TrainResult:
    """Blocking version of :func:`iter_train` (same parameters)."""
    return run_to_end(iter_train(*args, **kwargs))
