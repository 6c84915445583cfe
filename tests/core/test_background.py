"""Work beside the network: InOrder, and iter_segment's reader and labelling threads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_unet.core import postprocess, segment
from napari_unet.core.background import InOrder
from napari_unet.core.segment import PlaneDone, SegmentProgress, iter_segment
from synthetic import cell_stack, threshold_unet


def test_results_come_in_order_with_bounded_depth():
    started, release = [], threading.Event()

    def job(n):
        started.append(n)
        if n == 0:
            release.wait(5)
        return n

    with InOrder[int](depth=2) as jobs:
        assert list(jobs.submit(job, 0)) == [] and list(jobs.submit(job, 1)) == []
        time.sleep(0.05)
        assert list(jobs.ready()) == []  # job 0 still runs: nothing overtakes it
        finished = []
        threading.Timer(0.1, release.set).start()
        finished += jobs.submit(job, 2)  # full: waits for the oldest to make room
        assert finished == [0]
        assert list(jobs.drain()) == [1, 2]
    assert started == [0, 1, 2]


def test_a_job_error_is_raised_where_its_result_is_collected():
    def fail():
        raise ValueError("bad plane")

    with InOrder[None](depth=1) as jobs:
        list(jobs.submit(fail))
        with pytest.raises(ValueError, match="bad plane"):
            list(jobs.drain())
    with pytest.raises(ValueError, match="depth"):
        InOrder(depth=0)


def run(gen):
    events = list(gen)
    return events, [e for e in events if isinstance(e, PlaneDone)]


def test_planes_are_labelled_in_the_background_while_the_network_runs(monkeypatch):
    model = threshold_unet()
    image, _ = cell_stack(4)
    serial_labels = []
    for index in np.ndindex(image.shape[0]):  # one plane per job: no overlap possible
        _, done = run(iter_segment(model, image, planes=[index], device="cpu", min_size=4))
        serial_labels.append(done[0].labels)

    threads, overlaps, in_network = [], [], threading.Event()
    label = postprocess.probabilities_to_labels

    def watched(*args, **kwargs):
        threads.append(threading.current_thread().name)
        # does the next plane's network run while this plane is labelled? (a serial
        # loop would wait here in vain; the wait keeps the check sure on a busy machine)
        overlaps.append(in_network.wait(2))
        return label(*args, **kwargs)

    forward = segment.iter_predict_tiled

    def network(*args, **kwargs):
        in_network.set()
        try:
            yield from forward(*args, **kwargs)
        finally:
            in_network.clear()

    monkeypatch.setattr(segment, "probabilities_to_labels", watched)
    monkeypatch.setattr(segment, "iter_predict_tiled", network)
    events, done = run(iter_segment(model, image, device="cpu", min_size=4, tile_size=204))
    assert all(name.startswith("napari-unet-background") for name in threads)
    assert any(overlaps), "no plane was labelled while the network ran"
    assert [d.plane for d in done] == [0, 1, 2, 3]  # in order
    offset = 0
    for d, serial in zip(done, serial_labels, strict=True):  # ids continue across planes
        np.testing.assert_array_equal(d.labels, np.where(serial > 0, serial + offset, 0))
        offset += int(serial.max())
    # a plane is announced after its last tile, never before
    last_tile = {e.plane: i for i, e in enumerate(events) if isinstance(e, SegmentProgress)}
    for d in done:
        assert events.index(d) > last_tile[d.plane]


def test_closing_the_job_stops_its_threads():
    model = threshold_unet()
    image, _ = cell_stack(6)
    before = {t.name for t in threading.enumerate()}
    jobs = iter_segment(model, image, device="cpu", tile_size=204)
    for event in jobs:
        if isinstance(event, PlaneDone):
            break
    jobs.close()
    left = {t.name for t in threading.enumerate()} - before
    assert not [name for name in left if name.startswith("napari-unet-background")]
