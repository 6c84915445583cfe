"""Training settings: the one place their defaults live.

:class:`TrainConfig` is what ``napari-unet train``'s options, the Train
widget's fields and the saved widget settings take their defaults from; the
task presets (:mod:`napari_unet.core.tasks`) change some of its fields. It
imports neither torch nor Qt, so the command line builds its help from it
quickly and the widgets open without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "FINE_TUNE_LEARNING_RATE",
    "MULTI_SCALE",
    "PRESETS",
    "SCRATCH_LEARNING_RATE",
    "TrainConfig",
    "Weighting",
    "validation_interval",
]

#: TrainConfig fields each task (:mod:`napari_unet.core.tasks`) changes from the
#: TrainConfig defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "cells": {},
    "membranes": {"weighting": "none", "patch_size": 572, "batch_size": 1},
}

#: Loss weights (:func:`~napari_unet.core.dataset.training_weights`).
Weighting = Literal["unet", "border", "balanced", "none"]

#: Zooms for scale augmentation (``TrainConfig(scales=MULTI_SCALE)``): cells from
#: half to 1.4x their annotated size.
MULTI_SCALE = (0.5, 0.71, 1.0, 1.41)


#: Adam's initial learning rate for a new network and for fine-tuning one
#: (``TrainConfig(learning_rate=None)``); see docs/benchmarks.md.
SCRATCH_LEARNING_RATE = 1e-3
FINE_TUNE_LEARNING_RATE = 1e-4


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
    start_margin : float
        When fine-tuning with validation, a checkpoint replaces the starting
        model only if its validation score beats the start's by more than
        this. The bands of a few images are noisy: with no margin, the best
        of ~20 validations replaced the bundled model on 3 of 6 draws and
        scored lower on other images every time (docs/benchmarks.md).
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
    start_margin: float = 0.01
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
        if not 0 <= self.start_margin < 1:
            raise ValueError(f"`start_margin` must be in [0, 1), got {self.start_margin!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"`patience` must be >= 1 or None, got {self.patience!r}")
        if self.task not in ("cells", "membranes"):
            raise ValueError(f"`task` must be 'cells' or 'membranes', got {self.task!r}")


def validation_interval(steps: int, every: int | None = None) -> int:
    """Steps between validations (``TrainConfig.validate_every``) for a run of ``steps``.

    ``every`` when given (a user's choice), else about 20 validations per run,
    every 5 to 100 steps; never more than ``steps`` (the last step validates
    anyway). The Train widget and ``napari-unet train`` use this one rule.

    Examples
    --------
    >>> validation_interval(10_000), validation_interval(400), validation_interval(3)
    (100, 20, 3)
    >>> validation_interval(50, every=100)
    50
    """
    if every is None:
        every = min(max(steps // 20, 5), 100)
    return max(1, min(int(every), int(steps)))
