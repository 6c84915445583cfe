"""The held-out comparison: the union of the runs' bands, and scores on it."""

import numpy as np
import pytest

from napari_unet.core.annotations import Crop
from napari_unet.core.held_out import HeldOut, HeldOutScores, held_out_set, score_versions
from napari_unet.core.model import UNet
from napari_unet.core.training import validation_band
from napari_unet.core.versions import VersionError


def test_held_out_set_leaves_out_pixels_a_run_trained_on():
    labels = np.zeros((20, 8), np.int32)
    labels[2:5, 2:5] = 1  # no cell in the bottom band: this run trains on everything
    image = np.arange(160, dtype=np.float32).reshape(20, 8)
    corrected = labels.copy()
    corrected[17:20, 2:5] = 2  # a cell painted in the band
    first = [Crop(image, labels, None, "plane 0")]
    second = [Crop(image, corrected, None, "plane 0")]
    assert len(held_out_set(second)) == 1
    np.testing.assert_array_equal(held_out_set(second).masks[0], validation_band(corrected)[1])
    held = held_out_set(first, second)  # the first run trained on the second's band
    assert len(held) == 0 and held.n_pixels == 0
    with pytest.raises(ValueError, match="no held-out annotations"):
        score_versions({"v1": UNet(depth=2, base_channels=2)}, held)
    # a new image of a later run brings its band; the latest labels are the truth
    other = image + 1
    held = held_out_set(second, [*second, Crop(other, corrected, None, "plane 1")])
    assert len(held) == 2 and held.images[1] is other
    assert held.digest == held_out_set(second, [*second, Crop(other, corrected, None, "")]).digest
    with pytest.raises(ValueError, match="images"):
        HeldOut((image,), (), ())


def test_versus_counts_the_pixels_and_calls_close_scores_the_same():
    scores = {"a": {"score": 0.5}, "b": {"score": 0.503}}
    comparison = HeldOutScores(scores, "", 1, 1_250_000)
    assert comparison.versus("b", "a").endswith(
        "on the same 1.2M held-out pixels (about the same)"
    )
    with pytest.raises(KeyError, match="no held-out scores of v9"):
        comparison.versus("v9", "a")


def test_held_out_scores_round_trip_and_reject_garbage():
    scores = HeldOutScores({"v1": {"iou": 0.5, "score": 0.6}}, "ab12", 2, 300)
    assert HeldOutScores.from_dict(scores.to_dict()) == scores
    for bad in ({"scores": {}}, {**scores.to_dict(), "scores": {"v1": {"iou": "high"}}}):
        with pytest.raises(VersionError):
            HeldOutScores.from_dict(bad)
