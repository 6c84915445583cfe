"""Work beside the network: one background thread, results in order, bounded.

A plane's post-processing (labels), the reading of the next plane and the
writing of results can run while the network predicts, so the device is not
idle between planes; on a GPU, training's next batch of patches is sampled
and augmented while the network takes its step (:func:`made_ahead`).
:class:`InOrder` runs jobs one at a time in a thread of its own and hands
their results back in submission order; at most ``depth`` jobs wait or run,
so memory stays bounded (``submit`` waits for room). Numpy, scipy,
scikit-image, tifffile and torch release the GIL in their heavy parts, so the
jobs and the network do overlap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Generic, TypeVar

__all__ = ["InOrder", "made_ahead"]

R = TypeVar("R")


class InOrder(Generic[R]):
    """Jobs run one at a time in a background thread; their results come in order.

    Parameters
    ----------
    depth : int
        Most jobs waiting or running at once.

    Examples
    --------
    >>> finished = []
    >>> with InOrder(depth=2) as jobs:
    ...     for n in range(4):
    ...         finished += jobs.submit(pow, n, 2)
    ...     finished += jobs.drain()
    >>> finished
    [0, 1, 4, 9]
    """

    def __init__(self, depth: int = 1) -> None:
        if depth < 1:
            raise ValueError(f"`depth` must be >= 1, got {depth}")
        self._depth = depth
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="napari-unet-background")
        self._pending: deque[Future[R]] = deque()

    def submit(self, job: Callable[..., R], *args: Any, **kwargs: Any) -> Iterator[R]:
        """Queue ``job(*args, **kwargs)``; yields the results it had to wait for to make room.

        The job is queued only once the returned iterator is exhausted (a
        ``for`` loop or ``list`` over it); a job's exception is raised here or
        where its result is collected.
        """
        while len(self._pending) >= self._depth:
            yield self._pending.popleft().result()
        self._pending.append(self._pool.submit(job, *args, **kwargs))

    def ready(self) -> Iterator[R]:
        """The results of the oldest jobs that have finished, without waiting."""
        while self._pending and self._pending[0].done():
            yield self._pending.popleft().result()

    def drain(self) -> Iterator[R]:
        """The results of every queued job, waiting for each."""
        while self._pending:
            yield self._pending.popleft().result()

    def close(self) -> None:
        """Drop the jobs not started, wait for the running one, stop the thread."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> InOrder[R]:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def made_ahead(produce: Callable[[], R], ahead: int = 1) -> Generator[R, None, None]:
    """``produce()`` again and again, ``ahead`` calls made in advance in a background thread.

    The calls run one at a time, in order, so a seeded ``produce`` gives the
    same sequence as calling it in a loop. Closing the iterator (or letting it
    go) stops the thread after the call it is in. With ``ahead=0`` each call
    is made when its result is asked for, in the caller's thread.

    Examples
    --------
    >>> from itertools import count
    >>> numbers = count()
    >>> squares = made_ahead(lambda: next(numbers) ** 2, ahead=2)
    >>> [next(squares) for _ in range(4)]
    [0, 1, 4, 9]
    >>> squares.close()
    """
    if ahead == 0:
        while True:
            yield produce()
    with InOrder[R](ahead + 1) as jobs:
        while True:
            yield from jobs.submit(produce)
