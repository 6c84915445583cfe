"""Prediction and post-processing settings: the one place their defaults live.

:class:`SegmentConfig` is what ``napari-unet predict``'s options, the Predict
widget's fields and :func:`~napari_unet.core.segment.iter_segment`'s keyword
defaults come from. It imports neither torch nor Qt, so the command line can
build its help from it quickly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from napari_unet.core.model import UNet

__all__ = ["SegmentConfig"]


@dataclass(frozen=True)
class SegmentConfig:
    """How a model's probabilities become the output.

    Attributes
    ----------
    threshold : float, optional
        Foreground probability cut; None uses the model's own (chosen on the
        validation images in training, else 0.5).
    min_size : int
        Objects smaller than this many pixels are removed.
    split : bool
        Split touching cells by a watershed on the distance transform.
    expand : int
        Grow every cell by this many pixels into the background (no merging).
    fill_gaps : int, optional
        Pixels each touching cell gets back of the gap between them; None:
        the model's task decides (1 for cells, 0 for membranes).
    regions : bool
        Membranes models: label the connected regions instead of writing the
        binary mask.
    tta : bool
        Test-time augmentation: average 8 flips/rotations (8x slower).
    diameter : float, optional
        Typical object diameter (px) in the image: it is rescaled so objects
        have the size the model was trained on. None: no rescaling.
    link : bool
        Give objects of consecutive planes (Z or time) that overlap one id
        (:mod:`napari_unet.core.linking`); off: ids are unique per plane.
    link_iou : float
        Smallest overlap (IoU) of two objects of neighbouring planes to be one.
    link_bridge : int
        Planes an object may be missing from and keep its id.
    link_min_planes : int
        Linked objects seen in fewer planes are removed. Each plane is then
        written ``link_min_planes - 1 + link_bridge`` planes late.
    """

    threshold: float | None = None
    min_size: int = 16
    split: bool = False
    expand: int = 0
    fill_gaps: int | None = None
    regions: bool = False
    tta: bool = False
    diameter: float | None = None
    link: bool = False
    link_iou: float = 0.25
    link_bridge: int = 0
    link_min_planes: int = 1

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(f"`threshold` must be in [0, 1] or None, got {self.threshold!r}")
        for name in ("min_size", "expand"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)!r}")
        if self.fill_gaps is not None and self.fill_gaps < 0:
            raise ValueError(f"`fill_gaps` must be >= 0 or None, got {self.fill_gaps!r}")
        if not 0 < self.link_iou <= 1:
            raise ValueError(f"`link_iou` must be in (0, 1], got {self.link_iou!r}")
        if self.link_bridge < 0:
            raise ValueError(f"`link_bridge` must be >= 0, got {self.link_bridge!r}")
        if self.link_min_planes < 1:
            raise ValueError(f"`link_min_planes` must be >= 1, got {self.link_min_planes!r}")
        if self.diameter is not None and not self.diameter > 0:
            raise ValueError(f"`diameter` must be > 0 or None, got {self.diameter!r}")

    @classmethod
    def from_options(cls, **options: Any) -> SegmentConfig:
        """A config from the options a user set (None = not set: the default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names and v is not None})

    def segment_kwargs(self, model: UNet) -> dict[str, Any]:
        """Keyword arguments of :func:`~napari_unet.core.segment.iter_segment` for ``model``.

        The threshold and the gap filling left to the model are resolved,
        and the output (instances or mask) follows the model's task.
        """
        from napari_unet.core.checkpoint import suggested_threshold
        from napari_unet.core.tasks import segment_options

        options = segment_options(model, regions=self.regions)
        if self.fill_gaps is not None:
            options["fill_gaps"] = self.fill_gaps
        threshold = suggested_threshold(model) if self.threshold is None else self.threshold
        return {
            "threshold": threshold,
            "min_size": self.min_size,
            "split": self.split,
            "expand": self.expand,
            "tta": self.tta,
            "diameter": self.diameter,
            "link": self.link,
            "link_iou": self.link_iou,
            "link_bridge": self.link_bridge,
            "link_min_planes": self.link_min_planes,
            **options,
        }
