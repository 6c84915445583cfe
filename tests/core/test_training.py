import dataclasses
import threading

import numpy as np
import pytest
import torch

from napari_unet.core import device, training
from napari_unet.core.checkpoint import load_model, suggested_threshold
from napari_unet.core.dataset import PatchSampler
from napari_unet.core.metrics import foreground_iou, instance_scores
from napari_unet.core.model import UNet
from napari_unet.core.postprocess import probabilities_to_labels
from napari_unet.core.tiling import predict_tiled
from napari_unet.core.training import (
    CANDIDATE_THRESHOLDS,
    TrainConfig,
    TrainProgress,
    iter_train,
    train,
)


def nuclei(seed: int, shape=(128, 128), n=30):
    """Touching nuclei: bright domes (dimmer at the rim) with noise, and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    dist = np.full(shape, np.inf)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for i, (cy, cx, r) in enumerate(
        zip(*rng.uniform(8, np.array(shape) - 8, (n, 2)).T, rng.uniform(7, 10, n), strict=True)
    ):
        d = np.hypot(yy - cy, xx - cx) / r
        closer = (d < 1) & (d < dist)
        labels[closer] = i + 1
        dist[closer] = d[closer]
    dome = np.where(labels > 0, np.sqrt(np.clip(1 - dist**2, 0, 1)), 0)
    return (dome + rng.normal(0, 0.15, shape)).astype(np.float32), labels


def merged_cells(true, pred):
    """True cells sharing their predicted object with another true cell."""
    owners = {}
    for t in np.unique(true)[1:]:
        hits = pred[true == t]
        if hits.any():
            owners.setdefault(np.bincount(hits).argmax(), []).append(t)
    return sum(len(v) for v in owners.values() if len(v) > 1)


FAST = TrainConfig(
    steps=150,
    batch_size=4,
    patch_size=156,
    depth=3,
    base_channels=8,
    learning_rate=3e-3,
    validation="none",
    norm=None,  # the paper's network (docs/benchmarks.md quotes these runs)
    mixed_precision=False,  # float32 on every CPU, so the seeded runs match everywhere
    seed=0,
)


def drain(gen, each=None):
    """Run a training generator to its end: its events and its result."""
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as done:
            return events, done.value
        if each is not None:
            each(events[-1])


@pytest.fixture(scope="module")
def data():
    train_set = [nuclei(s) for s in range(3)]
    test_set = [nuclei(s) for s in (100, 101)]
    return train_set, test_set


def evaluate(model, test_set):
    ious, f1s, merges = [], [], 0
    for image, labels in test_set:
        prob = predict_tiled(model, model.normalization(image), device="cpu")
        pred = probabilities_to_labels(prob, min_size=10, expand=1)
        ious.append(foreground_iou(labels, pred))
        f1s.append(instance_scores(labels, pred)[0].f1)
        merges += merged_cells(labels, pred)
    return np.mean(ious), np.mean(f1s), merges


@pytest.mark.slow
def test_weight_map_learns_and_reduces_merges(data):
    """The paper's claim on a seeded toy: its weight map separates touching cells."""
    train_set, test_set = data
    images, labels = zip(*train_set, strict=True)
    paper = TrainConfig(**{**FAST.__dict__, "weighting": "unet"})
    weighted = train(images, labels, config=paper, device="cpu").model
    plain = train(
        images, labels, config=TrainConfig(**{**FAST.__dict__, "weighting": "none"}), device="cpu"
    ).model
    iou_w, f1_w, merges_w = evaluate(weighted, test_set)
    _, f1_p, merges_p = evaluate(plain, test_set)
    assert iou_w > 0.75  # learned the task
    assert merges_w < 0.75 * merges_p
    assert f1_w > f1_p + 0.1


def test_progress_events_validation_and_checkpoint(data, tmp_path):
    train_set, _ = data
    images, labels = zip(*train_set[:2], strict=True)
    config = TrainConfig(
        steps=6, batch_size=1, patch_size=92, depth=3, base_channels=4, validate_every=3, seed=1
    )
    gen = iter_train(images, labels, config=config, device="cpu", checkpoint=tmp_path / "m.pt")
    events, result = drain(gen)
    assert [e.step for e in events] == list(range(1, 7))
    assert all(isinstance(e, TrainProgress) and np.isfinite(e.loss) for e in events)
    assert [e.validation is not None for e in events] == [False, False, True] * 2
    assert set(events[2].validation) == {"iou", "f1", "score", "threshold"}
    assert all(e.validation["threshold"] in CANDIDATE_THRESHOLDS for e in events if e.validation)
    assert events[0].learning_rate > events[-1].learning_rate  # cosine decay
    assert result.steps == 6 and result.stopped == "steps"
    assert result.best_step in (3, 6) and result.best_score == max(
        e.validation["score"] for e in events if e.validation
    )
    saved = load_model(tmp_path / "m.pt")
    assert saved.metadata["best_step"] == result.best_step
    best = next(e.validation for e in events if e.step == result.best_step)
    assert suggested_threshold(saved) == result.threshold == best["threshold"]
    x = torch.rand(1, 1, 92, 92)
    with torch.inference_mode():
        torch.testing.assert_close(saved(x), result.model(x))


