"""Model versions: two training runs, their lineage, and scores on the same held-out band."""

import dataclasses
import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from napari_unet.core import ModelFileError, load_model
from napari_unet.core.held_out import HeldOutScores, held_out_set, score_versions
from napari_unet.core.model import UNet
from napari_unet.core.tiling import predict_tiled
from napari_unet.core.training import train, validation_band
from napari_unet.core.versions import (
    INDEX_NAME,
    AnnotationSummary,
    ModelVersion,
    UnknownVersionError,
    VersionError,
    VersionStore,
    summarize_annotations,
    training_scores,
    versions_folder,
)
from synthetic import disk_crop, tiny_train_config

TINY = tiny_train_config()


def run_training(crops, model=None, config=TINY):
    return train(
        [c.image for c in crops],
        [c.labels for c in crops],
        masks=[c.mask for c in crops],
        model=model,
        config=config,
        device="cpu",
    )


def summary(crops):
    return summarize_annotations(
        [c.labels for c in crops], [c.mask for c in crops], sources=[c.source for c in crops]
    )


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """The live loop: train v1, correct (add a plane), fine-tune v1 into v2."""
    autosave = tmp_path_factory.mktemp("cfg") / "napari-unet-autosave.pt"
    store = VersionStore(versions_folder(autosave))
    run1 = [disk_crop(0)]
    result1 = run_training(run1)
    v1 = store.add(result1, parent="scratch", annotations=summary(run1))

    run2 = [disk_crop(0), disk_crop(1)]
    start = store.load("v1")  # what the Train widget fine-tunes from
    result2 = run_training(run2, start, dataclasses.replace(TINY, steps=16, learning_rate=1e-2))
    held = held_out_set(run1, run2)
    comparison = store.compare(["v1"], held, extra={store.next_name(): result2.model})
    v2 = store.add(result2, annotations=summary(run2), comparison=comparison)  # parent inferred
    return SimpleNamespace(
        store=store,
        run1=run1,
        run2=run2,
        result1=result1,
        result2=result2,
        v1=v1,
        v2=v2,
        held=held,
        comparison=comparison,
    )


def test_two_training_runs_give_two_versions_with_lineage(session):
    store, v1, v2 = session.store, session.v1, session.v2
    assert store.names() == ["v1", "v2"] and len(store) == 2 and "v2" in store
    assert store.latest == v2 and store.get("v1") == v1
    assert (v1.parent, v1.lineage) == ("scratch", ("scratch",))
    # fine-tuned from the loaded v1: training recorded its start, the store follows it
    assert (v2.parent, v2.lineage) == ("v1", ("v1", "scratch"))
    assert v1.scores == training_scores(session.result1)
    assert set(v1.scores) == {"iou", "f1", "score", "threshold"}
    assert v2.scores["score"] == session.result2.best_score
    assert v2.created >= v1.created and v2.file == "v2.pt"
    assert store.path("v2") == store.folder / "v2.pt"
    # annotations: counts, and a hash that recognises the same labels
    assert (v1.annotations.n_examples, v2.annotations.n_examples) == (1, 2)
    assert v1.annotations.n_pixels == 64 * 64 and v2.annotations.n_cells > v1.annotations.n_cells
    assert v1.annotations.sources == ("plane 0",)
    assert summary(session.run1).digest == v1.annotations.digest != v2.annotations.digest
    assert summary(session.run2[::-1]).digest == v2.annotations.digest  # order-free
    assert "from v1" in v2.describe() and v2.describe().startswith("v2 (")


def test_each_file_carries_its_record_and_lineage(session):
    store, v1, v2 = session.store, session.v1, session.v2
    meta = load_model(store.path("v2")).metadata
    assert meta["name"] == "v2"
    assert ModelVersion.from_dict(meta["version"]) == v2
    assert [r["name"] for r in meta["lineage"]] == ["v1"]
    assert ModelVersion.from_dict(meta["lineage"][0]) == v1
    assert meta["training"]["start"] == "v1"  # what training recorded is kept too
    first = load_model(store.path("v1")).metadata
    assert first["name"] == "v1" and first["lineage"] == []
    assert ModelVersion.from_dict(first["version"]) == v1
    # saving a version leaves the caller's model as it was
    assert "version" not in session.result1.model.metadata


