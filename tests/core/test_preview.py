"""Live preview while training: schedule, window, and what a preview holds."""

import threading

import numpy as np
import pytest
import torch

from napari_unet.core.model import UNet
from napari_unet.core.preview import (
    PREVIEW_BUDGET,
    PREVIEW_INTERVAL,
    LivePreview,
    PreviewSchedule,
    PreviewUpdate,
    cap_window,
    predict_window,
)
from napari_unet.core.segment import PlaneDone, iter_segment
from napari_unet.core.segment_config import SegmentConfig
from napari_unet.core.tiling import predict_tiled
from napari_unet.core.training import TrainConfig, TrainProgress, iter_train
from synthetic import cell_stack, image_of, touching_disks


def drain(gen):
    """A generator's events and its return value."""
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as done:
            return events, done.value


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_schedule_keeps_previews_within_the_interval_and_the_budget():
    clock = FakeClock()
    schedule = PreviewSchedule(interval=2.0, budget=0.1, clock=clock)
    assert schedule.due()  # the first one at once
    schedule.record(0.0, 0.1)  # fast: the interval decides
    clock.now = 2.0
    assert not schedule.due()
    clock.now = 2.1
    assert schedule.due()
    schedule.record(2.1, 4.1)  # a slow preview (2 s): wait 18 s, so that it is 10 %
    assert schedule.wait() == pytest.approx(18.0)
    clock.now = 4.1 + 17.9
    assert not schedule.due() and not schedule.due(moved=True)
    clock.now = 4.1 + 18.0
    assert schedule.due()
    assert schedule.count == 2 and schedule.spent == pytest.approx(2.1)
    schedule.reset()
    assert schedule.due() and schedule.count == 0 and schedule.spent == 0


def test_schedule_simulated_run_spends_at_most_the_budget():
    """Previews of random length between steps never take more than the budget."""
    clock = FakeClock()
    schedule = PreviewSchedule(interval=PREVIEW_INTERVAL, budget=PREVIEW_BUDGET, clock=clock)
    rng = np.random.default_rng(0)
    moved = False
    for step in range(2000):
        clock.now += 0.5  # a training step
        if schedule.due(moved=moved):
            began = clock.now
            clock.now += rng.uniform(0.05, 3.0)
            schedule.record(began, clock.now)
        moved = step % 7 == 0  # the user pans now and then
    assert schedule.count > 20
    # at most one preview over the budget (the first one is due at once)
    assert schedule.spent <= PREVIEW_BUDGET * clock.now + 3.0


def test_schedule_moved_window_skips_the_interval_only():
    clock = FakeClock()
    schedule = PreviewSchedule(interval=5.0, budget=0.5, clock=clock)
    schedule.record(0.0, 1.0)  # 1 s at 50 %: the budget asks for 1 s of training
    clock.now = 2.0
    assert not schedule.due() and schedule.due(moved=True)
    clock.now = 1.5
    assert not schedule.due(moved=True)


@pytest.mark.parametrize("kwargs", [{"interval": -1}, {"budget": 0}, {"budget": 1.5}])
def test_schedule_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        PreviewSchedule(**kwargs)


def test_window_is_clipped_and_capped_around_its_centre():
    assert cap_window(slice(-5, 40), slice(10, 30), (32, 64), 512) == (slice(0, 32), slice(10, 30))
    rows, cols = cap_window(slice(0, 1000), slice(100, 2100), (2000, 3000), 300)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (300, 300)
    assert (rows.start + rows.stop) // 2 == 500 and (cols.start + cols.stop) // 2 == 1100

    preview = LivePreview(np.zeros((3, 100, 200), np.float32), max_size=64)
    assert preview.window is None and not preview.due()
    window = preview.set_window((1,), slice(-10, 300), slice(20, 60))
    assert window == preview.window
    assert window.index == (1,) and window.rows == slice(18, 82) and window.cols == slice(20, 60)
    assert preview.due()
    assert preview.set_window((1,), slice(150, 300), slice(0, 10)) is None  # off the plane
    assert preview.window is None and not preview.due()
    rgb = LivePreview(np.zeros((50, 60, 3), np.uint8), channel_axis=-1)
    assert rgb.set_window((), slice(0, 99), slice(0, 99)).cols == slice(0, 60)