def test_validation_picks_the_threshold_that_separates_cells(monkeypatch):
    # two cells with a 1-px gap that the "network" is unsure about (p = 0.6)
    truth = np.zeros((20, 30), np.int32)
    truth[5:15, 5:14], truth[5:15, 15:24] = 1, 2
    fg = np.where(truth > 0, 0.9, 0.1).astype(np.float32)
    fg[5:15, 14] = 0.6
    prob = np.stack([1 - fg, fg])
    monkeypatch.setattr(training, "predict_tiled", lambda *args, **kwargs: prob)
    val = [training._ValImage(fg[None], truth, np.ones(truth.shape, bool))]
    model = UNet(depth=2, base_channels=2)
    at_half = training.evaluate(model, val, thresholds=(0.5,), min_size=1)
    assert at_half["f1"] == 0.0 and at_half["threshold"] == 0.5  # merged
    best = training.evaluate(model, val, thresholds=CANDIDATE_THRESHOLDS, min_size=1)
    # separated from 0.6 up to 0.85; ties go to the threshold nearest 0.5
    assert best == {"iou": 1.0, "f1": 1.0, "score": 1.0, "threshold": 0.6}
    with pytest.raises(ValueError, match="threshold"):
        TrainConfig(threshold=1.0)


def test_stop_returns_usable_model_and_is_reproducible(data):
    train_set, _ = data
    images, labels = zip(*train_set[:1], strict=True)
    config = TrainConfig(steps=1000, batch_size=1, patch_size=92, depth=3, base_channels=4, seed=5)
    calls = []
    result = train(
        images,
        labels,
        config=config,
        device="cpu",
        should_stop=lambda: calls.append(1) or len(calls) >= 3,
    )
    assert result.stopped == "stopped" and result.steps == 3
    assert isinstance(result.model, UNet) and not result.model.training
    prob = predict_tiled(result.model, images[0], device="cpu")
    assert np.isfinite(prob).all()
    again = train(
        images,
        labels,
        config=config,
        device="cpu",
        should_stop=lambda: len(calls) >= 6 or calls.append(1) or len(calls) >= 6,
    )
    assert [h["loss"] for h in again.history] == [h["loss"] for h in result.history]


def test_fine_tune_does_not_modify_the_given_model(data):
    train_set, _ = data
    images, labels = zip(*train_set[:1], strict=True)
    base = UNet(depth=3, base_channels=4)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    result = train(
        images,
        labels,
        model=base,
        # without validation: with it, an untrained start may rightly be kept
        config=TrainConfig(steps=2, batch_size=1, patch_size=92, validation="none"),
        device="cpu",
    )
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert result.model.config == base.config
    assert any(not torch.equal(before[k], v) for k, v in result.model.state_dict().items())


def test_sparse_annotation_and_time_budget(data):
    train_set, _ = data
    image, labels = train_set[0]
    mask = np.zeros(labels.shape, bool)
    mask[:64, :64] = True
    config = TrainConfig(
        steps=10_000, minutes=0.02, batch_size=1, patch_size=92, depth=3, base_channels=4
    )
    result = train([image], [labels], masks=[mask], config=config, device="cpu")
    assert result.stopped == "time" and result.elapsed < 10


@pytest.fixture
def samplers(monkeypatch):
    """Every PatchSampler built during the test."""
    made = []
    original = PatchSampler.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(PatchSampler, "__init__", spy)
    return made


def test_scale_augmentation_uses_every_zoom(data, samplers):
    train_set, _ = data
    config = TrainConfig(steps=2, depth=3, base_channels=4, patch_size=92, scales=(0.5, 1, 2))
    result = train(train_set[:1], [train_set[0][1]], config=config, device="cpu")
    assert result.steps == 2
    assert [s.image.shape[-1] for s in samplers[0].samples] == [64, 128, 256]
    # each zoom drawn equally often
    np.testing.assert_allclose(samplers[0]._p, 1 / 3, rtol=0.05)
    with pytest.raises(ValueError, match="scales"):
        TrainConfig(scales=())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"images": []}, "no training images"),
        ({"labels": [np.zeros((64, 64), int)]}, "no cells"),
        ({"masks": [None, None]}, "masks"),
        ({"masks": [np.ones((64, 32), bool)]}, "same shape"),
        ({"labels": [np.ones((64, 32), int)]}, "differs from the image"),
    ],
)
def test_bad_training_input(kwargs, match):
    image, labels = nuclei(0, shape=(64, 64), n=5)
    args = {"images": [image], "labels": [labels], **kwargs}
    with pytest.raises(ValueError, match=match):
        train(
            args.pop("images"),
            args.pop("labels"),
            config=TrainConfig(steps=1),
            device="cpu",
            **args,
        )