def test_versions_are_scored_on_the_same_held_out_band(session):
    held, run1, run2 = session.held, session.run1, session.run2
    # the union of the runs' bands: plane 0 (in both runs) counts once
    assert len(held) == 2
    np.testing.assert_array_equal(held.masks[0], validation_band(run1[0].labels)[1])
    np.testing.assert_array_equal(held.masks[1], validation_band(run2[1].labels)[1])
    assert held.images[0] is run2[0].image  # the latest run's example
    v1, v2 = session.store.load("v1"), session.store.load("v2")
    scores = score_versions({"v1": v1, "v2": v2, "v1 copy": session.result1.model}, held)
    assert isinstance(scores, HeldOutScores)
    assert scores.held_out == held.digest and scores.n_images == 2
    assert scores.n_pixels == held.n_pixels == sum(int(m.sum()) for m in held.masks)
    assert set(scores.scores["v1"]) == {"iou", "f1", "score", "threshold"}
    assert scores.scores["v1"] == scores.scores["v1 copy"]  # identical models, identical scores
    assert scores.scores["v1"] != scores.scores["v2"]  # different models, different scores
    # the comparison made when v2 was added is the same computation
    assert session.comparison.scores == {"v1": scores.scores["v1"], "v2": scores.scores["v2"]}
    assert session.v2.comparison == session.comparison
    assert "v1: score" in scores.describe() and "v2: score" in scores.describe()
    # scored exactly as training validated: each run's own band gives its own scores
    own = score_versions({"v2": v2}, held_out_set(run2)).scores["v2"]
    assert own == training_scores(session.result2)
    own = score_versions({"v1": v1}, held_out_set(run1)).scores["v1"]
    assert own == session.v1.scores


def test_switching_back_restores_the_first_models_predictions_exactly(session):
    store, original = session.store, session.result1.model
    image = original.normalization(disk_crop(5).image)
    v2 = predict_tiled(store.load("v2"), image, device="cpu")
    v1 = predict_tiled(store.load("v1"), image, device="cpu")  # after v2: switch back
    np.testing.assert_array_equal(v1, predict_tiled(original, image, device="cpu"))
    assert not np.array_equal(v1, v2)


def test_reopening_the_store_sees_the_same_versions(session, tmp_path):
    again = VersionStore(session.store.folder)
    assert again.list() == session.store.list() == [session.v1, session.v2]
    assert again.next_name() == "v3" and again.lineage("v2") == ("v2", "v1", "scratch")
    # the folder can move: model files are named relative to it
    moved = tmp_path / "moved"
    shutil.copytree(session.store.folder, moved)
    np.testing.assert_array_equal(
        predict_tiled(VersionStore(moved).load("v1"), np.ones((30, 30)), device="cpu"),
        predict_tiled(session.result1.model, np.ones((30, 30)), device="cpu"),
    )


@pytest.fixture
def copy(session, tmp_path):
    """A copy of the session's store to break."""
    folder = tmp_path / "versions"
    shutil.copytree(session.store.folder, folder)
    return VersionStore(folder)


def test_a_corrupt_index_is_a_clear_error_and_loses_no_version(session, copy):
    copy.index_path.write_text('{"format": "napari-unet/versions", "versio')
    with pytest.raises(VersionError, match=r"corrupt .*repair\(\)"):
        copy.list()
    with pytest.raises(VersionError, match="corrupt"):
        copy.get("v1")
    files = sorted(p.name for p in copy.folder.iterdir())
    with pytest.raises(VersionError, match="corrupt"):  # nothing is written over it
        copy.add(UNet(depth=2, base_channels=2), parent="scratch")
    assert sorted(p.name for p in copy.folder.iterdir()) == files
    assert copy.repair() == session.store.list()
    assert copy.list() == session.store.list()
    assert any(p.name.startswith(f"{INDEX_NAME}.old-") for p in copy.folder.iterdir())
    # a foreign or malformed index is refused the same way
    copy.index_path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(VersionError, match="not a napari-unet version index"):
        copy.list()
    copy.index_path.write_text(
        json.dumps({"format": "napari-unet/versions", "format_version": 1, "versions": [{}]})
    )
    with pytest.raises(VersionError, match="malformed"):
        copy.list()


