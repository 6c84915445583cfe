"""Train, then keep the run as a model version: the job behind the Train widget.

:func:`train_and_record` runs :func:`~napari_unet.core.iter_train` and then,
following a :class:`VersionPlan`, adds the trained model to a
:class:`~napari_unet.core.versions.VersionStore` as the next version, with
its parent, a summary of its annotations and, when the plan names versions
to compare with, the scores of the new model and of those versions on the
same held-out pixels (:mod:`napari_unet.core.held_out`). It returns a
:class:`TrainOutcome`: the training result, the version, and a note that
says why there is no version or no comparison. Whatever fails after
training, the trained model is in the outcome.

Importing this module does not import torch; running the job does.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_unet.core.annotations import Crop
    from napari_unet.core.held_out import HeldOutScores
    from napari_unet.core.training import TrainResult
    from napari_unet.core.versions import ModelVersion, VersionStore

__all__ = ["TrainOutcome", "VersionPlan", "train_and_record"]

logger = logging.getLogger(__name__)


@dataclass
class VersionPlan:
    """What a training job needs to keep its run as a model version.

    The Train widget makes it in the GUI thread, before the job starts.

    Attributes
    ----------
    store : VersionStore
        Where the version goes.
    parent : str
        What the run starts from (a version's name, a bundled model, a file, ``"scratch"``).
    crops : list of Crop
        The run's examples.
    sources : list of str
        Where they come from (e.g. ``"masks: plane 3"``).
    validated : bool
        The run holds out a validation band of each example.
    compare : list of str
        Versions to score the new one against (the current one, the parent).
    runs : list of lists of Crop
        The examples of those of them trained in this napari session, oldest
        first: their bands join the held-out set, the pixels they trained on leave it.
    """

    store: VersionStore
    parent: str
    crops: list[Crop]
    sources: list[str]
    validated: bool
    compare: list[str] = field(default_factory=list)
    runs: list[list[Crop]] = field(default_factory=list)


@dataclass
class TrainOutcome:
    """What :func:`train_and_record` returns: the training result and its version.

    Attributes
    ----------
    result : TrainResult
        What :func:`~napari_unet.core.iter_train` returned.
    version : ModelVersion or None
        The version the run was kept as (None: it could not be saved, see ``note``).
    note : str
        Why there is no version or no comparison ("" if nothing to say).
    """

    result: TrainResult
    version: ModelVersion | None = None
    note: str = ""


def train_and_record(
    images: Sequence[Any],
    labels: Sequence[Any],
    *,
    plan: VersionPlan | None = None,
    **options: Any,
) -> Generator[Any, None, TrainOutcome]:
    """Run :func:`~napari_unet.core.iter_train`, then keep the run as a version.

    A comparison or a version that cannot be made is explained in the
    outcome's ``note``; the trained model is never lost (it is in the result
    and the autosave).

    Parameters
    ----------
    images, labels : sequences of arrays
        The training examples, as :func:`~napari_unet.core.iter_train` takes them.
    plan : VersionPlan, optional
        How to keep the run as a version; None keeps no version.
    **options
        The other arguments of :func:`~napari_unet.core.iter_train` (``masks``,
        ``model``, ``config``, ``device``, ...).

    Yields
    ------
    TrainProgress, PreviewUpdate or str
        What training yields, then a status line (a str) while the new model
        and the versions of ``plan.compare`` are scored on the same held-out
        pixels (:meth:`~napari_unet.core.versions.VersionStore.compare`).

    Returns
    -------
    TrainOutcome
    """
    from napari_unet.core.training import iter_train

    result = yield from iter_train(images, labels, **options)
    if plan is None:
        return TrainOutcome(result)
    try:
        return (yield from _record_version(result, plan))
    except Exception as err:  # the trained model reaches the caller whatever failed here
        logger.exception("could not keep the training run as a model version")
        return TrainOutcome(result, None, f"not kept as a version: {err}")


def _record_version(result: TrainResult, plan: VersionPlan) -> Generator[str, None, TrainOutcome]:
    """Add ``result`` to ``plan.store``, scored against ``plan.compare`` if it can be."""
    from napari_unet.core.held_out import held_out_set
    from napari_unet.core.versions import summarize_annotations

    store = plan.store
    summary = summarize_annotations(
        [c.labels for c in plan.crops], [c.mask for c in plan.crops], sources=plan.sources
    )
    try:
        name = store.next_name()
    except ValueError as err:  # a corrupt index: VersionError
        return TrainOutcome(result, None, f"not kept as a version: {err}")
    comparison: HeldOutScores | None = None
    note = ""
    if plan.compare and not plan.validated:
        note = "no comparison: this run held out no validation band (Advanced: Validate)"
    elif plan.compare:
        held = held_out_set(*plan.runs, plan.crops)
        if not len(held):
            note = "no comparison: no held-out pixels with cells that no run trained on"
        else:
            yield (
                f"Scoring {name} and {', '.join(plan.compare)} on the same "
                f"{held.n_pixels} held-out pixels…"
            )
            try:
                comparison = store.compare(plan.compare, held, extra={name: result.model})
            except (ValueError, OSError) as err:
                note = f"no comparison with {', '.join(plan.compare)}: {err}"
    try:
        version = store.add(result, parent=plan.parent, annotations=summary, comparison=comparison)
    except (ValueError, OSError) as err:
        return TrainOutcome(result, None, f"not kept as a version: {err}")
    return TrainOutcome(result, version, note)