def test_window_set_from_another_thread_is_seen():
    preview = LivePreview(np.zeros((64, 64), np.float32))
    thread = threading.Thread(target=preview.set_window, args=((), slice(0, 10), slice(5, 20)))
    thread.start()
    thread.join()
    assert preview.window.cols == slice(5, 20)


@pytest.fixture(scope="module")
def stack():
    image, _ = cell_stack(2)
    return image.astype(np.float32)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = UNet(depth=2, base_channels=4, norm="batch")
    model.train()
    with torch.no_grad():  # some non-trivial batch-norm statistics
        model(torch.rand(2, 1, 60, 60))
    return model


def test_preview_equals_predict_tiled_of_the_plane_in_the_window(stack, net):
    """The window with its full context: the same as predicting the whole plane."""
    region = (slice(20, 70), slice(33, 90))
    labels, foreground = predict_window(net, stack, (1,), region, device="cpu")
    assert net.training  # the training mode is restored
    whole = predict_tiled(net, net.normalization(stack[1]), device="cpu")
    np.testing.assert_allclose(foreground, whole[1][region], atol=1e-5)
    # and the labels of the Predict widget's "visible field of view"
    options = SegmentConfig().segment_kwargs(net)
    done = [
        e
        for e in iter_segment(net, stack, planes=[(1,)], region=region, device="cpu", **options)
        if isinstance(e, PlaneDone)
    ]
    np.testing.assert_array_equal(labels, done[0].labels)


def test_preview_of_a_membranes_model_is_its_mask(stack, net):
    options = {**SegmentConfig().segment_kwargs(net), "output": "mask", "threshold": 0.5}
    mask, foreground = predict_window(
        net, stack, (0,), (slice(0, 40), slice(0, 40)), device="cpu", options=options
    )
    np.testing.assert_array_equal(mask, foreground > 0.5)


def test_poll_previews_when_due_with_the_plane_limits_cached(stack, net):
    clock = FakeClock()
    preview = LivePreview(stack, schedule=PreviewSchedule(interval=10, clock=clock))
    assert preview.poll(net, step=1) is None  # no window yet
    preview.set_window((1,), slice(10, 50), slice(0, 96))
    update = preview.poll(net, step=3)
    assert isinstance(update, PreviewUpdate)
    assert update.step == 3 and update.index == (1,)
    assert update.region == (slice(10, 50), slice(0, 96))
    assert update.labels.shape == update.foreground.shape == (40, 96)
    assert preview.poll(net, step=4) is None  # not due yet
    preview.set_window((1,), slice(0, 30), slice(0, 30))  # moved: due (the budget allows)
    assert preview.poll(net, step=5).region == (slice(0, 30), slice(0, 30))
    preview.enabled = False
    clock.now = 100.0
    assert preview.poll(net, step=6) is None
    assert preview.schedule.count == 2


def test_iter_train_yields_previews_with_a_request_and_none_without():
    truth = touching_disks(seed=3)
    image = image_of(truth)
    config = TrainConfig(
        steps=5, batch_size=1, patch_size=92, depth=2, base_channels=4, validation="none"
    )
    plain, without = drain(iter_train([image], [truth], config=config, device="cpu"))
    assert plain and all(isinstance(e, TrainProgress) for e in plain)

    preview = LivePreview(image, schedule=PreviewSchedule(interval=0, budget=1.0))
    preview.set_window((), slice(0, 64), slice(16, 96))
    events, result = drain(
        iter_train([image], [truth], config=config, device="cpu", preview=preview)
    )
    steps = [e.step for e in events if isinstance(e, TrainProgress)]
    updates = [e for e in events if isinstance(e, PreviewUpdate)]
    assert steps == [1, 2, 3, 4, 5]
    assert [u.step for u in updates] == [1, 2, 3, 4]  # between steps: none after the last
    assert all(u.labels.shape == (64, 80) for u in updates)
    # each comes right after the progress event of its step
    for k, event in enumerate(events):
        if isinstance(event, PreviewUpdate):
            assert isinstance(events[k - 1], TrainProgress) and events[k - 1].step == event.step
    # previews neither change the weights nor the batch-norm statistics of training
    assert [e.loss for e in events if isinstance(e, TrainProgress)] == [e.loss for e in plain]
    for key, value in without.model.state_dict().items():
        torch.testing.assert_close(result.model.state_dict()[key], value, rtol=0, atol=0)
