"""Model versions: every training run of a session, its lineage and its scores.

Each training run becomes a :class:`ModelVersion` (``"v1"``, ``"v2"``, ...):
when it was made, what it started from (an earlier version, a bundled model,
a file, or ``"scratch"``), a summary of the annotations it learned from
(:class:`AnnotationSummary`, with a hash so identical annotations are
recognisable) and its own validation scores. A :class:`VersionStore` keeps
the versions in a folder (by default next to the training autosave,
:func:`versions_folder`): one model file per version, written with
:func:`~napari_unet.core.save_model` and carrying its record and its parent
chain in its metadata, and a JSON index replaced atomically.

To see whether a correction helped, :meth:`VersionStore.compare` scores
several versions on the **same** held-out annotations
(:mod:`napari_unet.core.held_out`); a version keeps the scores computed when
it was added (:attr:`ModelVersion.comparison`).

Listing and reading records does not import torch; saving, loading and
scoring models do.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet.core.io import unique_path

if TYPE_CHECKING:
    from napari_unet.core.held_out import HeldOut, HeldOutScores
    from napari_unet.core.model import UNet
    from napari_unet.core.training import TrainResult

__all__ = [
    "INDEX_NAME",
    "AnnotationSummary",
    "ModelVersion",
    "UnknownVersionError",
    "VersionError",
    "VersionStore",
    "summarize_annotations",
    "training_scores",
    "versions_folder",
]

logger = logging.getLogger(__name__)

#: File name of a store's index, inside its folder.
INDEX_NAME = "versions.json"
_INDEX_FORMAT = "napari-unet/versions"
_INDEX_VERSION = 1
_NAME = re.compile(r"v([1-9][0-9]*)")
#: The validation scores a record keeps (those :func:`~napari_unet.core.training.evaluate` gives).
_SCORE_KEYS = ("iou", "f1", "score", "threshold")


class VersionError(ValueError):
    """A version store's index is missing, corrupt or malformed, or a record is invalid."""


class UnknownVersionError(VersionError, KeyError):
    """A version name that the store does not hold."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""


def versions_folder(autosave: str | os.PathLike[str]) -> Path:
    """The default version folder for a training autosave file: beside it.

    Parameters
    ----------
    autosave : path-like
        The file training writes its best model to as it goes.

    Returns
    -------
    folder : Path
        ``<autosave stem>-versions`` in the autosave's folder (not created).

    Examples
    --------
    >>> versions_folder("cfg/napari-unet-autosave.pt").as_posix()
    'cfg/napari-unet-autosave-versions'
    """
    path = Path(autosave)
    return path.with_name(f"{path.stem}-versions")


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _float_dict(value: Any, what: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise VersionError(f"{what} must be a mapping of names to numbers, got {value!r}")
    out = {}
    for key, number in value.items():
        if not isinstance(key, str) or isinstance(number, bool):
            raise VersionError(f"{what} must map names to numbers, got {key!r}: {number!r}")
        try:
            out[key] = float(number)
        except (TypeError, ValueError):
            raise VersionError(
                f"{what} must map names to numbers, got {key!r}: {number!r}"
            ) from None
    return out


# ---------------------------------------------------------------- annotations


@dataclass(frozen=True)
class AnnotationSummary:
    """What a training run learned from, and a hash that recognises the same annotations.

    Attributes
    ----------
    n_examples : int
        Training examples (annotated planes, rectangles or images).
    n_pixels : int
        Annotated pixels (inside the examples' annotated regions).
    n_cells : int
        Labelled objects inside the annotated regions (summed over examples).
    digest : str
        SHA-256 (hex) of the examples' labels and annotated regions; the
        same for the same annotations, whatever their dtype or order.
    sources : tuple of str
        Where the examples came from (e.g. ``"masks: plane 3"``), if known.
    """

    n_examples: int
    n_pixels: int
    n_cells: int
    digest: str
    sources: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {**dataclasses.asdict(self), "sources": list(self.sources)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnnotationSummary:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        VersionError
            If ``data`` lacks a field or holds one of the wrong kind.
        """
        try:
            counts = {k: data[k] for k in ("n_examples", "n_pixels", "n_cells")}
            digest, sources = data["digest"], data.get("sources", ())
        except (KeyError, TypeError) as err:
            raise VersionError(f"malformed annotation summary {data!r}: {err}") from None
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in counts.values()):
            raise VersionError(f"malformed annotation summary counts: {counts}")
        if not isinstance(digest, str) or not all(isinstance(s, str) for s in sources):
            raise VersionError(f"malformed annotation summary {data!r}")
        return cls(**counts, digest=digest, sources=tuple(sources))


