"""Input normalization shared by training and inference.

Each 2D plane (and each channel) is scaled so that its ``low`` percentile maps
to 0 and its ``high`` percentile to 1. The same settings are stored in the
model file, so prediction normalizes exactly as training did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Normalization", "check_finite", "normalize"]


@dataclass(frozen=True)
class Normalization:
    """Per-plane percentile normalization settings.

    Parameters
    ----------
    low, high : float
        Percentiles (0-100) mapped to 0 and 1.
    """

    low: float = 1.0
    high: float = 99.8

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(
                f"percentiles must satisfy 0 <= low < high <= 100, got low={self.low}, "
                f"high={self.high}"
            )

    def to_dict(self) -> dict[str, object]:
        """Return the settings as a plain dict (for model files)."""
        return {"method": "percentile", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Normalization:
        """Build settings from :meth:`to_dict` output."""
        if data.get("method", "percentile") != "percentile":
            raise ValueError(f"unknown normalization method {data.get('method')!r}")
        return cls(low=float(data["low"]), high=float(data["high"]))  # type: ignore[arg-type]

    def __call__(self, image: ArrayLike) -> np.ndarray:
        """Normalize ``image``; see :func:`normalize`."""
        return normalize(image, low=self.low, high=self.high)

    def limits(self, image: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """The values mapped to 0 and 1 in each plane of ``image`` (shape (..., 1, 1)).

        Computed on a subsample of a huge plane, they normalize it tile by
        tile (:meth:`apply`) as :meth:`__call__` does whole.
        """
        return _limits(_as_float(image), self.low, self.high)

    @staticmethod
    def apply(image: ArrayLike, limits: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Scale ``image`` (any part of a plane) by :meth:`limits` of its plane."""
        return _scale(_as_float(image), *limits)


def check_finite(image: np.ndarray, name: str = "image") -> None:
    """Raise a ValueError if a float ``image`` holds NaN or infinite values."""
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise ValueError(f"`{name}` contains NaN or infinite values")


def normalize(image: ArrayLike, *, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Scale each 2D plane of ``image`` so its percentiles ``low``/``high`` map to 0/1.

    Parameters
    ----------
    image : array of shape (..., M, N)
        Image; every index of the leading axes (planes, channels) is scaled
        on its own.
    low, high : float
        Percentiles (0-100).

    Returns
    -------
    normalized : ndarray of float32, shape (..., M, N)

    Examples
    --------
    >>> out = normalize(np.arange(101, dtype=np.uint8).reshape(1, 101), low=0, high=100)
    >>> float(out.min()), float(out.max())
    (0.0, 1.0)
    """
    Normalization(low, high)  # validates
    image = _as_float(image)
    return _scale(image, *_limits(image, low, high))


def _as_float(image: ArrayLike) -> np.ndarray:
    """``image`` as float32, checked: at least 2D, not empty, real and finite."""
    image = np.asarray(image)
    if image.ndim < 2:
        raise ValueError(f"`image` must have at least 2 dimensions, got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"`image` is empty, shape {image.shape}")
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.number)) or np.iscomplexobj(image):
        raise ValueError(f"`image` must be a real numeric array, got dtype {image.dtype}")
    check_finite(image)
    return image.astype(np.float32, copy=False)


def _limits(image: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.percentile(image, [low, high], axis=(-2, -1), keepdims=True)
    return lo, hi


def _scale(image: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    scale = 1.0 / np.maximum(hi - lo, 1e-6)
    return ((image - lo) * scale).astype(np.float32, copy=False)
