"""Models bundled inside the package: segment at once, fine-tune from them.

The files ship in the wheel (``napari_unet/_models``), so they work offline
and load with the same safe loader as any model file. A bundled model's name
is accepted wherever a model file path is: :func:`~napari_unet.core.load_model`,
``predict_dask``, ``napari-unet predict NAME ...``, ``train --from NAME`` and the
widgets' model pickers. An existing file of that name wins over the bundled model.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from napari_unet.core.model import UNet

__all__ = [
    "DEFAULT_PRETRAINED",
    "SCRATCH",
    "available_names",
    "default_start",
    "load_pretrained",
    "model_file",
    "pretrained_models",
]

#: Bundled models: name -> (file in ``napari_unet/_models``, one-line description).
_BUNDLED = {
    "nuclei": (
        "nuclei.pt",
        "fluorescence nuclei (DSB 2018, 369 images, nuclei ~10-80 px across); U-Net depth 4, "
        "base 16, batch norm",
    ),
}

#: The bundled model that training on instance labels starts from by default.
DEFAULT_PRETRAINED = "nuclei"

#: Name that asks training to start from a new, randomly initialised network.
SCRATCH = "scratch"


def pretrained_models() -> dict[str, str]:
    """Names of the bundled models and a one-line description of each.

    Examples
    --------
    >>> "nuclei" in pretrained_models()
    True
    """
    return {name: description for name, (_, description) in _BUNDLED.items()}


def model_file(spec: str | os.PathLike[str]) -> Path:
    """The file behind a model path or a bundled model's name.

    An existing file wins; otherwise a bundled name gives its file inside the
    package. Anything else is returned as a path (whose loading then reports
    that it is missing).
    """
    path = Path(spec)
    if not path.is_file() and str(spec) in _BUNDLED:
        return Path(str(files("napari_unet") / "_models" / _BUNDLED[str(spec)][0]))
    return path


def available_names() -> str:
    """The bundled model names, for error messages."""
    return ", ".join(sorted(_BUNDLED))


def load_pretrained(name: str) -> UNet:
    """Load a bundled model by name (see :func:`pretrained_models`).

    Raises
    ------
    ModelFileError
        If ``name`` is not a bundled model (the message lists the available
        ones) or its file is damaged.
    """
    from napari_unet.core.checkpoint import ModelFileError, load_model

    if name not in _BUNDLED:
        raise ModelFileError(f"no bundled model named {name!r}; available: {available_names()}")
    return load_model(model_file(name))


def default_start(task: str, in_channels: int = 1) -> str | None:
    """The model that training for ``task`` starts from unless told otherwise.

    The cells task (:func:`~napari_unet.core.tasks.detect_task`) on
    single-channel images starts from the bundled nuclei model; membranes
    and multi-channel images start from scratch (None).

    Examples
    --------
    >>> default_start("cells"), default_start("membranes"), default_start("cells", 3)
    ('nuclei', None, None)
    """
    return DEFAULT_PRETRAINED if task == "cells" and in_channels == 1 else None
