"""Helpers for the long jobs, which are generators of progress events with a result.

Every long job in :mod:`napari_unet.core` (training, tiled prediction,
segmentation, block-wise labelling) yields small progress events and returns
its result (``StopIteration.value``). :func:`run_to_end` runs one for its
result; :func:`relay` turns one job's events into another's;
:func:`format_duration` writes a job's elapsed time or ETA for a status line.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

__all__ = ["format_duration", "relay", "run_to_end"]

E = TypeVar("E")
F = TypeVar("F")
R = TypeVar("R")


def run_to_end(job: Generator[Any, None, R]) -> R:
    """Run a job to its end, ignoring its progress; return its result.

    Examples
    --------
    >>> def job():
    ...     yield "half"
    ...     return 42
    >>> run_to_end(job())
    42
    """
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value


def relay(job: Generator[E, None, R], convert: Callable[[E], F]) -> Generator[F, None, R]:
    """Yield ``convert(event)`` for each event of ``job``; return its result.

    Examples
    --------
    >>> def job():
    ...     yield 1
    ...     yield 2
    ...     return "done"
    >>> outer = relay(job(), lambda n: n * 10)
    >>> list(outer)
    [10, 20]
    """
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        yield convert(event)


def format_duration(seconds: float) -> str:
    """Format seconds as ``"1 h 02 min"``, ``"3 min 05 s"`` or ``"42 s"``.

    Parameters
    ----------
    seconds : float
        A duration (rounded to whole seconds; a negative one counts as 0).

    Returns
    -------
    str

    Examples
    --------
    >>> format_duration(185)
    '3 min 05 s'
    >>> format_duration(3725), format_duration(41.6)
    ('1 h 02 min', '42 s')
    """
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"