def _array_digest(*arrays: np.ndarray) -> bytes:
    h = hashlib.sha256()
    for array in arrays:
        h.update(repr((array.dtype.str, array.shape)).encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.digest()


def summarize_annotations(
    labels: Sequence[Any],
    masks: Sequence[Any | None] | None = None,
    *,
    sources: Sequence[str] = (),
) -> AnnotationSummary:
    """Summarize the annotations of a training run (the ``labels`` and ``masks`` it got).

    Parameters
    ----------
    labels : sequence of arrays of shape (M, N)
        Instance labels of each training example (0 = background), as given
        to :func:`~napari_unet.core.iter_train` (e.g. ``[c.labels for c in crops]``).
    masks : sequence of bool arrays or None, optional
        Annotated region of each example (None = the whole example).
    sources : sequence of str
        Where each example came from, kept for display.

    Returns
    -------
    AnnotationSummary

    Examples
    --------
    >>> labels = np.zeros((4, 5), np.uint8); labels[1:3, 1:3] = 7
    >>> s = summarize_annotations([labels])
    >>> s.n_examples, s.n_pixels, s.n_cells
    (1, 20, 1)
    >>> summarize_annotations([labels.astype(np.int32)]).digest == s.digest
    True
    """
    labels = list(labels)
    masks = [None] * len(labels) if masks is None else list(masks)
    if len(masks) != len(labels):
        raise ValueError(f"got {len(labels)} label images but {len(masks)} masks")
    digests, pixels, cells = [], 0, 0
    for lab, mask in zip(labels, masks, strict=True):
        lab = np.asarray(lab)
        if lab.ndim != 2:
            raise ValueError(f"each label image must be 2D, got shape {lab.shape}")
        known = np.ones(lab.shape, bool) if mask is None else np.asarray(mask, bool)
        if known.shape != lab.shape:
            raise ValueError(f"mask shape {known.shape} differs from the labels' {lab.shape}")
        if np.issubdtype(lab.dtype, np.floating) or lab.dtype == bool:
            canonical = lab.astype(np.int64)
        else:
            canonical = lab.astype("<i8")
        canonical = np.where(known, canonical, 0)  # unknown pixels do not count
        digests.append(_array_digest(canonical, known.astype(np.uint8)))
        pixels += int(known.sum())
        cells += int(np.count_nonzero(np.unique(canonical[known])))
    combined = hashlib.sha256(b"".join(sorted(digests))).hexdigest()
    return AnnotationSummary(len(labels), pixels, cells, combined, tuple(sources))


# ---------------------------------------------------------------- versions


def training_scores(result: TrainResult) -> dict[str, float]:
    """The validation scores of a training run's best model (empty without validation).

    Parameters
    ----------
    result : TrainResult
        What :func:`~napari_unet.core.iter_train` returned.

    Returns
    -------
    scores : dict
        ``{"iou", "f1", "score", "threshold"}`` at the best step.
    """
    if result.best_score is None:
        return {}
    for record in result.history:
        if record.get("step") == result.best_step and "score" in record:
            return {k: float(record[k]) for k in _SCORE_KEYS if k in record}
    return {"score": float(result.best_score), "threshold": float(result.threshold)}


@dataclass(frozen=True)
class ModelVersion:
    """One training run of a session: a model version and where it came from.

    Attributes
    ----------
    name : str
        ``"v1"``, ``"v2"``, ... in the order the versions were made.
    created : str
        When it was added (ISO 8601, local time with its UTC offset).
    parent : str
        What training started from: an earlier version's name, a bundled
        model's name (``"nuclei"``), a model file, or ``"scratch"``.
    lineage : tuple of str
        The parent chain, nearest first, ending with what the first version
        started from (e.g. ``("v1", "nuclei")`` for a v2 fine-tuned from v1).
    annotations : AnnotationSummary or None
        What it was trained on.
    scores : dict of str to float
        Its own validation scores from training (:func:`training_scores`);
        empty if training did not validate.
    file : str
        Its model file, relative to the store's folder.
    comparison : HeldOutScores or None
        Scores of this and earlier versions on the same held-out annotations,
        if they were computed when it was added.

    Examples
    --------
    >>> v = ModelVersion("v1", "2026-11-20T10:00:00+01:00", "scratch", ("scratch",),
    ...                  None, {"score": 0.7}, "v1.pt")
    >>> ModelVersion.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    True
    """

    name: str
    created: str
    parent: str
    lineage: tuple[str, ...]
    annotations: AnnotationSummary | None
    scores: dict[str, float] = field(default_factory=dict)
    file: str = ""
    comparison: HeldOutScores | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "name": self.name,
            "created": self.created,
            "parent": self.parent,
            "lineage": list(self.lineage),
            "annotations": None if self.annotations is None else self.annotations.to_dict(),
            "scores": dict(self.scores),
            "file": self.file,
            "comparison": None if self.comparison is None else self.comparison.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelVersion:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        VersionError
            If ``data`` lacks a field or holds one of the wrong kind.
        """
        if not isinstance(data, Mapping):
            raise VersionError(f"a version record must be a mapping, got {data!r}")
        try:
            name, created, parent = data["name"], data["created"], data["parent"]
            lineage, file = data["lineage"], data["file"]
        except KeyError as err:
            raise VersionError(f"version record {data!r} lacks {err}") from None
        texts = (name, created, parent, file)
        if not all(isinstance(t, str) for t in texts) or not _NAME.fullmatch(str(name)):
            raise VersionError(f"malformed version record {data!r}")
        if not isinstance(lineage, list | tuple) or not all(isinstance(n, str) for n in lineage):
            raise VersionError(f"malformed lineage in version record {name!r}: {lineage!r}")
        from napari_unet.core.held_out import HeldOutScores

        annotations = data.get("annotations")
        comparison = data.get("comparison")
        return cls(
            name,
            created,
            parent,
            tuple(lineage),
            None if annotations is None else AnnotationSummary.from_dict(annotations),
            _float_dict(data.get("scores") or {}, f"scores of {name!r}"),
            file,
            None if comparison is None else HeldOutScores.from_dict(comparison),
        )

    @property
    def number(self) -> int:
        """The version's number (``2`` for ``"v2"``)."""
        match = _NAME.fullmatch(self.name)
        return int(match.group(1)) if match else 0

    def describe(self) -> str:
        """A one-line label for a version picker.

        Examples
        --------
        >>> ModelVersion("v2", "2026-11-20T10:00:00+01:00", "v1", ("v1", "scratch"),
        ...              None, {"score": 0.71}).describe()
        'v2 (from v1, 2026-11-20 10:00, score 0.71)'
        """
        parts = [f"from {self.parent}", self.created[:16].replace("T", " ")]
        if "score" in self.scores:
            parts.append(f"score {self.scores['score']:.2f}")
        return f"{self.name} ({', '.join(parts)})"


class VersionStore:
    """The model versions kept in a folder: one model file each and a JSON index.

    The index (:data:`INDEX_NAME`) is read afresh by every call, so several
    stores on one folder (or a store reopened in a later napari session) see
    the same versions. It is replaced atomically (temporary file, then
    ``os.replace``) after the model file is written, so a crash leaves
    either the old index or the new one; :meth:`repair` rebuilds a lost or
    corrupt index from the records the model files carry.

    Parameters
    ----------
    folder : path-like
        The store's folder (created on the first :meth:`add`), e.g.
        ``versions_folder(autosave_path())``.

    Examples
    --------
    >>> store = VersionStore("no-such-folder")
    >>> store.list(), len(store), "v1" in store
    ([], 0, False)
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"VersionStore({str(self.folder)!r})"

    @property
    def index_path(self) -> Path:
        """The index file."""
        return self.folder / INDEX_NAME

    # -- reading -----------------------------------------------------------
    def _model_files(self) -> builtins.list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("v*.pt") if _NAME.fullmatch(p.stem))

    def _read(self) -> builtins.list[ModelVersion]:
        path = self.index_path
        if not path.is_file():
            orphans = self._model_files()
            if orphans:
                raise VersionError(
                    f"the version index {path} is missing but {len(orphans)} version file(s) "
                    f"are there; VersionStore.repair() rebuilds the index from them"
                )
            return []
        hint = "the model files are untouched; VersionStore.repair() rebuilds the index"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise VersionError(f"the version index {path} is corrupt ({err}); {hint}") from None
        if not isinstance(data, dict) or data.get("format") != _INDEX_FORMAT:
            raise VersionError(f"{path} is not a napari-unet version index; {hint}")
        if data.get("format_version") != _INDEX_VERSION:
            raise VersionError(
                f"{path} has index format version {data.get('format_version')!r}; this "
                f"napari-unet reads version {_INDEX_VERSION}"
            )
        records = data.get("versions")
        if not isinstance(records, builtins.list):
            raise VersionError(f"the version index {path} is malformed (no version list); {hint}")
        try:
            versions = [ModelVersion.from_dict(r) for r in records]
        except VersionError as err:
            raise VersionError(f"the version index {path} is malformed: {err}; {hint}") from None
        names = [v.name for v in versions]
        if len(set(names)) != len(names):
            raise VersionError(f"the version index {path} lists a name twice; {hint}")
        return versions

    def list(self) -> builtins.list[ModelVersion]:
        """All versions, oldest first.

        Raises
        ------
        VersionError
            If the index is missing (while version files exist), corrupt or
            malformed.
        """
        return self._read()

    def names(self) -> builtins.list[str]:
        """The versions' names, oldest first."""
        return [v.name for v in self._read()]

    def __len__(self) -> int:
        return len(self._read())

    def __iter__(self) -> Iterator[ModelVersion]:
        return iter(self._read())

    def __contains__(self, name: object) -> bool:
        return any(v.name == name for v in self._read())

    @property
    def latest(self) -> ModelVersion | None:
        """The newest version (None if there is none)."""
        versions = self._read()
        return versions[-1] if versions else None

    def get(self, name: str) -> ModelVersion:
        """The record of version ``name``.

        Raises
        ------
        UnknownVersionError
            If the store has no such version (the message lists those it has).
        """
        versions = self._read()
        for version in versions:
            if version.name == name:
                return version
        have = ", ".join(v.name for v in versions) or "none yet"
        raise UnknownVersionError(f"no model version {name!r} in {self.folder} (versions: {have})")

    def path(self, name: str) -> Path:
        """The model file of version ``name``."""
        return self.folder / self.get(name).file

    def load(self, name: str) -> UNet:
        """Load version ``name`` with the safe model loader (:func:`~napari_unet.core.load_model`).

        Raises
        ------
        UnknownVersionError
            If the store has no such version.
        ModelFileError
            If its model file is missing or corrupt.
        """
        from napari_unet.core.checkpoint import load_model

        return load_model(self.path(name))

    def lineage(self, parent: str) -> tuple[str, ...]:
        """The parent chain of a new version started from ``parent``, nearest first.

        ``parent`` is a version name of this store (its chain follows) or
        anything else (a bundled model, a file, ``"scratch"``: the chain ends).
        """
        versions = {v.name: v for v in self._read()}
        if parent in versions:
            return (parent, *versions[parent].lineage)
        return (parent,)

    def next_name(self) -> str:
        """The name the next :meth:`add` will give (after every existing version and file)."""
        numbers = [v.number for v in self._read()]
        numbers += [int(m.group(1)) for p in self._model_files() if (m := _NAME.fullmatch(p.stem))]
        return f"v{max(numbers, default=0) + 1}"

    # -- writing -----------------------------------------------------------
    def add(
        self,
        model: UNet | TrainResult,
        *,
        parent: str | os.PathLike[str] | ModelVersion | None = None,
        annotations: AnnotationSummary | None = None,
        scores: Mapping[str, float] | None = None,
        comparison: HeldOutScores | None = None,
    ) -> ModelVersion:
        """Save a trained model as the next version.

        The model file (``<name>.pt``) is written first with
        :func:`~napari_unet.core.save_model`; its metadata holds ``name``,
        ``version`` (the record) and ``lineage`` (the records of the
        versions of its parent chain, nearest first). Then the index is
        replaced atomically. ``model`` itself is not modified.

        Parameters
        ----------
        model : UNet or TrainResult
            The trained model, or the training result (its model and, unless
            ``scores`` is given, its :func:`training_scores`).
        parent : str or ModelVersion, optional
            What training started from: a version of this store (or its
            name), a bundled model's name, a model file or ``"scratch"``.
            None takes what training recorded in the model's metadata
            (``"scratch"``, or the starting model's ``name``: a version loaded
            from a store is named after it).
        annotations : AnnotationSummary, optional
            From :func:`summarize_annotations`.
        scores : mapping of str to float, optional
            Its validation scores.
        comparison : HeldOutScores, optional
            Scores on shared held-out annotations
            (:func:`~napari_unet.core.held_out.score_versions`;
            name the new model :meth:`next_name` there).

        Returns
        -------
        ModelVersion

        Raises
        ------
        VersionError
            If the index is corrupt (nothing is written then).
        """
        from napari_unet.core.checkpoint import save_model
        from napari_unet.core.model import UNet

        if isinstance(model, UNet):
            net = model
        else:
            net = model.model
            if scores is None:
                scores = training_scores(model)
        if not isinstance(net, UNet):
            raise TypeError(f"`model` must be a UNet or a TrainResult, got {type(model).__name__}")
        versions = self._read()  # refuse to go on over a corrupt index
        if isinstance(parent, ModelVersion):
            parent = parent.name
        if parent is None:
            training = net.metadata.get("training")
            start = training.get("start") if isinstance(training, dict) else None
            parent = str(start) if start else "unknown"
        parent = os.fspath(parent)
        name = self.next_name()
        by_name = {v.name: v for v in versions}
        lineage = self.lineage(parent)
        record = ModelVersion(
            name=name,
            created=_now(),
            parent=parent,
            lineage=lineage,
            annotations=annotations,
            scores=_float_dict(scores or {}, "scores"),
            file=f"{name}.pt",
            comparison=comparison,
        )
        ancestors = [by_name[n].to_dict() for n in lineage if n in by_name]
        self.folder.mkdir(parents=True, exist_ok=True)
        save_model(
            self.folder / record.file,
            net,
            name=name,
            version=record.to_dict(),
            lineage=ancestors,
        )
        self._write([*versions, record])
        return record

    def _write(self, versions: Sequence[ModelVersion]) -> None:
        data = {
            "format": _INDEX_FORMAT,
            "format_version": _INDEX_VERSION,
            "versions": [v.to_dict() for v in versions],
        }
        text = json.dumps(data, indent=2)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = unique_path(self.folder, f".{INDEX_NAME}.", ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.index_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def repair(self) -> builtins.list[ModelVersion]:
        """Rebuild the index from the records the model files carry.

        The index it replaces, if any, is kept beside it (``versions.json.old-<time>``);
        unreadable model files are skipped (and logged).

        Returns
        -------
        versions : list of ModelVersion
            The versions found, oldest first.
        """
        from napari_unet.core.checkpoint import ModelFileError, read_model_file

        found = []
        for path in self._model_files():
            try:
                meta = read_model_file(path).get("metadata")
                info = meta.get("version") if isinstance(meta, dict) else None
                if not isinstance(info, dict):
                    raise VersionError("it carries no version record")
                record = ModelVersion.from_dict(info)
            except (ModelFileError, VersionError) as err:
                logger.warning("skipping %s while rebuilding the version index: %s", path, err)
                continue
            found.append(dataclasses.replace(record, file=path.name))
        found.sort(key=lambda v: v.number)
        if self.index_path.exists():
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            os.replace(self.index_path, self.index_path.with_name(f"{INDEX_NAME}.old-{stamp}"))
        if found:
            self._write(found)
        return found

    def compare(
        self,
        names: Sequence[str],
        held_out: HeldOut,
        *,
        extra: Mapping[str, UNet] | None = None,
        **options: Any,
    ) -> HeldOutScores:
        """Score versions of this store (and ``extra`` models) on the same held-out annotations.

        Parameters
        ----------
        names : sequence of str
            Versions to load and score.
        held_out : HeldOut
            From :func:`~napari_unet.core.held_out.held_out_set`.
        extra : mapping of str to UNet, optional
            Models not (yet) in the store, e.g. ``{store.next_name(): result.model}``.
        **options
            ``threshold``, ``min_size``, ``device`` of
            :func:`~napari_unet.core.held_out.score_versions`.

        Returns
        -------
        HeldOutScores
        """
        from napari_unet.core.held_out import score_versions

        models = {name: self.load(name) for name in names}
        models.update(extra or {})
        return score_versions(models, held_out, **options)
