"""Fine-tune a U-Net on a few annotated images.

:func:`iter_train` is a generator: it yields a :class:`TrainProgress` after
every optimisation step (with validation scores whenever validation runs) and
returns a :class:`TrainResult` holding the best model. Stopping is
cooperative (``should_stop``, a time budget, early stopping) and still returns
the best model; every improvement is written to ``checkpoint`` atomically.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike

from napari_unet.core.checkpoint import save_model, suggested_threshold
from napari_unet.core.dataset import (
    PatchSampler,
    Sample,
    Weighting,
    as_instances,
    prepare_sample,
    rescale_annotation,
)
from napari_unet.core.device import autocast_dtype, select_device
from napari_unet.core.losses import weighted_cross_entropy
from napari_unet.core.metrics import f1_at, foreground_iou
from napari_unet.core.model import UNet
from napari_unet.core.postprocess import (
    foreground_probability,
    object_diameter,
    probabilities_to_labels,
)
from napari_unet.core.tiling import predict_tiled

logger = logging.getLogger(__name__)

#: Zooms for scale augmentation (``TrainConfig(scales=MULTI_SCALE)``): cells from
#: half to 1.4x their annotated size.
MULTI_SCALE = (0.5, 0.71, 1.0, 1.41)

#: Share of each annotated image held out for validation (``validation="auto"``).
VALIDATION_SHARE = 0.2

#: Adam's initial learning rate for a new network and for fine-tuning one
#: (``TrainConfig(learning_rate=None)``); see docs/benchmarks.md.
SCRATCH_LEARNING_RATE = 1e-3
FINE_TUNE_LEARNING_RATE = 1e-4

#: Foreground thresholds tried on validation images when none is given.
CANDIDATE_THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(11))


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (primitive fields, stored in the model file).

    Attributes
    ----------
    steps : int
        Most optimisation steps (a cap: the time budget normally ends training).
    minutes : float, optional
        Wall-time budget (the default: 5 minutes); training stops when it is
        spent, final validation included. None: only ``steps`` limits it.
    batch_size : int
        Patches per step.
    patch_size : int
        Input patch edge (rounded up to a valid size for the network).
    learning_rate : float, optional
        Initial learning rate; cosine decay to 5 % over the budget. None
        (the default) uses :data:`SCRATCH_LEARNING_RATE` for a new network and
        :data:`FINE_TUNE_LEARNING_RATE` when fine-tuning a given one.
    optimizer : {"adam", "sgd"}
        Adam (the default; see docs/benchmarks.md) or the paper's SGD with
        momentum 0.99.
    weighting : {"border", "unet", "balanced", "none"}
        Loss weights: the paper's border term on uniform class weights (the
        default: it beat the full weight map on both real datasets and no
        weights on touching nuclei; uniform weights did better on EM membranes,
        see docs/benchmarks.md), the paper's full weight map (class balance +
        border term), class balance only, or uniform.
    w0, sigma : float
        Weight-map border term (paper: 10, 5 px).
    dice_weight : float
        Weight of an extra soft-Dice term (0 = cross-entropy only, as in the paper).
    mixed_precision : bool
        Autocast the forward pass to bfloat16 (or float16) on CUDA and on CPUs
        that compute bfloat16 natively (AVX512-BF16, AMX), where a step takes
        ~0.6x the float32 time with the same results (docs/benchmarks.md);
        False trains in float32 everywhere.
    augment : bool
        Flips, rotations, elastic deformation (paper: 3x3 grid, 10 px) and intensity.
    elastic_sigma : float
        Standard deviation (px) of the elastic grid displacements.
    scales : tuple of float
        Zoom factors at which every training image is used; each is drawn
        equally often. The default, no zoom, is best when the images to
        segment have the magnification of the annotated ones; use
        :data:`MULTI_SCALE` when they do not (see docs/benchmarks.md).
    freeze : {"none", "encoder"}
        Layers kept fixed when fine-tuning: none, or the contracting path
        (encoder and bottom, batch-norm statistics included), so only the
        expanding path and the head adapt.
    validation : {"auto", "none"}
        ``"auto"`` (unless validation data is given) holds out a band at the
        far end of every annotated image, a fifth of its annotated pixels
        (:func:`validation_band`); the rest trains. It picks the best model
        and its threshold; holding out whole images instead lost training
        data that few-shot training needs (docs/benchmarks.md).
    validate_every : int
        Steps between validations (and checkpoints).
    patience : int, optional
        Stop after this many validations without improvement.
    seed : int
        Seed for patch sampling, augmentation and initial weights.
    base_channels, depth : int
        Architecture when training from scratch.
    padding : {"valid", "same"}
        Padding when training from scratch.
    norm : {"batch", None}
        Normalization layers when training from scratch: batch norm (the
        default; it learned better on both real datasets) or none, as in the
        paper. Batch norm is pointwise at inference, so tiling stays exact.
    threshold : float, optional
        Foreground threshold used to score validation images and stored in
        the model as its suggested threshold. None picks the best of
        0.3, 0.35, ..., 0.8 on the validation images (0.5 without validation)
        for a new network, and keeps the starting model's own threshold when
        fine-tuning: a threshold re-picked on a few annotated images did not
        carry over to other images (docs/benchmarks.md).
    min_size : int
        Smallest object (pixels) kept when scoring validation images.
    task : {"cells", "membranes"}
        What the labels mark (:mod:`napari_unet.core.tasks`): recorded in the
        model so prediction gives instances or a binary mask. The task's
        other settings come from :func:`~napari_unet.core.tasks.task_config`.
    """

    steps: int = 10_000
    minutes: float | None = 5.0
    batch_size: int = 2
    patch_size: int = 380
    learning_rate: float | None = None
    optimizer: Literal["adam", "sgd"] = "adam"
    weighting: Weighting = "border"
    w0: float = 10.0
    sigma: float = 5.0
    dice_weight: float = 0.0
    mixed_precision: bool = True
    augment: bool = True
    elastic_sigma: float = 10.0
    scales: tuple[float, ...] = (1.0,)
    freeze: Literal["none", "encoder"] = "none"
    validation: Literal["auto", "none"] = "auto"
    validate_every: int = 100
    patience: int | None = 10
    seed: int = 0
    base_channels: int = 16
    depth: int = 4
    padding: Literal["valid", "same"] = "valid"
    norm: Literal["batch"] | None = "batch"
    threshold: float | None = None
    min_size: int = 16
    task: Literal["cells", "membranes"] = "cells"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "patch_size", "validate_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"`minutes` must be > 0, got {self.minutes!r}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate!r}")
        if self.validation not in ("auto", "none"):
            raise ValueError(f"`validation` must be 'auto' or 'none', got {self.validation!r}")
        if not self.scales or not all(0.1 <= z <= 10 for z in self.scales):
            raise ValueError(f"`scales` must be zoom factors in [0.1, 10], got {self.scales!r}")
        if self.freeze not in ("none", "encoder"):
            raise ValueError(f"`freeze` must be 'none' or 'encoder', got {self.freeze!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"`optimizer` must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.norm not in (None, "batch"):
            raise ValueError(f"`norm` must be None or 'batch', got {self.norm!r}")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ValueError(f"`threshold` must be in (0, 1) or None, got {self.threshold!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"`patience` must be >= 1 or None, got {self.patience!r}")
        if self.task not in ("cells", "membranes"):
            raise ValueError(f"`task` must be 'cells' or 'membranes', got {self.task!r}")


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


def _as_list(items: ArrayLike | Sequence[ArrayLike] | None, n: int, name: str) -> list[Any]:
    if items is None:
        return [None] * n
    items = list(items)
    if len(items) != n:
        raise ValueError(f"got {n} images but {len(items)} {name}")
    return items


def _val_image(
    image: ArrayLike, labels: ArrayLike, mask: ArrayLike | None, model: UNet
) -> _ValImage:
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
) -> Generator[TrainProgress, None, TrainResult]:
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

    Yields
    ------
    TrainProgress

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
    net = net.to(dev)

    val: list[_ValImage] = [
        _val_image(img, lab, None, net)
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
                val.append(_val_image(image, label, parts[1], net))
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
    if config.optimizer == "sgd":  # the paper: high momentum, so many past steps count
        optimizer = torch.optim.SGD(params, lr=base_lr, momentum=0.99)
    else:
        optimizer = torch.optim.Adam(params, lr=base_lr)
    amp = autocast_dtype(dev, cpu=True) if config.mixed_precision else None
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
        }

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
            improved = best_score is None or validation["score"] > best_score
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

    validated = -1
    if model is not None and val:
        # fine-tuning keeps the starting model unless training beats it on validation
        history.append({"step": 0})
        validate(0, history[0])
    step = 0
    for step in range(1, config.steps + 1):
        elapsed = _clock() - start
        progress = max((step - 1) / config.steps, elapsed / budget)
        lr = _learning_rate(base_lr, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y, w = (torch.from_numpy(a).to(dev) for a in sampler.batch(config.batch_size))
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
    gen = iter_train(*args, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value