def test_config_validation():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="minutes"):
        TrainConfig(minutes=0)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="norm"):
        TrainConfig(norm="group")  # per-tile statistics would break exact tiling


def test_sgd_with_momentum_trains(data, monkeypatch):
    train_set, _ = data
    made = []
    original = torch.optim.SGD.__init__

    def spy(self, params, **kwargs):
        made.append(kwargs)
        original(self, params, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "__init__", spy)
    config = TrainConfig(
        steps=3,
        batch_size=1,
        patch_size=92,
        depth=3,
        base_channels=4,
        optimizer="sgd",
        learning_rate=0.01,
    )
    result = train([train_set[0][0]], [train_set[0][1]], config=config, device="cpu")
    assert made == [{"lr": 0.01, "momentum": 0.99}]
    assert result.steps == 3 and all(np.isfinite(h["loss"]) for h in result.history)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("mixed", [True, False])
def test_bfloat16_autocast_on_cpu_only_where_native(data, monkeypatch, native, mixed):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native)
    net = UNet(depth=3, base_channels=4)
    dtypes = []
    net.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    config = TrainConfig(
        steps=2, batch_size=1, patch_size=92, validation="none", mixed_precision=mixed
    )
    result = train([data[0][0][0]], [data[0][0][1]], model=net, config=config, device="cpu")
    expected = torch.bfloat16 if native and mixed else torch.float32
    assert dtypes == [expected, expected]
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert all(np.isfinite(h["loss"]) for h in result.history)
    # inference's "auto" follows the same rule
    assert device.inference_dtype("auto", torch.device("cpu")) == (
        torch.bfloat16 if native else None
    )


def test_validation_band_holds_a_share_of_the_annotation():
    labels = np.zeros((100, 60), np.int32)
    labels[::10, ::10] = np.arange(1, 61).reshape(10, 6)
    train_part, band = training.validation_band(labels, share=0.2)
    assert band[80:].all() and not band[:80].any()  # the end of the longer axis
    assert not (train_part & band).any() and (train_part | band).all()
    mask = np.zeros(labels.shape, bool)
    mask[10:90, :30] = True
    train_part, band = training.validation_band(labels, mask, share=0.25)
    assert band.sum() == 0.25 * mask.sum() and band[70:90, :30].all()
    assert not (band & ~mask).any() and not (train_part & ~mask).any()
    wide = training.validation_band(labels.T, share=0.2)[1]
    assert wide[:, 80:].all() and not wide[:, :80].any()
    top_only = np.where(np.arange(100)[:, None] < 50, labels, 0)
    assert training.validation_band(top_only) is None  # no cell to validate on
    assert training.validation_band(np.where(labels > 50, labels, 0)) is None  # none to train
    with pytest.raises(ValueError, match="same shape"):
        training.validation_band(labels, mask.T)


def test_auto_validation_scores_a_band_of_every_image_and_trains_on_the_rest(data, samplers):
    train_set, _ = data
    images, labels = zip(*train_set[:2], strict=True)
    config = TrainConfig(steps=2, batch_size=1, patch_size=92, depth=3, base_channels=4)
    result = train(images, labels, config=config, device="cpu")
    assert result.model.metadata["training"]["n_validation"] == 2
    assert result.best_score is not None and result.threshold in CANDIDATE_THRESHOLDS
    for sample in samplers[0].samples:  # 128 x 128: the last ~26 rows are held out
        assert (sample.weights[:100] > 0).all() and not sample.weights[104:].any()
    none = TrainConfig(**{**config.__dict__, "validation": "none"})
    assert train(images, labels, config=none, device="cpu").best_score is None


def test_freeze_encoder_adapts_only_the_expanding_path(disks):
    torch.manual_seed(0)
    start = UNet(depth=2, base_channels=4, norm="batch")
    image = (disks > 0) * 150.0 + 20
    config = training.TrainConfig(
        steps=3, batch_size=1, patch_size=92, freeze="encoder", validation="none"
    )
    result = training.train([image], [disks], model=start, config=config, device="cpu")
    before, after = start.state_dict(), result.model.state_dict()
    encoder = [k for k in before if k.startswith(("down.", "bottom."))]
    assert any("running_mean" in k for k in encoder)  # batch-norm statistics kept too
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("up."))
    assert all(p.requires_grad for p in result.model.parameters())
    with pytest.raises(ValueError, match="freeze"):
        training.TrainConfig(freeze="decoder")


