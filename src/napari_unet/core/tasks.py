"""Task presets: cells / nuclei vs membranes / regions, detected from the labels.

Two kinds of annotation need different training and different output:

- ``"cells"``: instance labels (or a binary mask of separate objects on a
  mostly-background image, such as nuclei). Training uses the paper's border
  weights between touching cells and validation bands; prediction gives
  instance labels.
- ``"membranes"``: a binary mask whose background is a thin network (EM
  membranes between cell interiors, 1 = interior). Training uses the settings
  that won on ISBI 2012 (uniform weights, larger patches, no validation band
  with two or fewer images; docs/benchmarks.md); prediction gives the binary
  mask, and optionally its connected regions.

:func:`detect_task` chooses one from the labels; :func:`task_config` turns it
into a :class:`~napari_unet.core.train_config.TrainConfig`; the model file records
it (:func:`model_task`) so that prediction knows what to output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage as ndi

from napari_unet.core.postprocess import FILL_GAPS
from napari_unet.core.train_config import PRESETS, TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from napari_unet.core.model import UNet

__all__ = [
    "MEMBRANES_MAX_BACKGROUND_WIDTH",
    "MEMBRANES_MAX_IMAGES_WITHOUT_VALIDATION",
    "MEMBRANES_MIN_FOREGROUND",
    "PRESETS",
    "TASKS",
    "Task",
    "TaskChoice",
    "check_task",
    "detect_task",
    "model_task",
    "segment_options",
    "task_config",
]

Task = Literal["cells", "membranes"]

#: Task names and what they are for (CLI help, widget choices).
TASKS: dict[str, str] = {
    "cells": "cells / nuclei: separate objects (instance labels); instance output",
    "membranes": "membranes / regions: a binary mask whose background is a thin network "
    "(e.g. EM membranes, 1 = interior); binary mask output",
}


#: With at most this many annotated images, the membranes task trains on all of
#: them (no validation band): on ISBI, 2 slices with a band scored 0.877 vs 0.895.
MEMBRANES_MAX_IMAGES_WITHOUT_VALIDATION = 2

#: A binary mask is "membranes" when its foreground covers at least this share
#: of the annotated pixels ...
MEMBRANES_MIN_FOREGROUND = 0.5
#: ... and 90 % of its background pixels lie within this distance (px) of the
#: foreground (ISBI slices: 4 px; DSB nuclei masks: 16-113 px).
MEMBRANES_MAX_BACKGROUND_WIDTH = 8.0


@dataclass(frozen=True)
class TaskChoice:
    """The task detected from the labels, and why.

    Attributes
    ----------
    task : {"cells", "membranes"}
    reason : str
        One line for the user ("the labels hold instance ids").
    certain : bool
        False when the labels fit neither task well (the message says so).
    """

    task: Task
    reason: str
    certain: bool = True


def _masked(labels: ArrayLike, mask: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    lab = np.asarray(labels)
    known = np.ones(lab.shape, bool) if mask is None else np.asarray(mask, bool)
    return lab, known


def detect_task(
    labels: ArrayLike | list[ArrayLike], masks: list[ArrayLike | None] | None = None
) -> TaskChoice:
    """Choose the task from the annotations.

    Parameters
    ----------
    labels : array or list of arrays
        Label images (0 = background); several ids mean instances.
    masks : list of bool arrays or None, optional
        Annotated region of each label image (None = all of it).

    Returns
    -------
    TaskChoice
        ``"cells"`` for instance ids or a binary mask of objects on a mostly
        empty background; ``"membranes"`` for a binary mask covering most of
        the image with a thin background network; otherwise ``"cells"`` with
        ``certain=False``.

    Examples
    --------
    >>> membranes = np.ones((64, 64), np.uint8); membranes[::16] = 0; membranes[:, ::16] = 0
    >>> detect_task(membranes).task
    'membranes'
    >>> nuclei = np.zeros((64, 64), np.uint8); nuclei[10:20, 10:20] = 1
    >>> detect_task(nuclei).task
    'cells'
    """
    items = labels if isinstance(labels, list) else [labels]
    regions = masks if masks is not None else [None] * len(items)
    pairs = [_masked(lab, m) for lab, m in zip(items, regions, strict=True)]
    if any(lab[known].max(initial=0) > 1 for lab, known in pairs):
        return TaskChoice("cells", "the labels hold instance ids")
    n_known = sum(int(known.sum()) for _, known in pairs)
    if n_known == 0 or not any(lab[known].any() for lab, known in pairs):
        return TaskChoice("cells", "the labels are empty", certain=False)
    foreground = sum(int((lab[known] > 0).sum()) for lab, known in pairs) / n_known
    widths = []
    for lab, known in pairs:
        cells = (lab > 0) & known
        if cells.any() and (known & ~cells).any():
            widths.append(ndi.distance_transform_edt(~cells)[known & ~cells])
    width = float(np.percentile(np.concatenate(widths), 90)) if widths else 0.0
    dense = foreground >= MEMBRANES_MIN_FOREGROUND
    thin = width <= MEMBRANES_MAX_BACKGROUND_WIDTH
    shares = f"foreground {foreground:.0%} of the annotated pixels, background {width:.0f} px wide"
    if dense and thin:
        return TaskChoice("membranes", f"a binary mask with a thin background network ({shares})")
    if not dense and not thin:
        return TaskChoice("cells", f"a binary mask of separate objects ({shares})")
    return TaskChoice(
        "cells", f"a binary mask that fits neither task well ({shares})", certain=False
    )


def _is_task(value: object) -> TypeGuard[Task]:
    return isinstance(value, str) and value in TASKS


def check_task(task: str) -> Task:
    """Return ``task`` if it is a known task name, else raise a ValueError naming them."""
    if not _is_task(task):
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return task


def task_config(task: str, n_images: int, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of a task preset, with explicit settings on top.

    Parameters
    ----------
    task : {"cells", "membranes"}
    n_images : int
        Annotated images (membranes with at most
        :data:`MEMBRANES_MAX_IMAGES_WITHOUT_VALIDATION` train without validation).
    **overrides
        TrainConfig fields the user set; ``None`` values are ignored (not set).

    Examples
    --------
    >>> task_config("membranes", 2).validation
    'none'
    >>> task_config("membranes", 2, patch_size=380).patch_size
    380
    """
    preset = dict(PRESETS[check_task(task)])
    if task == "membranes" and n_images <= MEMBRANES_MAX_IMAGES_WITHOUT_VALIDATION:
        preset["validation"] = "none"
    given = {key: value for key, value in overrides.items() if value is not None}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(given) - fields
    if unknown:
        raise TypeError(f"unknown TrainConfig fields: {sorted(unknown)}")
    return TrainConfig(**{**preset, **given, "task": task})


def model_task(model: UNet) -> Task:
    """The task a model was trained for (models from before tasks: ``"cells"``)."""
    task = model.metadata.get("task", "cells")
    return task if _is_task(task) else "cells"


def segment_options(model: UNet, *, regions: bool = False) -> dict[str, Any]:
    """Output options of :func:`~napari_unet.core.segment.iter_segment` for a model's task.

    Cells: instance labels, touching cells given back their gap
    (:data:`~napari_unet.core.postprocess.FILL_GAPS`). Membranes: the binary
    mask, or with ``regions`` its connected regions; never grown into the
    membranes.
    """
    if model_task(model) == "membranes":
        return {"output": "instances" if regions else "mask", "fill_gaps": 0}
    return {"output": "instances", "fill_gaps": FILL_GAPS}
