"""One worker lifecycle for the widgets that run a long core job (Train, Predict).

A core job is a generator (``iter_train``, ``iter_segment``) that yields small
progress events and returns its result. :class:`JobRunner` runs one at a time
in napari's ``create_worker`` and owns what every such widget repeats: the
running state (start button off, cancel button on, the form's inputs locked),
the cancel (cooperative through :attr:`JobRunner.stop_event`, or
``worker.quit()`` at the next yield), and the error display: the worker
re-raises a job's exception in the Qt event loop, where napari's exception hook
shows it as an error notification (with its traceback), and the runner writes
it into the status line. The start button reports bad input (a ``ValueError``)
as a notification instead of raising.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from magicgui.widgets import Label, PushButton
    from magicgui.widgets.bases import Widget
    from napari.qt.threading import GeneratorWorker


class JobRunner:
    """Run one core generator at a time in a napari worker.

    Parameters
    ----------
    start_button, cancel_button : PushButton
        Disabled / enabled while a job runs. The cancel button calls :meth:`cancel`.
    status : Label
        Status line: the start message, ``"<what> failed: <error>"``, the cancel note.
    what : str
        The job in messages, e.g. ``"Training"``.
    controls : sequence of magicgui widgets
        Inputs locked (disabled) while a job runs.
    on_running : callable, optional
        Called with True when a job starts and False when it finished, after
        the buttons and controls were updated (for widget-specific state).
    cancel_quits : bool
        True: :meth:`cancel` also quits the worker at its next yield (its
        result is lost: ``aborted`` is emitted). False: only
        :attr:`stop_event` is set, which the job polls to return early with a
        result (training keeps the best model so far).
    cancel_message : str
        Status line after :meth:`cancel`.

    Attributes
    ----------
    stop_event : threading.Event
        Cleared when a job starts, set by :meth:`cancel`; pass its ``is_set``
        to a job that stops cooperatively (``should_stop=...``).
    worker : GeneratorWorker or None
        The running worker.
    """

    def __init__(
        self,
        *,
        start_button: PushButton,
        cancel_button: PushButton,
        status: Label,
        what: str,
        controls: Sequence[Widget] = (),
        on_running: Callable[[bool], None] | None = None,
        cancel_quits: bool = True,
        cancel_message: str = "Cancelling…",
    ) -> None:
        self.start_button = start_button
        self.cancel_button = cancel_button
        self.status = status
        self.what = what
        self.controls = list(controls)
        self.on_running = on_running
        self.cancel_quits = cancel_quits
        self.cancel_message = cancel_message
        self.stop_event = threading.Event()
        self.worker: GeneratorWorker | None = None
        cancel_button.changed.connect(self.cancel)
        cancel_button.enabled = False

    @property
    def is_running(self) -> bool:
        """True while a job's worker runs (until its ``finished`` signal)."""
        return self.worker is not None

    def connect_start(self, start: Callable[[], Any], failure: str) -> None:
        """Make the start button call ``start``, reporting a ValueError as ``"<failure>: ..."``."""

        def clicked(*_: Any) -> None:
            try:
                start()
            except ValueError as err:  # bad input: tell the user, keep the form
                from napari.utils.notifications import show_error

                show_error(f"{failure}: {err}")

        self.start_button.changed.connect(clicked)

    def start(
        self,
        job: Callable[..., Any],
        *args: Any,
        message: str = "",
        yielded: Callable[[Any], Any] | None = None,
        returned: Callable[[Any], Any] | None = None,
        aborted: Callable[[], Any] | None = None,
        finished: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> GeneratorWorker:
        """Start ``job(*args, **kwargs)`` (a generator function) in a napari worker.

        Parameters
        ----------
        job : generator function
        *args, **kwargs
            Passed to ``create_worker`` with ``job``: the job's arguments and
            ``create_worker``'s own options (``_progress``).
        message, yielded, returned, aborted, finished
            As for :meth:`run`.

        Returns
        -------
        worker : GeneratorWorker
            Started.

        Raises
        ------
        RuntimeError
            If a job is running.
        """
        from napari.qt.threading import create_worker

        self._check_idle()
        return self.run(
            create_worker(job, *args, **kwargs),
            message=message,
            yielded=yielded,
            returned=returned,
            aborted=aborted,
            finished=finished,
        )

    def run(
        self,
        worker: GeneratorWorker,
        *,
        message: str = "",
        yielded: Callable[[Any], Any] | None = None,
        returned: Callable[[Any], Any] | None = None,
        aborted: Callable[[], Any] | None = None,
        finished: Callable[[], Any] | None = None,
    ) -> GeneratorWorker:
        """Run a worker made by ``create_worker`` (not started yet) as the job.

        Parameters
        ----------
        worker : GeneratorWorker
        message : str
            Status line while the job runs (until its first event).
        yielded, returned, aborted, finished : callable, optional
            Connected to the worker's signals (``finished`` after the running
            state is reset).

        Returns
        -------
        worker : GeneratorWorker
            Started (its signals reach the main thread's event loop).

        Raises
        ------
        RuntimeError
            If a job is running.
        """
        self._check_idle()
        self.stop_event.clear()
        if yielded is not None:
            worker.yielded.connect(yielded)
        if returned is not None:
            worker.returned.connect(returned)
        if aborted is not None:
            worker.aborted.connect(aborted)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        if finished is not None:
            worker.finished.connect(finished)
        self.worker = worker
        self.set_running(True)
        if message:
            self.status.value = message
        worker.start()
        return worker

    def cancel(self, *_: Any) -> None:
        """Ask the running job to stop (see ``cancel_quits``); nothing when idle."""
        if self.worker is None:
            return
        self.stop_event.set()
        if self.cancel_quits:
            self.worker.quit()
        self.status.value = self.cancel_message

    def set_running(self, running: bool) -> None:
        """Buttons and controls for a running (or idle) job, then ``on_running``."""
        self.start_button.enabled = not running
        self.cancel_button.enabled = running
        for widget in self.controls:
            widget.enabled = not running
        if self.on_running is not None:
            self.on_running(running)

    def _check_idle(self) -> None:
        if self.is_running:
            raise RuntimeError(f"{self.what} is already running")

    def _on_errored(self, err: BaseException) -> None:
        # the worker also re-raises it in the event loop: napari's notification
        self.status.value = f"{self.what} failed: {err}"

    def _on_finished(self) -> None:
        self.worker = None
        self.set_running(False)
