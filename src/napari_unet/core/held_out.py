"""Held-out comparison: several models scored on the same held-out annotations.

To see whether a correction helped, score several model versions on the
**same** held-out annotations: :func:`held_out_set` builds them
(:class:`HeldOut`) as the union of the validation bands
(:func:`~napari_unet.core.training.validation_band`) of the runs' examples,
less every pixel one of the runs trained on, and :func:`score_versions`
scores every model on them the way training validates
(:func:`~napari_unet.core.training.evaluate`). The result,
:class:`HeldOutScores`, is what a version record keeps as its comparison
(:class:`~napari_unet.core.versions.ModelVersion`) and what
:meth:`~napari_unet.core.versions.VersionStore.compare` returns.

Importing this module does not import torch; building a held-out set
(:func:`~napari_unet.core.training.validation_band`) and scoring models do.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet.core.versions import VersionError, _array_digest, _float_dict

if TYPE_CHECKING:
    import torch

    from napari_unet.core.annotations import Crop
    from napari_unet.core.model import UNet

__all__ = ["HeldOut", "HeldOutScores", "held_out_set", "score_versions"]


@dataclass(frozen=True, eq=False)  # holds arrays
class HeldOut:
    """Held-out annotations that several models are scored on.

    Attributes
    ----------
    images : tuple of arrays of shape (M, N) or (C, M, N)
        Raw examples (not normalized: each model normalizes them its way).
    labels : tuple of arrays of shape (M, N)
        Their instance labels.
    masks : tuple of bool arrays of shape (M, N)
        The held-out pixels of each example; every mask holds some cell.
    """

    images: tuple[np.ndarray, ...]
    labels: tuple[np.ndarray, ...]
    masks: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if not len(self.images) == len(self.labels) == len(self.masks):
            raise ValueError(
                f"got {len(self.images)} images, {len(self.labels)} label images and "
                f"{len(self.masks)} masks"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_pixels(self) -> int:
        """Held-out pixels in all."""
        return int(sum(int(np.count_nonzero(m)) for m in self.masks))

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the images, labels and masks: equal for the same held-out set."""
        h = hashlib.sha256()
        for arrays in zip(self.images, self.labels, self.masks, strict=True):
            h.update(_array_digest(*(np.asarray(a) for a in arrays)))
        return h.hexdigest()


@dataclass
class _Example:
    image: np.ndarray
    labels: np.ndarray
    known: np.ndarray
    band: np.ndarray
    trained: np.ndarray


def held_out_set(*runs: Sequence[Crop]) -> HeldOut:
    """The union of the validation bands of the examples of several training runs.

    Training with ``validation="auto"`` holds out a band of every example
    (:func:`~napari_unet.core.training.validation_band`). An example that
    several runs share (the same image pixels: the same plane or rectangle)
    counts once: its held-out pixels are the union of its bands in the runs,
    less any pixel one of the runs trained on (so no model was trained on
    what it is scored on), with the labels of the latest run (the corrected
    truth). Examples of one run only keep that run's band. The runs are
    taken to have trained with ``validation="auto"`` (a run without
    validation trained on its bands too: its versions' scores here would
    flatter it).

    Parameters
    ----------
    *runs : sequences of Crop
        The examples of each run, oldest first, as training got them:
        ``Crop(image, labels, mask, source)`` per example, with ``images``,
        ``labels`` and ``masks`` as passed to
        :func:`~napari_unet.core.iter_train` (``mask`` None = the whole example).

    Returns
    -------
    HeldOut
        Possibly empty (``len(held_out) == 0``) when no example held out a
        band with cells.

    Examples
    --------
    >>> from napari_unet.core.annotations import Crop
    >>> labels = np.zeros((10, 4), int); labels[1, 1] = 1; labels[9, 2] = 2
    >>> run = [Crop(np.ones((10, 4)), labels, None, "plane 0")]
    >>> held = held_out_set(run, run)
    >>> len(held), held.n_pixels
    (1, 8)
    """
    from napari_unet.core.training import validation_band

    examples: dict[tuple[bytes, int], _Example] = {}
    for run in runs:
        seen: Counter[bytes] = Counter()
        for crop in run:
            image, labels = np.asarray(crop.image), np.asarray(crop.labels)
            mask = None if crop.mask is None else np.asarray(crop.mask, bool)
            known = np.ones(labels.shape, bool) if mask is None else mask
            parts = validation_band(labels, mask)
            train, band = (known, np.zeros_like(known)) if parts is None else parts
            base = _array_digest(image)
            key = (base, seen[base])  # the same image twice in a run: two examples
            seen[base] += 1
            old = examples.get(key)
            if old is None or old.labels.shape != labels.shape:
                examples[key] = _Example(image, labels, known, band, train)
            else:
                examples[key] = _Example(
                    image, labels, known, old.band | band, old.trained | train
                )
    images, all_labels, masks = [], [], []
    for ex in examples.values():
        held = ex.band & ~ex.trained & ex.known
        if np.any(ex.labels[held] > 0):
            images.append(ex.image)
            all_labels.append(ex.labels)
            masks.append(held)
    return HeldOut(tuple(images), tuple(all_labels), tuple(masks))


def _count(n: int) -> str:
    """``412345`` as ``"412k"``, ``1234567`` as ``"1.2M"``."""
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n / 1000:.0f}k"
    return str(n)


