"""train_and_record: a training run kept as a model version, whatever the comparison does."""

import dataclasses
import shutil

import pytest

from napari_unet.core import TrainOutcome, VersionPlan, train_and_record
from napari_unet.core.model import UNet
from napari_unet.core.progress import relay, run_to_end
from napari_unet.core.training import TrainProgress
from napari_unet.core.versions import VersionStore
from synthetic import disk_crop, tiny_train_config

TINY = tiny_train_config(steps=2, validate_every=2)


def run(crops, plan, model=None, config=TINY):
    """Drain the job: its events and its outcome."""
    job = train_and_record(
        [c.image for c in crops],
        [c.labels for c in crops],
        plan=plan,
        masks=[c.mask for c in crops],
        model=model,
        config=config,
        device="cpu",
    )
    events: list = []
    outcome = run_to_end(relay(job, events.append))  # each event appended as it comes
    return events, outcome


def plan_for(store, crops, parent, **fields):
    return VersionPlan(
        store=store,
        parent=parent,
        crops=crops,
        sources=[c.source for c in crops],
        validated=True,
        **fields,
    )


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """A store with v1, trained from scratch on one example."""
    store = VersionStore(tmp_path_factory.mktemp("cfg") / "versions")
    crops = [disk_crop(0)]
    events, outcome = run(crops, plan_for(store, crops, "scratch"))
    return store, crops, events, outcome


@pytest.fixture
def store(first, tmp_path):
    """A copy of the store with v1, to add to or break."""
    folder = tmp_path / "versions"
    shutil.copytree(first[0].folder, folder)
    return VersionStore(folder)


def test_a_run_is_recorded_as_a_version_with_its_parent(first, store):
    _, crops1, events, outcome = first
    assert isinstance(outcome, TrainOutcome) and outcome.note == ""
    assert all(isinstance(e, TrainProgress) for e in events) and events
    v1 = outcome.version
    assert v1.name == "v1" and (v1.parent, v1.lineage) == ("scratch", ("scratch",))
    assert v1.annotations.n_examples == 1 and v1.annotations.sources == ("plane 0",)
    assert v1.comparison is None and store.get("v1") == v1
    # retrained from v1 on a corrected set: v2, scored with v1 on the same held-out pixels
    crops2 = [disk_crop(0), disk_crop(1)]
    plan = plan_for(store, crops2, "v1", compare=["v1"], runs=[crops1])
    events, outcome = run(crops2, plan, model=store.load("v1"))
    v2 = outcome.version
    assert v2.name == "v2" and (v2.parent, v2.lineage) == ("v1", ("v1", "scratch"))
    assert outcome.note == "" and store.names() == ["v1", "v2"]
    assert set(v2.comparison.scores) == {"v1", "v2"}
    status = [e for e in events if isinstance(e, str)]
    assert status == [f"Scoring v2 and v1 on the same {v2.comparison.n_pixels} held-out pixels…"]


def test_a_failing_comparison_still_returns_the_trained_model_with_a_note(store):
    crops = [disk_crop(0)]
    (store.folder / "v1.pt").unlink()  # v1 cannot be loaded to score it
    plan = plan_for(store, crops, "v1", compare=["v1"], runs=[crops])
    _, outcome = run(crops, plan)
    assert isinstance(outcome.result.model, UNet)
    assert outcome.version is not None and outcome.version.name == "v2"
    assert outcome.version.comparison is None
    assert outcome.note.startswith("no comparison with v1: ")


def test_an_unexpected_failure_keeps_no_version_but_the_model(store, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("scoring crashed")

    monkeypatch.setattr(VersionStore, "compare", broken)
    crops = [disk_crop(0)]
    plan = plan_for(store, crops, "v1", compare=["v1"], runs=[crops])
    _, outcome = run(crops, plan)
    assert isinstance(outcome.result.model, UNet) and outcome.version is None
    assert outcome.note == "not kept as a version: scoring crashed"
    assert store.names() == ["v1"]  # nothing written


def test_runs_without_a_band_or_a_plan(store):
    crops = [disk_crop(0)]
    plan = dataclasses.replace(plan_for(store, crops, "v1", compare=["v1"]), validated=False)
    config = dataclasses.replace(TINY, validation="none")
    _, outcome = run(crops, plan, config=config)
    assert outcome.version.name == "v2" and outcome.version.comparison is None
    assert outcome.note.startswith("no comparison: this run held out no validation band")
    _, outcome = run(crops, None)
    assert outcome.version is None and outcome.note == "" and store.names() == ["v1", "v2"]


def test_a_corrupt_store_keeps_no_version_but_the_model(store):
    store.index_path.write_text("{not json")
    crops = [disk_crop(0)]
    _, outcome = run(crops, plan_for(store, crops, "scratch"))
    assert isinstance(outcome.result.model, UNet) and outcome.version is None
    assert outcome.note.startswith("not kept as a version: ") and "corrupt" in outcome.note
    assert sorted(p.name for p in store.folder.iterdir()) == ["v1.pt", "versions.json"]