def test_learning_rate_none_picks_scratch_or_fine_tuning_rate(disks):
    image = (disks > 0) * 150.0 + 20
    config = training.TrainConfig(
        steps=1, batch_size=1, patch_size=92, depth=2, base_channels=2, validation="none"
    )
    new = training.train([image], [disks], config=config, device="cpu")
    assert new.history[0]["lr"] == pytest.approx(training.SCRATCH_LEARNING_RATE)
    tuned = training.train([image], [disks], model=new.model, config=config, device="cpu")
    assert tuned.history[0]["lr"] == pytest.approx(training.FINE_TUNE_LEARNING_RATE)
    assert tuned.model.metadata["training"]["learning_rate"] == training.FINE_TUNE_LEARNING_RATE


def test_time_budget_ends_training_on_time_final_validation_included(data, monkeypatch):
    """A fake clock: each step costs 1 s and each validation 5 s; the budget is 60 s."""
    now = [0.0]
    monkeypatch.setattr(training, "_clock", lambda: now[0])
    loss, score = training.weighted_cross_entropy, training.evaluate

    def slow_step(*args, **kwargs):  # once per step, in the training thread
        now[0] += 1.0
        return loss(*args, **kwargs)

    def slow_evaluate(*args, **kwargs):
        now[0] += 5.0
        return score(*args, **kwargs)

    monkeypatch.setattr(training, "weighted_cross_entropy", slow_step)
    monkeypatch.setattr(training, "evaluate", slow_evaluate)
    train_set, _ = data
    config = TrainConfig(
        minutes=1.0, validate_every=20, batch_size=1, patch_size=92, depth=3, base_channels=4
    )
    assert config.steps == 10_000  # a cap: the time budget ends the run
    gen = iter_train([train_set[0][0]], [train_set[0][1]], config=config, device="cpu")
    events, result = drain(gen)
    # 45 steps (1 s each) + 2 validations during training + the final one (5 s each)
    assert result.stopped == "time" and result.steps == 45
    assert 0.9 * 60 <= result.elapsed <= 60
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and 0.9 <= fractions[-1] <= 1.0
    for event in events:  # the ETA is the time that was left, within 15 %
        left = result.elapsed - event.elapsed
        assert abs(event.eta - left) <= 0.15 * left + 1e-9


def test_a_diverging_run_stops_and_returns_the_model_from_before(data, monkeypatch):
    import copy

    losses = training.weighted_cross_entropy
    calls = [0]

    def diverge(*args, **kwargs):
        calls[0] += 1
        loss = losses(*args, **kwargs)
        return loss * float("nan") if calls[0] >= 4 else loss

    monkeypatch.setattr(training, "weighted_cross_entropy", diverge)
    train_set, _ = data
    snapshots = {}
    config = TrainConfig(
        steps=10,
        minutes=None,
        validation="none",
        validate_every=2,
        batch_size=1,
        patch_size=92,
        depth=3,
        base_channels=4,
    )
    gen = iter_train([train_set[0][0]], [train_set[0][1]], config=config, device="cpu")

    def snapshot(event):
        snapshots[event.step] = copy.deepcopy(gen.gi_frame.f_locals["net"].state_dict())

    _, result = drain(gen, snapshot)
    assert result.stopped == "diverged" and result.steps == 3 and result.best_step == 2
    state = result.model.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert all(torch.equal(state[k], v.cpu()) for k, v in snapshots[2].items())


def test_batches_made_ahead_train_the_same(data, monkeypatch):
    # on the CPU the next batch is made in the loop; on a GPU in a background thread
    # during the step (forced here): the same batches in the same order either way
    train_set, _ = data
    images, labels = zip(*train_set[:1], strict=True)
    config = TrainConfig(
        steps=4, batch_size=1, patch_size=92, depth=3, base_channels=4, seed=3, validation="none"
    )
    threads = []
    batch = PatchSampler.batch

    def watched(self, n):
        threads.append(threading.current_thread().name)
        return batch(self, n)

    monkeypatch.setattr(PatchSampler, "batch", watched)
    in_loop = train(images, labels, config=config, device="cpu")
    assert threads == [threading.main_thread().name] * 4

    made_ahead = training.made_ahead
    monkeypatch.setattr(training, "made_ahead", lambda produce, ahead: made_ahead(produce, 1))
    threads.clear()
    ahead = train(images, labels, config=config, device="cpu")
    assert len(threads) >= 4
    assert all(name.startswith("napari-unet-background") for name in threads)
    assert [h["loss"] for h in ahead.history] == [h["loss"] for h in in_loop.history]
    before = threading.active_count()
    jobs = iter_train(images, labels, config=dataclasses.replace(config, steps=100))
    next(jobs)
    jobs.close()  # a stopped training leaves no thread behind
    assert threading.active_count() <= before