@dataclass(frozen=True)
class HeldOutScores:
    """Several models' scores on the same held-out annotations.

    Attributes
    ----------
    scores : dict of str to dict of str to float
        Per model (version name): ``{"iou", "f1", "score", "threshold"}``,
        as :func:`~napari_unet.core.training.evaluate` gives them.
    held_out : str
        :attr:`HeldOut.digest` of the held-out set: scores with the same
        digest were computed on the same annotations.
    n_images, n_pixels : int
        Held-out examples and pixels.
    """

    scores: dict[str, dict[str, float]]
    held_out: str
    n_images: int
    n_pixels: int

    def describe(self) -> str:
        """One line per model, for a status message.

        Examples
        --------
        >>> s = HeldOutScores({"v2": {"iou": 0.8, "f1": 0.9, "score": 0.85,
        ...                    "threshold": 0.5}}, "ab12", 2, 300)
        >>> print(s.describe())
        v2: score 0.85 (IoU 0.80, F1 0.90) on 2 held-out example(s), 300 px
        """
        where = f"on {self.n_images} held-out example(s), {self.n_pixels} px"
        return "\n".join(
            f"{name}: score {s['score']:.2f} (IoU {s['iou']:.2f}, F1 {s['f1']:.2f}) {where}"
            for name, s in self.scores.items()
        )

    def versus(self, new: str, old: str) -> str:
        """One line comparing two of the models, for a status line.

        Parameters
        ----------
        new, old : str
            Names of two scored models (e.g. the new version and the previous one).

        Returns
        -------
        str
            Both scores, the held-out pixels they share and the verdict:
            ``better``, ``worse`` or ``about the same`` (within 0.005).

        Raises
        ------
        KeyError
            If either model was not scored here.

        Examples
        --------
        >>> s = HeldOutScores({"v2": {"score": 0.812}, "v1": {"score": 0.78}}, "ab12", 3, 412_345)
        >>> s.versus("v2", "v1")
        'v2 0.81 vs v1 0.78 on the same 412k held-out pixels (better)'
        """
        missing = [n for n in (new, old) if n not in self.scores]
        if missing:
            scored = ", ".join(self.scores)
            raise KeyError(f"no held-out scores of {', '.join(missing)} (scored: {scored})")
        a, b = self.scores[new]["score"], self.scores[old]["score"]
        verdict = "better" if a - b > 0.005 else "worse" if b - a > 0.005 else "about the same"
        return (
            f"{new} {a:.2f} vs {old} {b:.2f} on the same {_count(self.n_pixels)} held-out "
            f"pixels ({verdict})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeldOutScores:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        VersionError
            If ``data`` is malformed.
        """
        try:
            scores, digest = data["scores"], data["held_out"]
            n_images, n_pixels = int(data["n_images"]), int(data["n_pixels"])
        except (KeyError, TypeError, ValueError) as err:
            raise VersionError(f"malformed held-out scores {data!r}: {err}") from None
        if not isinstance(scores, Mapping) or not isinstance(digest, str):
            raise VersionError(f"malformed held-out scores {data!r}")
        parsed = {str(k): _float_dict(v, f"held-out scores of {k!r}") for k, v in scores.items()}
        return cls(parsed, digest, n_images, n_pixels)


def score_versions(
    models: Mapping[str, UNet],
    held_out: HeldOut,
    *,
    threshold: float | None = None,
    min_size: int | None = None,
    device: str | torch.device = "cpu",
) -> HeldOutScores:
    """Score several models on the same held-out annotations, comparably.

    Every model gets the same examples, labels and held-out pixels, scored as
    training validates (:func:`~napari_unet.core.training.evaluate`: mean
    foreground IoU and instance F1 at IoU 0.5 inside the held-out pixels);
    each model normalizes the images with its own settings, as prediction does.

    Parameters
    ----------
    models : mapping of str to UNet
        The models by name (e.g. ``{"v1": store.load("v1"), "v2": result.model}``).
    held_out : HeldOut
        From :func:`held_out_set`.
    threshold : float, optional
        Foreground threshold for every model; None uses each model's own
        (:func:`~napari_unet.core.checkpoint.suggested_threshold`), the one
        prediction uses.
    min_size : int, optional
        Smallest object kept (default :class:`~napari_unet.core.TrainConfig`'s).
    device : str or torch.device
        Where to run the models (the CPU by default: the same numbers everywhere).

    Returns
    -------
    HeldOutScores

    Raises
    ------
    ValueError
        If ``held_out`` is empty or a model does not fit the images.
    """
    from napari_unet.core.checkpoint import suggested_threshold
    from napari_unet.core.train_config import TrainConfig
    from napari_unet.core.training import evaluate, validation_image

    if not len(held_out):
        raise ValueError(
            "there are no held-out annotations to score on (no example held out a band with cells)"
        )
    if not models:
        raise ValueError("no models to score")
    size = TrainConfig().min_size if min_size is None else int(min_size)
    scores = {}
    for name, model in models.items():
        was_training = model.training
        model.eval()
        try:
            val = [
                validation_image(image, labels, mask, model)
                for image, labels, mask in zip(
                    held_out.images, held_out.labels, held_out.masks, strict=True
                )
            ]
            t = suggested_threshold(model) if threshold is None else float(threshold)
            scores[str(name)] = evaluate(model, val, device=device, thresholds=(t,), min_size=size)
        finally:
            model.train(was_training)
    return HeldOutScores(scores, held_out.digest, len(held_out), held_out.n_pixels)
