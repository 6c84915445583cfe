"""Model files: weights + architecture + normalization + metadata, loaded safely.

A model file is a ``torch.save`` archive of plain containers, tensors and
primitives only. It is read with ``torch.load(weights_only=True)``, which
refuses any pickle that would build other objects or run code, and it is
written atomically (temporary file in the same folder, then rename), so a
crash mid-write never leaves a half-written model where a good one was.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

import napari_unet
from napari_unet.core.bioimageio import is_bioimageio_package
from napari_unet.core.device import move_to
from napari_unet.core.io import unique_path
from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.preprocess import Normalization
from napari_unet.core.pretrained import available_names, model_file

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ModelFileError",
    "load_model",
    "read_model_file",
    "save_model",
    "suggested_diameter",
    "suggested_threshold",
]

FORMAT = "napari-unet/model"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file is missing, corrupt, foreign or from an unsupported version."""


def save_model(
    path: str | os.PathLike[str],
    model: UNet,
    *,
    normalization: Normalization | None = None,
    half: bool = False,
    **metadata: Any,
) -> Path:
    """Save ``model`` to ``path`` atomically.

    Parameters
    ----------
    path : path-like
        Destination file (conventionally ``*.pt``); its folder must exist.
    model : UNet
        The network; its ``config``, weights, ``normalization`` and
        ``metadata`` are stored.
    normalization : Normalization, optional
        Overrides ``model.normalization``.
    half : bool
        Store floating-point weights as float16 (half the size; they load
        back as float32), as the bundled models are.
    **metadata
        Extra JSON-serializable information (training images, steps, scores),
        merged over ``model.metadata``.

    Returns
    -------
    path : Path
    """
    if not isinstance(model, UNet):
        raise TypeError(f"`model` must be a napari_unet UNet, got {type(model).__name__}")
    info = {**model.metadata, **metadata}
    try:
        json.dumps(info)
    except TypeError as err:
        raise ValueError(f"metadata must be JSON-serializable: {err}") from None
    norm = normalization or model.normalization
    state = {}
    for key, value in model.state_dict().items():
        dtype = torch.float16 if half and value.is_floating_point() else value.dtype
        state[key] = value.detach().cpu().to(dtype).clone()
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "napari_unet_version": napari_unet.__version__,
        "config": model.config.to_dict(),
        "normalization": norm.to_dict(),
        "metadata": info,
        "state_dict": state,
    }
    path = Path(path)
    tmp = unique_path(path.parent, f".{path.name}.", ".tmp")  # umask permissions, not 0600
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_model_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate the raw contents of a model file without building the model.

    ``path`` may also be a bundled model's name (see :mod:`napari_unet.core.pretrained`).
    """
    path = model_file(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path} (bundled models: {available_names()})")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a napari-unet model file (corrupt or another format)")
    if is_bioimageio_package(path):
        raise ModelFileError(f"{path} is a bioimage.io model package: open it with load_model")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = [line for line in str(err).splitlines() if "unsupported" in line.lower()]
        raise ModelFileError(
            f"{path} was refused: loading it would run code, which a napari-unet model file "
            f"never needs ({detail[0].strip() if detail else 'unsafe pickle'})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise ModelFileError(
            f"{path} is not a readable model file (corrupt or truncated: {err})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a napari-unet model file")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model format version {version!r}; this napari-unet reads "
            f"version {FORMAT_VERSION}"
        )
    for key, kind in (("config", dict), ("state_dict", dict), ("normalization", dict)):
        if not isinstance(payload.get(key), kind):
            raise ModelFileError(f"{path} is malformed: missing or invalid {key!r}")
    return payload


def load_model(path: str | os.PathLike[str]) -> UNet:
    """Load a model saved by :func:`save_model`, without executing code from the file.

    ``path`` is a model file, a bioimage.io package (``.zip``) written by
    :func:`~napari_unet.core.export_bioimageio`, or the name of a bundled model
    (``"nuclei"``, see :func:`~napari_unet.core.pretrained_models`); an existing
    file wins.

    Returns
    -------
    model : UNet
        In eval mode on the CPU, in its convolution layout
        (:func:`~napari_unet.core.device.conv_layout`), with ``normalization`` and
        ``metadata`` set.

    Raises
    ------
    ModelFileError
        If the file is missing, corrupt, truncated, foreign or would run code.
    """
    if is_bioimageio_package(model_file(path)):
        from napari_unet.core.bioimageio import load_package

        model = load_package(model_file(path))
    else:
        payload = read_model_file(path)
        try:
            config = UNetConfig(**payload["config"])
            model = UNet.from_config(config)
            model.load_state_dict(payload["state_dict"])
            model.normalization = Normalization.from_dict(payload["normalization"])
        except (TypeError, ValueError, KeyError, RuntimeError) as err:
            raise ModelFileError(f"{path} is malformed: {err}") from None
        model.metadata = dict(payload.get("metadata") or {})
    # in the CPU's convolution layout, as training returns its models: predicting on the
    # CPU then runs this model itself, with no copy
    return move_to(model, torch.device("cpu")).eval()


def suggested_threshold(model: UNet) -> float:
    """Foreground threshold stored with ``model`` by training (0.5 if none).

    Training with validation picks the threshold that scored best on the
    held-out images; see :class:`~napari_unet.core.TrainConfig`.
    """
    value = model.metadata.get("threshold")
    if isinstance(value, int | float) and 0 < value < 1:
        return float(value)
    return 0.5


def suggested_diameter(model: UNet) -> float | None:
    """Median diameter (px) of the objects ``model`` was trained on, if it knows it.

    Training records it (:func:`~napari_unet.core.postprocess.object_diameter`
    of the annotated cells); prediction with a ``diameter`` rescales the image
    by ``suggested_diameter(model) / diameter``.
    """
    value = model.metadata.get("diameter")
    if isinstance(value, int | float) and value > 0:
        return float(value)
    return None