def test_a_missing_index_is_a_clear_error_and_repairs(session, copy):
    copy.index_path.unlink()
    with pytest.raises(VersionError, match="missing but 2 version file"):
        copy.list()
    assert [v.name for v in copy.repair()] == ["v1", "v2"]
    assert copy.list() == session.store.list()


def test_unknown_names_and_missing_files(copy):
    with pytest.raises(UnknownVersionError, match=r"no model version 'v9' .*v1, v2") as err:
        copy.get("v9")
    assert isinstance(err.value, KeyError) and isinstance(err.value, VersionError)
    with pytest.raises(UnknownVersionError):
        copy.load("v9")
    (copy.folder / "v1.pt").unlink()
    with pytest.raises(ModelFileError, match="not found"):
        copy.load("v1")
    assert copy.names() == ["v1", "v2"] and copy.load("v2") is not None  # others intact
    assert VersionStore(copy.folder / "new").list() == []


def test_add_writes_atomically_and_numbers_after_orphans(copy):
    (copy.folder / "v5.pt").write_bytes(b"left by a crash between file and index")
    version = copy.add(UNet(depth=2, base_channels=2), parent=copy.get("v2"))
    assert version.name == "v6" and version.lineage == ("v2", "v1", "scratch")
    assert version.annotations is None and version.scores == {}
    assert not [p for p in copy.folder.iterdir() if p.suffix == ".tmp"]
    assert VersionStore(copy.folder).get("v6") == version
    # a model that says nothing of its training gets an "unknown" parent
    assert copy.add(UNet(depth=2, base_channels=2)).parent == "unknown"


def test_records_round_trip_through_json_and_reject_garbage(session):
    for version in (session.v1, session.v2):
        assert ModelVersion.from_dict(json.loads(json.dumps(version.to_dict()))) == version
    summary = session.v2.annotations
    assert AnnotationSummary.from_dict(summary.to_dict()) == summary
    for bad in (
        {"name": "v1"},
        {**session.v1.to_dict(), "name": "latest"},
        {**session.v1.to_dict(), "scores": {"iou": "high"}},
        {**session.v1.to_dict(), "lineage": "scratch"},
        {**session.v1.to_dict(), "annotations": {"n_examples": -1}},
        [],
    ):
        with pytest.raises(VersionError):
            ModelVersion.from_dict(bad)


def test_summaries_count_only_the_annotated_region():
    labels = np.zeros((6, 6), np.uint16)
    labels[0:2, 0:2], labels[4:6, 4:6] = 1, 2
    mask = np.zeros((6, 6), bool)
    mask[:3] = True
    s = summarize_annotations([labels], [mask])
    assert (s.n_examples, s.n_pixels, s.n_cells) == (1, 18, 1)
    # what lies outside the annotated region does not change the hash
    outside = labels.copy()
    outside[5, 0] = 9
    assert summarize_annotations([outside], [mask]).digest == s.digest
    assert summarize_annotations([labels]).digest != s.digest
    with pytest.raises(ValueError, match="masks"):
        summarize_annotations([labels], [])


def test_listing_versions_does_not_import_torch(session):
    code = (
        "import sys\n"
        "from napari_unet.core.versions import VersionStore\n"
        f"assert VersionStore({str(session.store.folder)!r}).names() == ['v1', 'v2']\n"
        "assert 'torch' not in sys.modules, 'listing versions imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_versus_names_both_scores_the_shared_pixels_and_the_verdict(session):
    comparison = session.comparison
    line = comparison.versus("v2", "v1")
    v1, v2 = (comparison.scores[n]["score"] for n in ("v1", "v2"))
    assert line.startswith(f"v2 {v2:.2f} vs v1 {v1:.2f} on the same {comparison.n_pixels} ")
    verdict = "better" if v2 - v1 > 0.005 else "worse" if v1 - v2 > 0.005 else "about the same"
    assert line.endswith(f"held-out pixels ({verdict})")


def test_the_validation_image_is_public():
    from napari_unet.core import training

    assert "validation_image" in training.__all__
    labels = np.zeros((40, 40), np.int32)
    labels[10:20, 10:20] = 1
    mask = np.zeros((40, 40), bool)
    mask[5:25, 5:25] = True
    net = UNet(depth=2, base_channels=2)
    val = training.validation_image(np.ones((40, 40), np.float32), labels, mask, net)
    assert val.known.sum() == mask.sum() and val.instances.max() == 1
