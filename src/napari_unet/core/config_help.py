"""Help text for a config's fields, from the config itself.

The frozen configs (:class:`~napari_unet.core.train_config.TrainConfig`,
:class:`~napari_unet.core.segment_config.SegmentConfig`) document every field
in the ``Attributes`` section of their numpy-style docstring. The command
line and the widgets build their help (and the defaults they state) from
there, so a changed default or description shows up everywhere at once.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["field_default", "field_docs", "option_help"]


def field_docs(cls: type) -> dict[str, str]:
    """Descriptions of a dataclass's fields from its docstring's ``Attributes`` section.

    Entries like ``w0, sigma : float`` document several fields at once.

    Examples
    --------
    >>> from napari_unet.core.segment_config import SegmentConfig
    >>> field_docs(SegmentConfig)["min_size"]
    'Objects smaller than this many pixels are removed.'
    """
    doc = inspect.cleandoc(cls.__doc__ or "")
    match = re.search(r"^Attributes\n-+\n(.*?)(?:\n\S[^\n]*\n-+\n|\Z)", doc, re.S | re.M)
    if match is None:
        return {}
    docs: dict[str, str] = {}
    names: list[str] = []
    for line in match.group(1).splitlines():
        if line and not line[0].isspace():
            names = [n.strip() for n in line.split(":")[0].split(",")]
            for name in names:
                docs[name] = ""
        elif line.strip():
            for name in names:
                docs[name] = f"{docs[name]} {line.strip()}".strip()
    fields = {f.name for f in dataclasses.fields(cls)}
    return {name: text for name, text in docs.items() if name in fields}


def field_default(cls: type, name: str) -> Any:
    """The default value of field ``name`` of dataclass ``cls``."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise ValueError(f"{cls.__name__}.{name} has no default")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def _first_sentence(text: str) -> str:
    """The text up to its first "." or ";" outside parentheses, lower-cased first letter."""
    depth, end = 0, len(text)
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and char in ".;" and (i + 1 == len(text) or text[i + 1] == " "):
            end = i
            break
    return text[:1].lower() + text[1:end]


def option_help(
    cls: type,
    name: str,
    *,
    summary: str | None = None,
    default: str | None = None,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """One line of help for field ``name``: what it is and its default.

    Parameters
    ----------
    cls : dataclass type
        The config.
    name : str
        The field.
    summary : str, optional
        What the option does; the first sentence of the field's description
        if None.
    default : str, optional
        How to say the default; the field's default value if None.
    presets : mapping, optional
        Task presets (``{task: {field: value}}``); tasks that change the
        field are named after the default.

    Examples
    --------
    >>> from napari_unet.core.segment_config import SegmentConfig
    >>> option_help(SegmentConfig, "expand")
    'grow every cell by this many pixels into the background (no merging) (default: 0)'
    """
    docs = field_docs(cls)
    if summary is None:
        if name not in docs:
            raise KeyError(f"{cls.__name__}'s docstring does not document {name!r}")
        summary = _first_sentence(docs[name])
    said = str(field_default(cls, name)) if default is None else default
    presets = presets or {}
    extra = [f"{task}: {values[name]}" for task, values in presets.items() if name in values]
    return f"{summary} (default: {'; '.join([said, *extra])})"
