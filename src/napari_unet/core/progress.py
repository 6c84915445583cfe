"""Helpers for the long jobs, which are generators of progress events with a result.

Every long job in :mod:`napari_unet.core` (training, tiled prediction,
segmentation, block-wise labelling) yields small progress events and returns
its result (``StopIteration.value``). :func:`run_to_end` runs one for its
result; :func:`relay` turns one job's events into another's.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

__all__ = ["relay", "run_to_end"]

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
