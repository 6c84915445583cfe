"""The shared worker lifecycle: running state, results, cancel, errors (``_worker.JobRunner``)."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.gui

TIMEOUT = 30_000


@pytest.fixture
def form(qtbot):
    from magicgui.widgets import Container, Label, PushButton, SpinBox

    from napari_unet._widgets._worker import JobRunner

    start, cancel = PushButton(text="Run"), PushButton(text="Cancel")
    field, status = SpinBox(value=3), Label(value="")
    container = Container(widgets=[field, start, cancel, status])
    states = []
    runner = JobRunner(
        start_button=start,
        cancel_button=cancel,
        status=status,
        what="Counting",
        controls=[field],
        on_running=states.append,
    )
    qtbot.addWidget(container.native)
    return runner, field, states


def count(n, *, pause=0.0, should_stop=None, fail_at=None):
    """A core-style job: yields 1..n, returns their sum; stops early when asked."""
    total = 0
    for i in range(1, n + 1):
        if fail_at == i:
            raise ValueError(f"broken at {i}")
        time.sleep(pause)
        total += i
        yield i
        if should_stop is not None and should_stop():
            break
    return total


def test_running_state_events_and_result(form, qtbot):
    runner, field, states = form
    seen, results, finished = [], [], []
    worker = runner.start(
        count,
        4,
        message="Counting to 4…",
        yielded=seen.append,
        returned=results.append,
        finished=lambda: finished.append(runner.is_running),
    )
    assert runner.is_running and runner.worker is worker
    assert runner.status.value == "Counting to 4…"
    assert not runner.start_button.enabled and runner.cancel_button.enabled
    assert not field.enabled and states == [True]
    with pytest.raises(RuntimeError, match="already running"):
        runner.start(count, 1)
    qtbot.waitUntil(lambda: not runner.is_running, timeout=TIMEOUT)
    assert seen == [1, 2, 3, 4] and results == [10]
    assert finished == [False]  # the running state is reset before the widget's callback
    assert runner.start_button.enabled and not runner.cancel_button.enabled
    assert field.enabled and states == [True, False]


@pytest.mark.qt_no_exception_capture  # napari's hooks, as in the app, take the error
def test_errors_reach_the_status_line_and_napari_notifications(form, qtbot):
    from napari.utils.notifications import notification_manager

    runner, field, states = form
    before = len(notification_manager.records)
    with notification_manager:  # napari.run() installs these hooks
        runner.start(count, 5, fail_at=2)
        qtbot.waitUntil(lambda: not runner.is_running, timeout=TIMEOUT)
        qtbot.wait(50)
    assert runner.status.value == "Counting failed: broken at 2"
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("broken at 2" in m for m in messages)
    assert runner.start_button.enabled and field.enabled and states == [True, False]


def test_cancel_quits_or_asks_the_job_to_stop(form, qtbot):
    runner, _, _ = form
    aborted, results = [], []
    runner.start(count, 10_000, pause=0.01, aborted=lambda: aborted.append(True))
    runner.cancel_button.clicked.emit()  # the cancel button
    assert runner.status.value == "Cancelling…"
    qtbot.waitUntil(lambda: not runner.is_running, timeout=TIMEOUT)
    assert aborted == [True]

    # cooperative: the job sees stop_event and still returns its result
    runner.cancel_quits = False
    runner.cancel_message = "Stopping…"
    seen = []

    def stop_on_first(value):
        seen.append(value)
        runner.cancel()

    runner.start(
        count,
        10_000,
        pause=0.01,
        should_stop=runner.stop_event.is_set,
        yielded=stop_on_first,
        returned=results.append,
    )
    qtbot.waitUntil(lambda: not runner.is_running, timeout=TIMEOUT)
    assert runner.status.value == "Stopping…"
    assert results and results[0] == sum(range(1, len(seen) + 1)) and len(seen) < 10_000
    runner.start(count, 1)  # a new job starts with the event cleared
    assert not runner.stop_event.is_set()
    qtbot.waitUntil(lambda: not runner.is_running, timeout=TIMEOUT)
    runner.cancel()  # idle: nothing happens
    assert not runner.stop_event.is_set()


def test_start_button_reports_bad_input(form):
    from napari.utils.notifications import notification_manager

    runner, _, _ = form
    calls = []

    def start():
        calls.append(True)
        raise ValueError("nothing to count")

    runner.connect_start(start, "Cannot count")
    before = len(notification_manager.records)
    runner.start_button.clicked.emit()
    assert calls == [True] and not runner.is_running
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert "Cannot count: nothing to count" in messages
