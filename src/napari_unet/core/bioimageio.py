"""bioimage.io model packages (format 0.5): export a model, load one we exported.

A package is a zip that bioimage.io consumers (deepImageJ, ilastik, QuPath,
BiaPy, ``bioimageio.core``) run without napari-unet. It holds the network as
:class:`PackagedUNet`, a :class:`~napari_unet.core.model.UNet` that mirrors the
borders of its input and returns softmax probabilities of the input's size,
i.e. exactly what :func:`~napari_unet.core.predict_tiled` computes for an image
whose sides are multiples of ``2 ** depth``. Its weights come twice:

- ``torchscript``: a traced module that needs only PyTorch;
- ``pytorch_state_dict``: the weights, with the architecture referenced as
  :class:`PackagedUNet` from this module (``pip install napari-unet-paper``).

Our percentile normalization is the package's ``scale_range`` preprocessing;
the instance post-processing (threshold, splitting touching cells) is
napari-unet's and is described in the package's README. The model's settings
and history travel in an attachment, so :func:`load_package` gives back the
same model, and :func:`~napari_unet.core.load_model` accepts such a zip.

Needs the ``export`` extra (``bioimageio.core`` and ``bioimageio.spec``).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import napari_unet
from napari_unet.core.model import UNet, UNetConfig
from napari_unet.core.predictor import halo, tile_for_core, tile_overhead
from napari_unet.core.preprocess import Normalization

__all__ = [
    "PackageCheck",
    "PackagedUNet",
    "check_package",
    "export_bioimageio",
    "is_bioimageio_package",
    "load_package",
    "package_geometry",
]

#: The file in the package that carries the model's settings and history.
SETTINGS_FILE = "napari_unet.json"

_DOI = "10.1007/978-3-319-24574-4_28"
_CITATION = (
    "O. Ronneberger, P. Fischer, T. Brox. U-Net: Convolutional Networks for Biomedical "
    "Image Segmentation. MICCAI 2015, LNCS 9351, 234-241."
)
_SAMPLE = Path(__file__).parent.parent / "_data" / "nuclei.tif"
_EXTRA = "pip install 'napari-unet-paper[export]'"


class PackagedUNet(nn.Module):
    """A U-Net that mirrors its input's borders: probabilities of the input's size.

    The input (B, C, H, W) is normalized, with H and W multiples of
    ``2 ** depth`` and larger than the padding; the output (B, n_classes, H, W)
    equals a single pass over the mirror-padded image, the overlap-tile result.
    Parameters are those of :class:`~napari_unet.core.model.UNet`.

    Examples
    --------
    >>> net = PackagedUNet(base_channels=2).eval()
    >>> net(torch.zeros(1, 1, 208, 224)).shape
    torch.Size([1, 2, 208, 224])
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        depth: int = 4,
        base_channels: int = 16,
        padding: str = "valid",
        norm: str | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        config = UNetConfig(in_channels, n_classes, depth, base_channels, padding, norm, dropout)  # type: ignore[arg-type]
        self.net = UNet.from_config(config)
        self.before = halo(self.net)
        self.after = tile_overhead(self.net) - self.before
        tile = tile_for_core(self.net, self.net.step)
        out = self.net.output_size(tile)
        assert out is not None
        self.offset = self.before - (tile - out) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (B, n_classes, H, W) of a normalized batch (B, C, H, W)."""
        height, width = x.shape[-2], x.shape[-1]
        padded = F.pad(x, (self.before, self.after, self.before, self.after), mode="reflect")
        prob = torch.softmax(self.net(padded), dim=1)
        o = self.offset
        return prob[..., o : o + height, o : o + width]


def package_geometry(model: UNet) -> dict[str, int]:
    """Sizes a package declares: input ``step`` and ``min``, output ``halo`` (pixels).

    The halo is the context a consumer that tiles must overlap its tiles by
    (the network's, rounded up to the pooling step so tiles keep its grid);
    the smallest input leaves one step of output after cropping the halo.

    Examples
    --------
    >>> package_geometry(UNet(base_channels=2))
    {'step': 16, 'min': 208, 'halo': 96}
    """
    step = model.step
    context = -(-halo(model) // step) * step
    return {"step": step, "min": 2 * context + step, "halo": context}


def is_bioimageio_package(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a zip with a bioimage.io description (``rdf.yaml``)."""
    path = Path(path)
    if not (path.is_file() and zipfile.is_zipfile(path)):
        return False
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    return bool({"rdf.yaml", "bioimageio.yaml"} & names)


def _spec() -> Any:
    try:
        from bioimageio.spec.model import v0_5
    except ImportError:
        raise ImportError(f"bioimage.io packages need the export extra: {_EXTRA}") from None
    return v0_5


def _sample_crop(sample: np.ndarray | None, model: UNet, size: int) -> np.ndarray:
    """A (C, h, w) float32 crop of ``sample`` (default: the bundled nuclei image)."""
    geometry = package_geometry(model)
    if sample is None:
        if model.in_channels != 1:
            raise ValueError(
                f"the model takes {model.in_channels} channels: pass a `sample` image of "
                "yours with them (channels first)"
            )
        import tifffile

        sample = tifffile.imread(_SAMPLE)
    image = np.asarray(sample)
    if model.in_channels == 1 and image.ndim == 2:
        image = image[None]
    if image.ndim != 3 or image.shape[0] != model.in_channels:
        raise ValueError(
            f"`sample` must have shape ({model.in_channels}, Y, X)"
            + (" or (Y, X)" if model.in_channels == 1 else "")
            + f", got {image.shape}"
        )
    sides = [min(size, s) // geometry["step"] * geometry["step"] for s in image.shape[1:]]
    if min(sides) < geometry["min"]:
        raise ValueError(
            f"`sample` must be at least {geometry['min']} x {geometry['min']} pixels, got "
            f"{image.shape[1]} x {image.shape[2]}"
        )
    y0, x0 = ((s - c) // 2 for s, c in zip(image.shape[1:], sides, strict=True))
    crop = image[:, y0 : y0 + sides[0], x0 : x0 + sides[1]]
    return np.ascontiguousarray(crop, dtype=np.float32)


def _scale_range(image: np.ndarray, norm: Normalization, eps: float) -> np.ndarray:
    """The package's ``scale_range`` preprocessing, as its consumers compute it."""
    lo, hi = np.percentile(image, [norm.low, norm.high], axis=(-2, -1), keepdims=True)
    return ((image - lo) / (hi - lo + eps)).astype(np.float32)


def _cover(crop: np.ndarray, prob: np.ndarray, path: Path) -> None:
    """Input | foreground probability side by side (2:1, as bioimage.io asks)."""
    import matplotlib.pyplot as plt

    image = Normalization()(crop[0])
    side = np.concatenate([np.clip(image, 0, 1), prob[0]], axis=1)
    plt.imsave(path, side, cmap="gray", vmin=0.0, vmax=1.0)


def _readme(model: UNet, name: str, geometry: dict[str, int]) -> str:
    meta = model.metadata
    lines = [
        f"# {name}",
        "",
        "A U-Net (Ronneberger, Fischer & Brox, 2015) exported by napari-unet "
        f"{napari_unet.__version__} (`pip install napari-unet-paper`).",
        "",
        "## Use",
        "",
        f"- Input `raw`: (batch, channel, y, x), {model.in_channels} channel(s); y and x "
        f"multiples of {geometry['step']}, at least {geometry['min']}. Preprocessing "
        f"`scale_range`: each plane's {model.normalization.low} and "
        f"{model.normalization.high} percentiles map to 0 and 1.",
        f"- Output `probability`: softmax over {model.n_classes} classes "
        f"({', '.join(_class_names(model))}), the input's size; the borders are mirrored "
        "inside the network (overlap-tile, as in the paper). To tile, overlap tiles by "
        f"the halo of {geometry['halo']} px.",
        "- Instances: threshold the foreground at "
        f"{meta.get('threshold', 0.5)} and label connected components; napari-unet "
        "also splits touching cells (`napari-unet predict` or the napari plugin, which "
        "open this zip directly).",
        "",
        "## Architecture",
        "",
        "```json",
        json.dumps(model.config.to_dict(), indent=1),
        "```",
    ]
    training = {k: meta[k] for k in ("training", "pretraining", "best_score") if k in meta}
    if training:
        lines += ["", "## Training", "", "```json", json.dumps(training, indent=1), "```"]
    lines += ["", "## Validation", ""]
    if "scores" in meta:
        lines += ["Scores recorded with the model:", "", "```json"]
        lines += [json.dumps(meta["scores"], indent=1), "```", ""]
    lines += [
        "The test tensors are the output of the network on a real image, and the "
        "torchscript weights reproduce napari-unet's tiled prediction on them "
        "(napari-unet's tests check both)."
    ]
    lines += [
        "",
        "## Citation",
        "",
        f"{_CITATION} doi:{_DOI}",
        "",
        "The test image is a crop of one DSB 2018 fluorescence image (CC0) unless the "
        "exporter chose another sample.",
        "",
    ]
    return "\n".join(lines)


def _class_names(model: UNet) -> list[str]:
    return ["background", "cell", *(f"class{i}" for i in range(2, model.n_classes))]


def export_bioimageio(
    model: UNet,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    sample: np.ndarray | None = None,
    authors: Sequence[str] = (),
    license: str = "CC-BY-4.0",
    description: str | None = None,
) -> Path:
    """Write ``model`` as a bioimage.io model package (format 0.5) to a zip at ``path``.

    Parameters
    ----------
    model : UNet
        The network, with its ``normalization`` and ``metadata``.
    path : path-like
        The zip to write (its folder must exist).
    name : str, optional
        The package's name (default: from the model's metadata); characters
        that bioimage.io does not allow in names become ``-``.
    sample : array of shape (Y, X) or (C, Y, X), optional
        An image of yours for the test tensors and the cover (default: the
        bundled nuclei image); its centre, at most 256 px a side, is used.
    authors : sequence of str
        The model's authors (default: the login name).
    license : str
        SPDX identifier of the weights' license.
    description : str, optional
        One line on what the model segments.

    Returns
    -------
    path : Path
    """
    if not isinstance(model, UNet):
        raise TypeError(f"`model` must be a napari_unet UNet, got {type(model).__name__}")
    v0_5 = _spec()
    from bioimageio.spec import save_bioimageio_package

    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder not found: {path.parent}")
    name = name or f"napari-unet {model.metadata.get('name', 'U-Net')}"
    name = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", name)[:128].ljust(5, "-")
    geometry = package_geometry(model)
    packaged = PackagedUNet(**model.config.to_dict()).eval()  # type: ignore[arg-type]
    packaged.net.load_state_dict(model.state_dict())
    crop = _sample_crop(sample, model, 256)
    norm, eps = model.normalization, 1e-6
    test_input = crop[None]
    with torch.inference_mode():
        test_output = packaged(torch.from_numpy(_scale_range(test_input, norm, eps))).numpy()
    with tempfile.TemporaryDirectory(prefix="napari-unet-export-") as tmp:
        folder = Path(tmp)
        torch.save(packaged.state_dict(), folder / "weights.pt")
        with warnings.catch_warnings():
            # tracing is deprecated in favour of torch.export, but torchscript is what
            # bioimage.io consumers run; the trace is checked against the module below
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(packaged, torch.from_numpy(test_input))
        traced.save(str(folder / "weights_torchscript.pt"))
        np.save(folder / "test_input.npy", test_input)
        np.save(folder / "test_output.npy", test_output)
        _cover(crop, test_output[0, 1:].sum(axis=0, keepdims=True), folder / "cover.png")
        (folder / "README.md").write_text(_readme(model, name, geometry))
        settings = {
            "napari_unet_version": napari_unet.__version__,
            "config": model.config.to_dict(),
            "normalization": norm.to_dict(),
            "metadata": model.metadata,
        }
        (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=1))
        (folder / "environment.yaml").write_text(
            "name: napari-unet\nchannels:\n  - conda-forge\ndependencies:\n  - python>=3.11\n"
            f"  - pytorch>={torch.__version__.split('+')[0]}\n  - pip\n  - pip:\n"
            f"      - napari-unet-paper=={napari_unet.__version__}\n"
        )
        descr = _description(
            v0_5, model, folder, name, geometry, authors, license, description, eps
        )
        save_bioimageio_package(descr, output_path=path)
    return path


def _description(
    v0_5: Any,
    model: UNet,
    folder: Path,
    name: str,
    geometry: dict[str, int],
    authors: Sequence[str],
    license: str,
    description: str | None,
    eps: float,
) -> Any:
    """The bioimage.io ``ModelDescr`` of the files in ``folder``."""
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromLibraryDescr,
        Author,
        AxisId,
        BatchAxis,
        ChannelAxis,
        CiteEntry,
        Doi,
        FileDescr,
        Identifier,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        LicenseId,
        ModelDescr,
        OutputTensorDescr,
        ParameterizedSize,
        PytorchStateDictWeightsDescr,
        ScaleRangeDescr,
        ScaleRangeKwargs,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxisWithHalo,
        TensorId,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )

    norm = model.normalization
    size = ParameterizedSize(min=geometry["min"], step=geometry["step"])
    raw = InputTensorDescr(
        id=TensorId("raw"),
        description="image, float32 (any range: scaled by percentiles)",
        axes=[
            BatchAxis(),
            ChannelAxis(channel_names=[f"channel{i}" for i in range(model.in_channels)]),
            SpaceInputAxis(id=AxisId("y"), size=size),
            SpaceInputAxis(id=AxisId("x"), size=size),
        ],
        test_tensor=FileDescr(source=folder / "test_input.npy"),
        data=IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            ScaleRangeDescr(
                kwargs=ScaleRangeKwargs(
                    axes=[AxisId("y"), AxisId("x")],
                    min_percentile=norm.low,
                    max_percentile=norm.high,
                    eps=eps,
                )
            )
        ],
    )
    same = [
        SpaceOutputAxisWithHalo(
            id=AxisId(axis),
            size=SizeReference(tensor_id=TensorId("raw"), axis_id=AxisId(axis)),
            halo=geometry["halo"],
        )
        for axis in ("y", "x")
    ]
    probability = OutputTensorDescr(
        id=TensorId("probability"),
        description="softmax probability of each class",
        axes=[BatchAxis(), ChannelAxis(channel_names=_class_names(model)), *same],
        test_tensor=FileDescr(source=folder / "test_output.npy"),
        data=IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    version = Version(torch.__version__.split("+")[0])
    weights = WeightsDescr(
        pytorch_state_dict=PytorchStateDictWeightsDescr(
            source=folder / "weights.pt",
            architecture=ArchitectureFromLibraryDescr(
                callable=Identifier(PackagedUNet.__name__),
                import_from=__name__,
                kwargs=json.loads(json.dumps(model.config.to_dict())),
            ),
            pytorch_version=version,
            dependencies=FileDescr(source=folder / "environment.yaml"),
        ),
        torchscript=TorchscriptWeightsDescr(
            source=folder / "weights_torchscript.pt",
            pytorch_version=version,
            parent="pytorch_state_dict",
        ),
    )
    return ModelDescr(
        name=name,
        description=description
        or f"U-Net (valid convolutions, overlap-tile) for 2D {' '.join(_class_names(model)[1:])} "
        "segmentation, exported by napari-unet",
        authors=[Author(name=a) for a in (authors or [getpass.getuser()])],
        cite=[CiteEntry(text=_CITATION, doi=Doi(_DOI))],
        license=LicenseId(license),
        documentation=FileDescr(source=folder / "README.md"),
        covers=[FileDescr(source=folder / "cover.png")],
        attachments=[FileDescr(source=folder / SETTINGS_FILE)],
        tags=["unet", "segmentation", "2d", "pytorch", "napari-unet"],
        inputs=[raw],
        outputs=[probability],
        weights=weights,
    )


@dataclass(frozen=True)
class PackageCheck:
    """The outcome of ``bioimageio.core``'s model test on a package.

    Attributes
    ----------
    passed : bool
        Whether every check passed.
    failures : tuple of str
        One line per failed check.
    """

    passed: bool
    failures: tuple[str, ...]


def check_package(path: str | os.PathLike[str]) -> PackageCheck:
    """Run ``bioimageio.core``'s model test on the package at ``path``.

    It validates the description and runs both weight formats on the test
    tensors and on inputs of several sizes and batch sizes; everything is read
    from the zip, nothing is downloaded.
    """
    _spec()
    from bioimageio.core import test_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = test_model(Path(path))
    failed = [detail for detail in summary.details if detail.status == "failed"]
    failures = [
        f"{detail.name}: {(error.msg or 'failed').splitlines()[0]}"
        for detail in failed
        for error in detail.errors
    ]
    failures += [detail.name for detail in failed if not detail.errors]
    return PackageCheck(summary.status == "passed", tuple(failures))


def load_package(path: str | os.PathLike[str]) -> UNet:
    """Load a model from a bioimage.io package written by :func:`export_bioimageio`.

    Raises
    ------
    ModelFileError
        If the zip is not a valid bioimage.io model package, or is one that
        napari-unet did not write (run those with ``bioimageio.core``).
    """
    from napari_unet.core.checkpoint import ModelFileError

    path = Path(path)
    try:
        v0_5 = _spec()
    except ImportError as err:
        raise ModelFileError(f"{path} is a bioimage.io model package; {err}") from None
    from bioimageio.spec import load_model_description

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            descr = load_model_description(path, perform_io_checks=False)
    except ValueError as err:
        reason = " ".join(str(err).split())
        raise ModelFileError(
            f"{path} is not a valid bioimage.io model package: {reason}"
        ) from None
    state = getattr(descr.weights, "pytorch_state_dict", None)
    arch = getattr(state, "architecture", None)
    ours = (
        isinstance(descr, v0_5.ModelDescr)
        and isinstance(arch, v0_5.ArchitectureFromLibraryDescr)
        and (arch.import_from, arch.callable) == (__name__, PackagedUNet.__name__)
    )
    if not ours:
        made = f" ({arch.import_from}.{arch.callable})" if arch is not None else ""
        raise ModelFileError(
            f"{path} is a bioimage.io model package that napari-unet did not export{made}; "
            "run it with bioimageio.core, or export a napari-unet model with "
            "`napari-unet export`"
        )
    assert state is not None
    with zipfile.ZipFile(path) as archive:
        try:
            settings = json.loads(archive.read(SETTINGS_FILE))
            with archive.open(Path(str(state.source)).name) as f:
                weights = torch.load(f, map_location="cpu", weights_only=True)
        except (KeyError, ValueError, RuntimeError, zipfile.BadZipFile) as err:
            raise ModelFileError(f"{path} is a damaged napari-unet package: {err}") from None
    try:
        packaged = PackagedUNet(**settings["config"])
        packaged.load_state_dict(weights)
        model = packaged.net
        model.normalization = Normalization.from_dict(settings["normalization"])
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise ModelFileError(f"{path} is a damaged napari-unet package: {err}") from None
    model.metadata = dict(settings.get("metadata") or {})
    return model.eval()
